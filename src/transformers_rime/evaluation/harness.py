"""The evaluation harness: every task in every query-mode x corpus-mode pair, cached, resumable, reported.

```python
>>> from transformers_rime import RimeEncoder
>>> from transformers_rime.evaluation import RetrievalTask, evaluate
>>> from transformers_rime.testing import tiny_rime_model, tiny_rime_processor
>>> processor = tiny_rime_processor()
>>> encoder = RimeEncoder(tiny_rime_model(processor=processor), processor)
>>> task = RetrievalTask("toy", queries=["red car", "black cat"], corpus=["a red car", "a black cat", "a dog"],
...                      relevance=[{0: 1}, {1: 1}])
>>> results = evaluate(encoder, [task], max_new_tokens=4, show_progress_bar=False)
>>> sorted(results["scores"]["toy"])
['disc->disc', 'disc->gen', 'gen->disc', 'gen->gen']

```
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from ..fingerprints import model_fingerprint
from ..model_card import results_table
from .plot import plot_results
from .tasks import DEFAULT_METRICS, RetrievalTask, compute_metric


logger = logging.get_logger(__name__)

MODES = ("disc", "gen")


def encoder_fingerprint(encoder) -> str:
    """A hash of everything that shapes the encoder's embeddings, whatever mode and budget they are made with.

    That is the weights, the model's configuration (tokens, pooling, normalisation, prompts, default rewrite budget),
    its generation configuration (end-of-sequence ids), and the processor's saved configuration (instructions, tags,
    pixel budget, video settings) with its chat template. The rewrite budget a gen-mode run actually uses is part of
    that side's cache key (see `effective_max_new_tokens`).
    """
    model, processor = encoder.model, encoder.processor
    generation_config = getattr(getattr(model, "vlm", model), "generation_config", None)
    return model_fingerprint(
        model,
        model.config.to_json_string(),
        generation_config.to_json_string() if generation_config is not None else "",
        processor.to_json_string() if hasattr(processor, "to_json_string") else "",
        getattr(processor, "chat_template", None) or "",
    )


def effective_max_new_tokens(encoder, max_new_tokens: int | None) -> int:
    """The rewrite budget gen mode runs with: the argument, else the model config's default."""
    return encoder.rewrite_budget(max_new_tokens)


def evaluate(
    encoder,
    tasks: list[RetrievalTask],
    query_modes: tuple[str, ...] = MODES,
    corpus_modes: tuple[str, ...] = MODES,
    output_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    benchmark: str | None = None,
    show_progress_bar: bool | None = None,
) -> dict:
    """Evaluate `encoder` (a [`RimeEncoder`]) on `tasks` in every query-mode x corpus-mode pair.

    Each side of a task is embedded once per mode; the embeddings are cached on disk (in `cache_dir`, by default
    `output_dir/cache`) under a fingerprint of the model weights, the model, generation and processor configurations
    (see `encoder_fingerprint`), the rewrite budget in effect and the side's items, so embeddings made under other
    settings are never reused and an interrupted run restarts where it stopped. Each finished task is also written
    to `output_dir/tasks/{name}.json` and reused on the next run when both fingerprints and the budget match.

    Under `torchrun` or `accelerate launch` (an initialised process group), each process embeds a contiguous shard
    of every side and the shards are gathered, so every process gets the same results; the first one writes the
    files. Give each process its own device (e.g. `RimeEncoder.from_pretrained(path, device=PartialState().device)`).

    Args:
        encoder: the [`RimeEncoder`] to evaluate.
        tasks: [`RetrievalTask`]s (see `read_task`).
        query_modes / corpus_modes: the modes to run on each side (`"disc"`, `"gen"`).
        output_dir: where to write `results.json`, `results.md`, `results.png` and the per-task results (nothing
            written if `None`).
        cache_dir: where to cache embeddings (default `output_dir/cache`; no cache without either).
        batch_size: items per forward (gen mode: per generate call).
        max_new_tokens: the rewrite budget in gen mode (default: the model config's; the one used is reported).
        metrics: metrics computed for every pair, besides each task's main metric.
        benchmark: a name for the results (shown in reports and model cards).

    Returns:
        The results: `{"benchmark", "metric", "scores": {task or aggregate: {"gen->disc": main metric, ...}},
        "tasks": {name: {"metric", "scores", "metrics", "items_per_second", "generated_tokens_per_item", "unfinished_share", ...}},
        "model_fingerprint", "max_new_tokens", "versions", "dtype", "max_pixels"}`, the shape model cards read.
    """
    for name, modes in (("query_modes", query_modes), ("corpus_modes", corpus_modes)):
        if not modes or set(modes) - set(MODES):
            raise ValueError(f"{name} must be a non-empty subset of {MODES}, got {modes}.")
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"Task names must be unique, got {names}.")
    output_dir = Path(output_dir) if output_dir is not None else None
    cache_dir = Path(cache_dir) if cache_dir is not None else output_dir / "cache" if output_dir else None
    fingerprint = encoder_fingerprint(encoder)
    budget = effective_max_new_tokens(encoder, max_new_tokens)
    settings = dict(batch_size=batch_size, max_new_tokens=budget, show_progress_bar=show_progress_bar)
    per_task = {}
    for task in tqdm(tasks, desc="Tasks", disable=show_progress_bar is False or len(tasks) < 2):
        sides = {side: task.side_fingerprint(side) for side in ("queries", "corpus")}  # hashes every item once
        task_fingerprint = task.fingerprint(sides)
        done = output_dir / "tasks" / f"{task.name}.json" if output_dir else None
        if done is not None and done.is_file():
            previous = json.loads(done.read_text(encoding="utf-8"))
            wanted = {f"{q}->{c}" for q in query_modes for c in corpus_modes}
            if (
                previous.get("model_fingerprint") == fingerprint
                and previous.get("task_fingerprint") == task_fingerprint
                and previous.get("max_new_tokens") == budget
                and wanted <= set(previous["scores"])
            ):
                logger.info(f"{task.name}: reusing {done} (same model and task).")
                per_task[task.name] = previous
                continue
        embeddings, timings = {}, {}
        for side, modes in (("queries", query_modes), ("corpus", corpus_modes)):
            for mode in modes:
                # disc embeddings do not depend on the rewrite budget; gen ones are keyed by the budget they used
                key = f"{sides[side]}-disc" if mode == "disc" else f"{sides[side]}-gen-{budget}"
                embeddings[side, mode], timings[side, mode] = _side_embeddings(
                    encoder, task, side, mode, cache_dir / fingerprint / key if cache_dir else None, settings
                )
        per_task[task.name] = _score_task(task, embeddings, timings, query_modes, corpus_modes, metrics)
        per_task[task.name].update(
            model_fingerprint=fingerprint, task_fingerprint=task_fingerprint, max_new_tokens=budget
        )
        if done is not None and _process()[0] == 0:
            _write_json(done, per_task[task.name])
    results = _aggregate(per_task, tasks, benchmark)
    results.update(_environment(encoder, fingerprint), max_new_tokens=budget)
    if output_dir is not None and _process()[0] == 0:
        write_reports(results, output_dir)
    if _process()[1] > 1:
        torch.distributed.barrier()  # the files are written before any process moves on
    return results


