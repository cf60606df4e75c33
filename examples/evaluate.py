"""Evaluate a RIME model on retrieval tasks in all four query-mode x corpus-mode pairs.

    python examples/evaluate.py --model rime-2b --tasks my_tasks/ --output-dir eval-out
    python examples/evaluate.py --output-dir /tmp/rime-eval     # no model given: a tiny random one, offline

Without `--tasks`, a small text task is written in the task folder format (see `rime eval --help`) and evaluated,
so the script shows the whole flow: task folders, the cached harness, `results.json` / `.md` / `.png`. With random
weights the scores are near chance. Run it twice: the second run reuses the finished tasks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers_rime import RimeEncoder
from transformers_rime.evaluation import RetrievalTask, evaluate, read_task, write_task


def demo_task(folder: Path) -> Path:
    """A 4-query text task with graded relevance, written as a task folder."""
    corpus = ["a red car on a street", "a black cat asleep", "a blue bar chart", "a red bicycle", "a white dog"]
    task = RetrievalTask(
        "demo-text",
        queries=["crimson automobile", "ebony kitten", "azure graph", "red vehicles"],
        corpus=corpus,
        relevance=[{0: 1}, {1: 1}, {2: 1}, {0: 2, 3: 1}],
        metric="ndcg_linear@5",
    )
    return write_task(task, folder / "demo-text")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="RIME directory or Hub id (default: a tiny random model)")
    parser.add_argument("--tasks", type=Path, nargs="*", help="task folders (default: a small demo task)")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    if args.model:
        encoder = RimeEncoder.from_pretrained(args.model)
    else:
        from transformers_rime.testing import tiny_rime_model, tiny_rime_processor

        processor = tiny_rime_processor()
        encoder = RimeEncoder(tiny_rime_model(processor=processor), processor)
        args.max_new_tokens = args.max_new_tokens or 8
    folders = args.tasks or [demo_task(args.output_dir / "tasks-data")]
    results = evaluate(
        encoder,
        [read_task(folder) for folder in folders],
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    print((args.output_dir / "results.md").read_text(encoding="utf-8"))
    print(f"{len(results['tasks'])} task(s); results.json, results.md and results.png are in {args.output_dir}.")


if __name__ == "__main__":
    main()
