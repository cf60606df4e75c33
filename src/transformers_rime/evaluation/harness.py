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

import hashlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from ..files import write_atomically, write_bytes, write_json
from ..fingerprints import encoder_fingerprint
from ..model_card import results_table
from ..models.rime.configuration_rime import MODES
from .plot import plot_results
from .tasks import DEFAULT_METRICS, RetrievalTask, compute_metric


logger = logging.get_logger(__name__)


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
    max_length: int | None = None,
) -> dict:
    """Evaluate `encoder` (a [`RimeEncoder`]) on `tasks` in every query-mode x corpus-mode pair.

    Each side of a task is embedded once per mode; the embeddings are cached on disk (in `cache_dir`, by default
    `output_dir/cache`) under a fingerprint of the model weights, the model, generation and processor configurations
    (see `encoder_fingerprint`), the rewrite budget in effect and the side's items, so embeddings made under other
    settings are never reused and an interrupted run restarts where it stopped. Each finished task is also written
    to `output_dir/tasks/{name}.json` and reused on the next run when both fingerprints and the budget match.
    Each cached array is checked against the checksum and shape stored beside it: a damaged, unreadable or
    unchecked cache file is reported (a warning naming it) and recomputed, never used. Every file is written to a
    uniquely named temporary file in its folder, then renamed, so runs sharing a folder never break each other.

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
        max_length: refuse prompts longer than this many tokens (a `ValueError` naming the item; RIME never
            truncates). It only refuses, never changes an embedding, so cached embeddings are reused whatever it is.

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
    settings = dict(
        batch_size=batch_size, max_new_tokens=budget, show_progress_bar=show_progress_bar, max_length=max_length
    )
    per_task = {}
    for task in tqdm(tasks, desc="Tasks", disable=show_progress_bar is False or len(tasks) < 2):
        sides = {side: task.side_fingerprint(side) for side in ("queries", "corpus")}  # hashes every item once
        task_fingerprint = task.fingerprint(sides)
        done = output_dir / "tasks" / f"{task.name}.json" if output_dir else None
        previous = _read_finished_task(done) if done is not None else None
        wanted = {f"{q}->{c}" for q in query_modes for c in corpus_modes}
        reuse = (
            previous is not None
            and previous.get("model_fingerprint") == fingerprint
            and previous.get("task_fingerprint") == task_fingerprint
            and previous.get("max_new_tokens") == budget
            and wanted <= set(previous["scores"])
        )
        if _everywhere(reuse):  # every process decides alike, or the gathers of the others would wait forever
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
            write_json(done, per_task[task.name])
    results = _aggregate(per_task, tasks, benchmark)
    results.update(_environment(encoder, fingerprint), max_new_tokens=budget)
    if output_dir is not None and _process()[0] == 0:
        write_reports(results, output_dir)
    if _process()[1] > 1:
        torch.distributed.barrier()  # the files are written before any process moves on
    return results


def _side_embeddings(encoder, task, side, mode, cache_path: Path | None, settings) -> tuple[np.ndarray, dict]:
    """One side's embeddings in one mode, `(N, D)` float32, and its timing; read from or written to `cache_path`
    (`.npy` + `.json`, named by the model's and the side's fingerprints).

    The `.json` holds the timing, the array's shape and the sha256 of the `.npy` file: a cached side is used only
    when both files read, the checksum matches and the shape is the one expected; otherwise it is recomputed (with
    a warning naming the file) and rewritten.
    """
    items = task.queries if side == "queries" else task.corpus
    embeddings_file, timing_file = (
        (cache_path.with_suffix(".npy"), cache_path.with_suffix(".json")) if cache_path else (None, None)
    )
    if cache_path is not None:
        cached = _read_cached_side(embeddings_file, timing_file, (len(items), encoder.embedding_dim))
        if _everywhere(cached is not None):
            return cached
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
    if cache_path is not None and rank == 0:
        # each file is written whole under a unique name, then renamed: an interruption never leaves half a file
        # and concurrent runs never write into each other's; the checksum (written last) ties the pair together
        buffer = io.BytesIO()
        np.save(buffer, embeddings)
        data = buffer.getvalue()
        write_bytes(embeddings_file, data)
        write_json(
            timing_file, {**timing, _CHECKSUM: hashlib.sha256(data).hexdigest(), _SHAPE: list(embeddings.shape)}
        )
    return embeddings, timing


_CHECKSUM, _SHAPE = "sha256", "shape"
_TIMING_KEYS = ("items", "seconds", "generated_tokens_per_item", "unfinished_share")


def _read_cached_side(
    embeddings_file: Path, timing_file: Path, expected_shape: tuple[int, int]
) -> tuple[np.ndarray, dict] | None:
    """A cached side's `(embeddings, timing)` when both files read and agree with each other (checksum, shape)
    and with `expected_shape`; else `None`, with a warning naming the file when one exists but cannot be trusted."""
    has_embeddings, has_timing = embeddings_file.is_file(), timing_file.is_file()
    if not (has_embeddings and has_timing):
        if has_embeddings or has_timing:  # e.g. a run stopped between the two writes: nothing damaged, just missing
            present, missing = (embeddings_file, timing_file) if has_embeddings else (timing_file, embeddings_file)
            logger.info(f"Cache: {present} has no {missing.name} beside it; recomputing.")
        return None

    def distrust(reason: str) -> None:
        logger.warning(f"Cache: {reason}; not using it: recomputing {embeddings_file} and {timing_file}.")

    try:
        record = json.loads(timing_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return distrust(f"{timing_file} is unreadable ({type(error).__name__}: {error})")
    if not isinstance(record, dict):
        return distrust(f"{timing_file} is not a cache timing record")
    if _CHECKSUM not in record or _SHAPE not in record:
        return distrust(
            f"{timing_file} has no checksum (written by an older version), so {embeddings_file} is unchecked"
        )
    if any(key not in record for key in _TIMING_KEYS) or not isinstance(record[_SHAPE], list):
        return distrust(f"{timing_file} is not a cache timing record")
    try:
        data = embeddings_file.read_bytes()
    except OSError as error:
        return distrust(f"{embeddings_file} is unreadable ({type(error).__name__}: {error})")
    if hashlib.sha256(data).hexdigest() != record[_CHECKSUM]:
        return distrust(f"{embeddings_file} does not match the checksum in {timing_file} (damaged or replaced)")
    try:
        embeddings = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        return distrust(f"{embeddings_file} is unreadable ({type(error).__name__}: {error})")
    if list(embeddings.shape) != list(record[_SHAPE]) or embeddings.shape != tuple(expected_shape):
        return distrust(
            f"{embeddings_file} holds an array of shape {tuple(embeddings.shape)}, {timing_file} says "
            f"{tuple(record[_SHAPE])} and {tuple(expected_shape)} is expected"
        )
    if embeddings.dtype != np.float32:
        return distrust(f"{embeddings_file} holds {embeddings.dtype}, not float32")
    return embeddings, {key: record[key] for key in _TIMING_KEYS}


def _read_finished_task(path: Path) -> dict | None:
    """A finished task's results (`output_dir/tasks/{name}.json`), or `None` when absent or unreadable (a warning
    names an unreadable one: the task is then run again and the file rewritten)."""
    if not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        logger.warning(f"{path} is unreadable ({type(error).__name__}: {error}); running the task again.")
        return None
    if not isinstance(previous, dict) or not isinstance(previous.get("scores"), dict):
        logger.warning(f"{path} holds no task results; running the task again.")
        return None
    return previous


def _everywhere(flag: bool) -> bool:
    """`flag` on every process (just `flag` outside `torchrun` / `accelerate launch`)."""
    if _process()[1] == 1:
        return flag
    flags = [None] * _process()[1]
    torch.distributed.all_gather_object(flags, bool(flag))
    return all(flags)


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
    json_path = write_json(output_dir / "results.json", results)
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
    markdown_path = write_bytes(output_dir / "results.md", ("\n".join(lines) + "\n").encode("utf-8"))
    plot_path = write_atomically(output_dir / "results.png", lambda temporary: plot_results(results, temporary))
    return json_path, markdown_path, plot_path


__all__ = ["evaluate", "effective_max_new_tokens", "encoder_fingerprint", "write_reports"]