def _side_embeddings(encoder, task, side, mode, cache_path: Path | None, settings) -> tuple[np.ndarray, dict]:
    """One side's embeddings in one mode, `(N, D)` float32, and its timing; read from or written to `cache_path`
    (`.npy` + `.json`, named by the model's and the side's fingerprints)."""
    embeddings_file, timing_file = (
        (cache_path.with_suffix(".npy"), cache_path.with_suffix(".json")) if cache_path else (None, None)
    )
    if cache_path is not None and embeddings_file.is_file() and timing_file.is_file():
        return np.load(embeddings_file), json.loads(timing_file.read_text())
    items = task.queries if side == "queries" else task.corpus
    role, instruction = (
        ("query", task.query_instruction) if side == "queries" else ("document", task.corpus_instruction)
    )
    rank, world_size = _process()
    shard = np.array_split(np.arange(len(items)), world_size)[rank]  # contiguous, so gathering keeps the order
    start = time.perf_counter()
    embeddings, tokens, finished = _encode(encoder, [items[i] for i in shard], mode, role, instruction, settings)
    seconds = time.perf_counter() - start
    if world_size > 1:
        parts = [None] * world_size
        torch.distributed.all_gather_object(parts, (embeddings, tokens, finished, seconds))
        embeddings = np.concatenate([part[0] for part in parts])
        tokens = [count for part in parts for count in part[1]]
        finished = [flag for part in parts for flag in part[2]]
        seconds = max(part[3] for part in parts)  # the processes run side by side
    timing = {
        "items": len(items),
        "seconds": seconds,
        "generated_tokens_per_item": float(np.mean(tokens)) if mode == "gen" else None,
        # the share of rewrites cut by the budget (read at an appended <gen_emb>)
        "unfinished_share": (1.0 - float(np.mean(finished))) if mode == "gen" else None,
    }
    if cache_path is not None and rank == 0:  # written whole, then renamed: an interruption never leaves half a file
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_path.with_suffix(".tmp.npy")
        with open(partial, "wb") as f:
            np.save(f, embeddings)
        os.replace(partial, embeddings_file)
        _write_json(timing_file, timing)
    return embeddings, timing


def _encode(encoder, items, mode, role, instruction, settings) -> tuple[np.ndarray, list[int], list[bool]]:
    """Embeddings `(N, D)` float32 and, in gen mode, each item's generated tokens and `finished` flag."""
    if not items:  # a process left without items (more processes than items)
        return np.zeros((0, encoder.embedding_dim), np.float32), [], []
    if mode == "gen":
        generations = encoder.generate(items, role=role, instruction=instruction, **settings)
        embeddings = np.stack([g.embedding for g in generations]).astype(np.float32)
        return embeddings, [g.num_new_tokens for g in generations], [g.finished for g in generations]
    kwargs = {k: v for k, v in settings.items() if k != "max_new_tokens"}
    embeddings = encoder.encode(items, mode="disc", role=role, instruction=instruction, **kwargs)
    return embeddings.astype(np.float32), [], []


