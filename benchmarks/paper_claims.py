"""The paper's claims in miniature: gen vs disc on kinds of query that need reasoning, Refine-RL before and after,
a short rewrite vs a UME-R1-style chain of thought, and the CMA ablation; 3 seeds, mean ± std.

Every model is the quickstart's random 1.2M-parameter Qwen2-VL-shaped RIME model, trained from scratch on the four
reasoning kinds of `transformers_rime.data.reasoning` (counting, spatial, composition, negation) and evaluated on
their held-out split (answers about colour-shape pairs training never shows), 32 candidates per kind. Per seed:

1. **rewrite**: stage 1 (LM + InfoNCE in both modes + CMA) on gold rewrites; held-out Hit@1 in the four mode pairs,
   rewrite exact match, and the rewrite-sensitivity diagnostic (`transformers_rime.evaluation.rewrite_sensitivity`);
2. **Refine-RL**: stage 2 (GRPO, anchor-retrieval reward with hard negatives of the same kind) on the rewrite
   model; the same figures again, with the reward curve and the share of unfinished rollouts per step;
3. **chain of thought**: the same model, data, steps and budget, trained on `<think>…</think><answer>…</answer>`
   targets instead of rewrites; Hit@1, generated tokens per item and gen-mode items/s, measured in the same run;
4. **no CMA**: stage 1 on rewrites with the CMA weight at 0.

Each seed runs in its own process (`--jobs` at a time, one torch thread each) and writes `seed{N}.json` whole
when it ends, so an interrupted study resumes with the seeds still missing. Not part of CI.

    python benchmarks/paper_claims.py --output-dir paper-claims           # 3 seeds, the README's table
    python benchmarks/paper_claims.py --output-dir /tmp/pc --quick --seeds 0 --jobs 1   # a minutes-long smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path


PARTS = ("rewrite", "refine_rl", "chain", "no_cma")
PAIRS = ("disc->disc", "disc->gen", "gen->disc", "gen->gen")
GEN_PAIRS = ("gen->disc", "gen->gen")
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
TAG = re.compile(r"</?[a-z_]+>")


@dataclass
class StudySettings:
    """The sizes of one seed's run."""

    stage1_steps: int = 1000
    batch_size: int = 32
    rl_steps: int = 40
    rl_prompts: int = 8
    rl_generations: int = 4
    rl_negatives: int = 7
    rl_learning_rate: float = 3e-5
    # distinct RL rows per kind at most, repeated over epochs when the steps need more (counting has only 96
    # distinct training documents)
    rl_rows_per_kind: int = 80
    eval_per_kind: int = 32
    max_new_tokens: int = 24  # the rewrite budget (gold rewrites are at most 11 tokens)
    chain_max_new_tokens: int = 128  # the chain-of-thought budget (gold chains are at most ~90 tokens)

    @classmethod
    def quick(cls) -> StudySettings:
        return cls(stage1_steps=60, rl_steps=2, eval_per_kind=8)


