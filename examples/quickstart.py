"""The main job: an offline end-to-end RIME run on a CPU, from random weights to a reloaded model.

    python examples/quickstart.py --output-dir quickstart-out          # the default run (about 10 minutes, 2 cores)
    python examples/quickstart.py --output-dir quickstart-out --fast   # the CI variant (under 2 minutes)

Same as `rime demo [--fast] [--output-dir DIR]`. It builds a small random Qwen2-VL-shaped RIME model, trains stage
1 with Cross-Mode Alignment and a short Refine-RL stage on synthetic multimodal data (rendered scenes, document
pages, videos as frame lists, questions about images), evaluates held-out Hit@1 (unseen colour-shape combinations)
in all four query-mode -> corpus-mode pairs after each stage, trains the no-CMA ablation, prints the table, writes
`results.json` and `results.png`, and reloads the saved model with `AutoModel` and `SentenceTransformer`. The
pipeline itself is `transformers_rime.quickstart`.
"""

import argparse

from transformers_rime.quickstart import run_quickstart


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir", default="quickstart-out", help="where results.json, results.png and the model go"
    )
    parser.add_argument("--fast", action="store_true", help="the short CI variant (under 2 minutes on 2 cores)")
    args = parser.parse_args()
    run_quickstart(args.output_dir, fast=args.fast)


if __name__ == "__main__":
    main()