def _process() -> tuple[int, int]:
    """This process's rank and the number of processes (1 outside `torchrun` / `accelerate launch`)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _score_task(task, embeddings, timings, query_modes, corpus_modes, metrics) -> dict:
    relevance = task.relevance_matrix()
    names = list(dict.fromkeys([task.metric, *metrics]))
    result = {"metric": task.metric, "group": task.group, "scores": {}, "metrics": {}}
    for query_mode in query_modes:
        for corpus_mode in corpus_modes:
            pair = f"{query_mode}->{corpus_mode}"
            queries = torch.from_numpy(embeddings["queries", query_mode])
            corpus = torch.from_numpy(embeddings["corpus", corpus_mode])
            scores = task.mask_pools((queries @ corpus.T).numpy().astype(np.float64))
            values = {name: compute_metric(name, scores, relevance) for name in names}
            result["scores"][pair] = values[task.metric]
            result["metrics"][pair] = values
    result["items_per_second"] = {
        f"{side}/{mode}": timing["items"] / timing["seconds"] if timing["seconds"] > 0 else None
        for (side, mode), timing in timings.items()
    }
    result["generated_tokens_per_item"] = {
        f"{side}/{mode}": timing["generated_tokens_per_item"]
        for (side, mode), timing in timings.items()
        if mode == "gen"
    }
    result["unfinished_share"] = {
        f"{side}/{mode}": timing.get("unfinished_share") for (side, mode), timing in timings.items() if mode == "gen"
    }
    return result


def _aggregate(per_task: dict, tasks: list[RetrievalTask], benchmark: str | None) -> dict:
    """Per-task main scores, plus means over every task (`overall`) and over each group (`group: ...`)."""
    scores = {name: dict(result["scores"]) for name, result in per_task.items()}
    rows = {}
    if len(tasks) > 1:
        groups = {}
        for task in tasks:
            if task.group:
                groups.setdefault(f"group: {task.group}", []).append(task.name)
        rows["overall"] = [task.name for task in tasks]
        rows.update(groups)
    for row, members in rows.items():
        scores[row] = mean_by_pair([scores[m] for m in members])
    metrics = sorted({result["metric"] for result in per_task.values()})
    return {
        "benchmark": benchmark,
        "metric": metrics[0] if len(metrics) == 1 else "main metric of each task",
        "scores": scores,
        "tasks": per_task,
    }


def mean_by_pair(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of several `{mode pair: score}` rows, over the pairs every row has."""
    pairs = sorted(set.intersection(*(set(row) for row in rows)))
    return {pair: float(np.mean([row[pair] for row in rows])) for pair in pairs}


def _environment(encoder, fingerprint: str) -> dict:
    import transformers

    from .. import __version__

    image_processor = getattr(encoder.processor, "image_processor", None)
    size = getattr(image_processor, "size", None) or {}
    return {
        "model_fingerprint": fingerprint,
        "dtype": str(encoder.model.dtype).replace("torch.", ""),
        "max_pixels": size.get("longest_edge") or getattr(image_processor, "max_pixels", None),
        "versions": {
            "transformers_rime": __version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }


def write_reports(results: dict, output_dir: str | os.PathLike) -> tuple[Path, Path, Path]:
    """Write `results.json`, `results.md` (the mode-pair table, then throughput per task) and `results.png` (one
    mode matrix per row) to `output_dir`."""
    output_dir = Path(output_dir)
    json_path = _write_json(output_dir / "results.json", results)
    lines = [f"# {results.get('benchmark') or 'Evaluation'}", "", f"Metric: {results['metric']}.", ""]
    lines += [
        results_table(results),
        "",
        "| task | side/mode | items/s | generated tokens/item | rewrites cut by the budget |",
        "|---|---|---|---|---|",
    ]
    for name, task in results["tasks"].items():
        for key, speed in task["items_per_second"].items():
            tokens = task["generated_tokens_per_item"].get(key)
            cut = task.get("unfinished_share", {}).get(key)
            lines.append(
                f"| {name} | {key} | {'' if speed is None else f'{speed:.2f}'} | "
                f"{'' if tokens is None else f'{tokens:.1f}'} | {'' if cut is None else f'{cut:.1%}'} |"
            )
    markdown_path = output_dir / "results.md"
    markdown_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, markdown_path, plot_results(results, output_dir / "results.png")


def _write_json(path: Path, value: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value, indent=2), encoding="utf-8")
    os.replace(temporary, path)
    return path


__all__ = ["evaluate", "effective_max_new_tokens", "encoder_fingerprint", "write_reports"]