def run_seed(seed: int, settings: StudySettings, output_dir: Path, parts: tuple[str, ...] = PARTS) -> dict:
    """What one seed measures (see the module docstring) for `parts` (the rewrite model always), as a JSON-ready
    dict."""
    import torch

    from transformers_rime.data.reasoning import REASONING_KINDS, reasoning_vocabulary_texts
    from transformers_rime.data.synthetic import SyntheticPairStream, synthetic_pairs
    from transformers_rime.evaluation import rewrite_sensitivity, synthetic_tasks
    from transformers_rime.quickstart import (
        QuickstartSettings,
        quickstart_model,
        quickstart_processor,
        train_refine_rl,
        train_stage1,
    )

    torch.set_num_threads(1)
    start = time.perf_counter()
    processor = quickstart_processor(extra_texts=reasoning_vocabulary_texts() * 10, vocab_size=1000)
    tasks = synthetic_tasks("heldout", per_kind=settings.eval_per_kind, seed=100 + seed, kinds=REASONING_KINDS)
    quick = QuickstartSettings(
        stage1_steps=settings.stage1_steps,
        batch_size=settings.batch_size,
        rl_steps=settings.rl_steps,
        rl_prompts=settings.rl_prompts,
        rl_generations=settings.rl_generations,
        rl_negatives=settings.rl_negatives,
        rl_learning_rate=settings.rl_learning_rate,
        max_new_tokens=settings.max_new_tokens,
        seed=seed,
    )

    def stream(chains: bool = False):
        return SyntheticPairStream(
            "train", batch_size=settings.batch_size, seed=seed, kinds=REASONING_KINDS, homogeneous=True, chains=chains
        )

    def measure(model, name: str, budget: int, diagnose: bool = True) -> dict:
        print(f"[seed {seed}] evaluating {name} ({time.perf_counter() - start:.0f} s)", flush=True)
        figures = evaluate_model(model, processor, tasks, budget)
        if diagnose:
            from transformers_rime.encoder import RimeEncoder

            figures["sensitivity"] = rewrite_sensitivity(
                RimeEncoder(model, processor), tasks, max_new_tokens=budget, seed=seed, show_progress_bar=False
            )
        return figures

    results: dict = {"seed": seed, "settings": asdict(settings)}
    model = quickstart_model(processor, seed=seed)
    train_stage1(model, processor, quick, output_dir / "rewrite", rows=stream())
    results["rewrite"] = measure(model, "stage 1 (rewrites)", settings.max_new_tokens)

    if "refine_rl" in parts:
        prompts_per_kind = -(-settings.rl_prompts * settings.rl_steps // len(REASONING_KINDS))
        rl_per_kind = max(min(prompts_per_kind, settings.rl_rows_per_kind), settings.rl_negatives + 1)
        rl_rows = synthetic_pairs(
            "train", rl_per_kind, seed=seed + 2, negatives=settings.rl_negatives, kinds=REASONING_KINDS
        )
        model, curves = train_refine_rl(model, processor, rl_rows, quick, output_dir / "refine_rl")
        results["refine_rl"] = measure(model, "stage 2 (Refine-RL)", settings.max_new_tokens) | {"curves": curves}
    del model

    if "chain" in parts:
        chain_model = quickstart_model(processor, seed=seed)
        train_stage1(chain_model, processor, quick, output_dir / "chain", rows=stream(chains=True))
        results["chain"] = measure(chain_model, "stage 1 (chains of thought)", settings.chain_max_new_tokens, False)
        del chain_model

    if "no_cma" in parts:
        ablation = quickstart_model(processor, seed=seed)
        train_stage1(ablation, processor, quick, output_dir / "no_cma", cma_weight=0.0, rows=stream())
        results["no_cma"] = measure(ablation, "stage 1 without CMA", settings.max_new_tokens, False)
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results


def evaluate_model(model, processor, tasks, budget: int) -> dict:
    """Per kind and overall: Hit@1 in the four pairs, gold-rewrite exact match of the generated query rewrites (a
    chain's `<answer>`), generated tokens per query, and gen-mode and disc-mode query items/s."""
    from transformers_rime.data.synthetic import synthetic_examples
    from transformers_rime.encoder import RimeEncoder
    from transformers_rime.evaluation import evaluate

    encoder = RimeEncoder(model, processor)
    with tempfile.TemporaryDirectory() as scratch:
        results = evaluate(encoder, tasks, output_dir=scratch, max_new_tokens=budget, show_progress_bar=False)
    figures = {"hit@1": {}, "exact_match": {}, "tokens_per_item": {}, "unfinished": {}, "items_per_second": {}}
    figures["examples"] = {}
    for task in tasks:
        per_task = results["tasks"][task.name]
        figures["hit@1"][task.name] = {pair: per_task["scores"][pair] for pair in PAIRS}
        figures["tokens_per_item"][task.name] = per_task["generated_tokens_per_item"]["queries/gen"]
        figures["unfinished"][task.name] = per_task["unfinished_share"]["queries/gen"]  # cut by the budget
        speed = per_task["items_per_second"]
        figures["items_per_second"][task.name] = {mode: speed[f"queries/{mode}"] for mode in ("gen", "disc")}
        meta = task.metadata
        gold = [
            row["query_rewrite"]
            for row in synthetic_examples(task.name, meta["split"], len(task.queries), meta["seed"])
        ]
        written = [g.text for g in encoder.generate(task.queries, max_new_tokens=budget, show_progress_bar=False)]
        figures["exact_match"][task.name] = sum(final_answer(w) == g for w, g in zip(written, gold)) / len(gold)
        figures["examples"][task.name] = [{"written": w, "gold": g} for w, g in zip(written[:4], gold)]
    return figures


def final_answer(text: str) -> str:
    """The answer a generation states: a chain's `<answer>` content, else the rewrite without its tags."""
    match = ANSWER.search(text)
    return " ".join(TAG.sub(" ", match.group(1) if match else text).split())


# ---------------------------------------------------------------------------------------------------------- report


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float], digits: int = 3) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def beats(better: list[float], worse: list[float]) -> bool:
    """The README's criterion: the mean margin exceeds twice the larger of the two seed spreads (std)."""
    margin = statistics.fmean(better) - statistics.fmean(worse)
    return margin > 2 * max(mean_std(better)[1], mean_std(worse)[1])


def report(runs: list[dict]) -> str:
    """The study's tables (mean ± std over `runs`, one per seed), one section per part the runs hold."""
    parts = [part for part in PARTS if all(part in run for run in runs)]
    header = (
        f"Seeds {[run['seed'] for run in runs]}; held-out Hit@1 over {runs[0]['settings']['eval_per_kind']} "
        "candidates per kind, mean ± std."
    )
    sections = [header, _gen_vs_disc(runs)]
    sections += [_refine_rl(runs)] if "refine_rl" in parts else []
    sections += [_rewrite_vs_chain(runs)] if "chain" in parts else []
    sections += [_cma_ablation(runs)] if "no_cma" in parts else []
    sections.append(_sensitivity(runs, [part for part in PARTS[:2] if part in parts]))
    seconds = [run["seconds"] for run in runs]
    sections.append(f"Wall time per seed: {cell(seconds, 0)} s (seeds run side by side, one thread each).")
    return "\n\n".join(sections)


def _kinds(runs: list[dict]) -> list[str]:
    return list(runs[0]["rewrite"]["hit@1"])


def _hits(runs: list[dict], part: str, kind: str, pair: str) -> list[float]:
    return [run[part]["hit@1"][kind][pair] for run in runs]


def _overall(runs: list[dict], part: str, pair: str) -> list[float]:
    """Per seed, the mean over kinds."""
    return [statistics.fmean(run[part]["hit@1"][kind][pair] for kind in _kinds(runs)) for run in runs]


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _gen_vs_disc(runs: list[dict]) -> str:
    rows = []
    for kind in _kinds(runs):
        disc = _hits(runs, "rewrite", kind, "disc->disc")
        winners = [pair for pair in GEN_PAIRS if beats(_hits(runs, "rewrite", kind, pair), disc)]
        rows.append([kind, *(cell(_hits(runs, "rewrite", kind, p)) for p in PAIRS), ", ".join(winners) or "no"])
    rows.append(["mean", *(cell(_overall(runs, "rewrite", p)) for p in PAIRS), ""])
    return _table("**Gen vs disc** (stage 1 on rewrites):", ["kind", *PAIRS, "gen beats disc->disc"], rows)


def _refine_rl(runs: list[dict]) -> str:
    rows = []
    for kind in [*_kinds(runs), "mean"]:
        if kind == "mean":
            before_after = [(_overall(runs, "rewrite", p), _overall(runs, "refine_rl", p)) for p in GEN_PAIRS]
            exact = [[statistics.fmean(run[part]["exact_match"].values()) for run in runs] for part in PARTS[:2]]
        else:
            before_after = [(_hits(runs, "rewrite", kind, p), _hits(runs, "refine_rl", kind, p)) for p in GEN_PAIRS]
            exact = [[run[part]["exact_match"][kind] for run in runs] for part in PARTS[:2]]
        cells = [f"{cell(before)} → {cell(after)}" for before, after in before_after]
        lifted = [pair for pair, (before, after) in zip(GEN_PAIRS, before_after) if beats(after, before)]
        rows.append([kind, *cells, f"{cell(exact[0])} → {cell(exact[1])}", ", ".join(lifted) or "no"])
    curves = [run["refine_rl"]["curves"] for run in runs]
    steps = runs[0]["settings"]["rl_steps"]
    table = _table(
        f"**Refine-RL** ({steps} GRPO steps; gen-pair Hit@1 and rewrite exact match, stage 1 → stage 2):",
        ["kind", *GEN_PAIRS, "exact match", "lifted"],
        rows,
    )
    return "\n".join(
        [
            table,
            "",
            "Reward (mean over seeds): " + _curve([c["rewards"] for c in curves]),
            "",
            "Unfinished rollouts: " + _curve([c["unfinished"] for c in curves]),
        ]
    )


def _rewrite_vs_chain(runs: list[dict]) -> str:
    rows = []
    for part, name in (("rewrite", "rewrite"), ("chain", "`<think>…</think><answer>…</answer>`")):
        exact = [statistics.fmean(run[part]["exact_match"].values()) for run in runs]
        tokens = [statistics.fmean(run[part]["tokens_per_item"].values()) for run in runs]
        speed = {
            mode: [statistics.fmean(s[mode] for s in run[part]["items_per_second"].values()) for run in runs]
            for mode in ("gen", "disc")
        }
        hits = [cell(_overall(runs, part, pair)) for pair in GEN_PAIRS]
        # runs made before the unfinished share was recorded have none
        recorded = all("unfinished" in run[part] for run in runs)
        unfinished = cell([statistics.fmean(run[part]["unfinished"].values()) for run in runs]) if recorded else "n/a"
        rows.append(
            [name, *hits, cell(exact), cell(tokens, 1), unfinished, cell(speed["gen"], 0), cell(speed["disc"], 0)]
        )
    return _table(
        "**Rewrite vs chain of thought** (same model, data, steps; mean over kinds):",
        ["targets", *GEN_PAIRS, "exact match", "tokens / query", "unfinished", "gen items/s", "disc items/s"],
        rows,
    )


def _cma_ablation(runs: list[dict]) -> str:
    rows = [
        [name, *(cell(_overall(runs, part, pair)) for pair in PAIRS)]
        for part, name in (("rewrite", "with CMA"), ("no_cma", "CMA weight 0"))
    ]
    return _table("**CMA ablation** (stage 1 on rewrites, mean over kinds):", ["stage 1", *PAIRS], rows)


def _sensitivity(runs: list[dict], parts: list[str]) -> str:
    rows = []
    for part in parts:
        overall = [run[part]["sensitivity"]["overall"] for run in runs]
        hits = [cell([o["hit@1"]["gen->disc"][variant] for o in overall]) for variant in ("own", "swapped", "removed")]
        cosines = [cell([o["cosine"][variant] for o in overall]) for variant in ("swapped", "removed")]
        rows.append([{"rewrite": "stage 1", "refine_rl": "stage 2"}[part], *hits, *cosines])
    return _table(
        "**Rewrite sensitivity** (mean over kinds; each query teacher-forced with its own rewrite, another query's, "
        "or none):",
        ["model", "gen->disc own", "swapped", "removed", "cos(own, swapped)", "cos(own, removed)"],
        rows,
    )


def _curve(curves: list[list[float]]) -> str:
    steps = min(len(c) for c in curves)
    means = [statistics.fmean(c[i] for c in curves) for i in range(steps)]
    picks = sorted({0, steps // 4, steps // 2, 3 * steps // 4, steps - 1}) if steps else []
    return ", ".join(f"step {i + 1}: {means[i]:.3f}" for i in picks)


# ------------------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=3, help="seeds run at once, one process and one thread each")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to train (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the study runs, nothing more")
    for field in fields(StudySettings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=None)
    parser.add_argument("--one-seed", type=int, help=argparse.SUPPRESS)  # a child process's seed
    args = parser.parse_args()
    settings = StudySettings.quick() if args.quick else StudySettings()
    settings = replace(
        settings, **{f.name: getattr(args, f.name) for f in fields(StudySettings) if getattr(args, f.name) is not None}
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.one_seed is not None:
        from transformers_rime.files import write_json  # whole, then renamed: a killed seed never counts as done

        results = run_seed(args.one_seed, settings, args.output_dir / f"seed{args.one_seed}", tuple(args.parts))
        write_json(args.output_dir / f"seed{args.one_seed}.json", results)
        return
    start = time.perf_counter()
    missing = [seed for seed in args.seeds if not (args.output_dir / f"seed{seed}.json").is_file()]
    print(f"Seeds to run: {missing} (done: {sorted(set(args.seeds) - set(missing))})", flush=True)
    running: list[subprocess.Popen] = []
    environment = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for seed in missing:
        while len(running) >= args.jobs:
            _wait_one(running)
        command = [sys.executable, __file__, *_child_flags(args), "--one-seed", str(seed)]
        running.append(subprocess.Popen(command, env=environment))
    while running:
        _wait_one(running)
    runs = [json.loads((args.output_dir / f"seed{seed}.json").read_text()) for seed in args.seeds]
    text = report(runs) + f"\n\nStudy wall time: {time.perf_counter() - start:.0f} s for the seeds run now."
    (args.output_dir / "results.md").write_text(text + "\n", encoding="utf-8")
    print("\n" + text)


def _child_flags(args) -> list[str]:
    flags = ["--output-dir", str(args.output_dir), "--parts", *args.parts] + (["--quick"] if args.quick else [])
    for field in fields(StudySettings):
        value = getattr(args, field.name)
        if value is not None:
            flags += [f"--{field.name.replace('_', '-')}", str(value)]
    return flags


def _wait_one(running: list[subprocess.Popen]) -> None:
    while True:
        for process in running:
            if process.poll() is not None:
                running.remove(process)
                if process.returncode != 0:
                    raise SystemExit(f"a seed's process failed ({process.args[-1]}): exit {process.returncode}")
                return
        time.sleep(1)


if __name__ == "__main__":
    main()
