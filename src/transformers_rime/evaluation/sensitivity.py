"""How much a gen embedding depends on its rewrite: swap rewrites between queries, or remove them, and measure.

RIME's gen embedding is read at the `<gen_emb>` the model writes after its rewrite, and is meant to encode what the
rewrite says. Nothing in the usual scores checks that it does: a model whose gen embedding reads only the prompt
(the rewrite ignored) can score as well as one that reads the rewrite, and its rewrites, and any training of them
(Refine-RL), then change nothing. UME-R1's users asked about this failure for its chains of thought.

The diagnostic embeds each query three times, teacher-forced (`RimeEncoder.encode_with_rewrites`), with

- **own**: the rewrite the model wrote for it (its exact tokens, so this is the usual gen-mode embedding);
- **swapped**: the rewrite the model wrote for another query of the same task (a fixed random derangement: no query
  keeps its own). Two queries may have written the same rewrite; such swaps still count, and are reported;
- **removed**: no rewrite, `<gen_emb>` right after the prompt;

and ranks the task's corpus, embedded in disc mode and in gen mode as usual, by each. It reports Hit@1 of the
gen->disc and gen->gen pairs for each variant, the drops own - swapped and own - removed, and the mean cosine
between each query's own-rewrite embedding and its swapped / removed one.

**Reading it.** A model whose gen embedding follows its rewrite loses Hit@1 when the rewrite is swapped (the query
now points at its partner's documents) and its embeddings move (cosine clearly below 1). A model whose gen
embedding ignores the rewrite shows no drop and cosines near 1. Removing the rewrite asks what the prompt alone
carries; a small drop there with a large one under swapping means that the rewrite is read and a wrong one misleads.

Example:

```python
>>> from transformers_rime import RimeEncoder
>>> from transformers_rime.evaluation import RetrievalTask, format_rewrite_sensitivity, rewrite_sensitivity
>>> from transformers_rime.testing import tiny_rime_model, tiny_rime_processor
>>> processor = tiny_rime_processor()
>>> encoder = RimeEncoder(tiny_rime_model(processor=processor), processor)
>>> task = RetrievalTask("colors", queries=["red car", "black cat", "blue bus"],
...                      corpus=["a red car", "a black cat", "a blue bus"], relevance=[{0: 1}, {1: 1}, {2: 1}])
>>> results = rewrite_sensitivity(encoder, [task], max_new_tokens=4, show_progress_bar=False)
>>> sorted(results["tasks"]["colors"]["hit@1"]["gen->disc"])
['own', 'removed', 'swapped']
>>> print(format_rewrite_sensitivity(results).splitlines()[0])
| task | queries | pair | own | swapped | removed | own − swapped | own − removed | cos swapped | cos removed |

```
"""

from __future__ import annotations

import zlib

import numpy as np
from tqdm.auto import tqdm

from ..inputs import parse_input
from .tasks import RetrievalTask, compute_metric


METRIC = "hit@1"
VARIANTS = ("own", "swapped", "removed")
PAIRS = ("gen->disc", "gen->gen")  # the query is in gen mode; the corpus in disc or gen mode


def random_derangement(n: int, seed: int | list[int] = 0) -> np.ndarray:
    """A random permutation of `range(n)` that moves every element (`p[i] != i`), uniform over such permutations.

    Drawn by rejection (a random permutation is a derangement with probability about 1/e), from
    `np.random.default_rng(seed)`, so a seed always gives the same one.

    Args:
        n (`int`): the number of elements, at least 2 (one element cannot move).
        seed (`int` or `list[int]`): the generator's seed.

    Returns:
        `np.ndarray` of shape `(n,)`, dtype int64: `p[i]` is the partner of element `i`.

    ```python
    >>> p = random_derangement(5, seed=0)
    >>> sorted(p.tolist()) == [0, 1, 2, 3, 4] and all(p != np.arange(5))
    True
    >>> random_derangement(2).tolist()
    [1, 0]

    ```
    """
    if n < 2:
        raise ValueError(f"A derangement needs at least 2 elements, got {n}.")
    rng = np.random.default_rng(seed)
    while True:
        permutation = rng.permutation(n)
        if (permutation != np.arange(n)).all():
            return permutation


def paired_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`: `(N, D)`, `(N, D)` -> `(N,)`.

    The rows are normalised here, so embeddings need not be unit vectors (`config.normalize=False`); a zero row
    has cosine 0 with anything.

    ```python
    >>> paired_cosines(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[1.0, 1.0], [0.0, 3.0]])).round(3).tolist()
    [0.707, 1.0]

    ```
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired_cosines needs two (N, D) arrays of one shape, got {a.shape} and {b.shape}.")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def rewrite_drops(hits: dict[str, float]) -> dict[str, float]:
    """The drops of a score from the own rewrite to the others: `{"swapped": own - swapped, "removed": own -
    removed}`. Positive: the score falls when the rewrite is taken away.

    ```python
    >>> rewrite_drops({"own": 0.75, "swapped": 0.125, "removed": 0.5})
    {'swapped': 0.625, 'removed': 0.25}

    ```
    """
    return {variant: hits["own"] - hits[variant] for variant in VARIANTS[1:]}


def mean_over_tasks(per_task: dict[str, dict]) -> dict:
    """The overall row: Hit@1, drops and cosines averaged over tasks (each task weighs the same, as in the
    harness's `overall`), queries and identical swaps summed.

    ```python
    >>> row = {"num_queries": 4, "identical_swaps": 1, "cosine": {"swapped": 0.5, "removed": 0.9},
    ...        "hit@1": {"gen->disc": {"own": 1.0, "swapped": 0.0, "removed": 0.5}}}
    >>> other = {**row, "num_queries": 2, "hit@1": {"gen->disc": {"own": 0.5, "swapped": 0.5, "removed": 0.5}}}
    >>> overall = mean_over_tasks({"a": row, "b": other})
    >>> overall["num_queries"], overall["hit@1"]["gen->disc"], overall["drop"]["gen->disc"]
    (6, {'own': 0.75, 'swapped': 0.25, 'removed': 0.5}, {'swapped': 0.5, 'removed': 0.25})

    ```
    """
    rows = list(per_task.values())
    pairs = [pair for pair in rows[0][METRIC] if all(pair in row[METRIC] for row in rows)]
    hits = {
        pair: {variant: float(np.mean([row[METRIC][pair][variant] for row in rows])) for variant in VARIANTS}
        for pair in pairs
    }
    return {
        "num_tasks": len(rows),
        "num_queries": sum(row["num_queries"] for row in rows),
        "identical_swaps": sum(row["identical_swaps"] for row in rows),
        METRIC: hits,
        "drop": {pair: rewrite_drops(hits[pair]) for pair in pairs},
        "cosine": {variant: float(np.mean([row["cosine"][variant] for row in rows])) for variant in VARIANTS[1:]},
    }


def check_tasks(tasks: list[RetrievalTask]) -> None:
    """Refuse, before any model work, what the diagnostic cannot run on: no task, two tasks of one name, a task with
    fewer than 2 queries (a rewrite needs another query to be swapped with), an item that does not parse (the error
    names the task, the side and the item's index)."""
    if not tasks:
        raise ValueError("rewrite_sensitivity needs at least one task.")
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"Task names must be unique, got {names}.")
    for task in tasks:
        if len(task.queries) < 2:
            raise ValueError(
                f"Task {task.name!r} has {len(task.queries)} quer{'y' if len(task.queries) == 1 else 'ies'}; "
                "swapping rewrites needs at least 2 queries."
            )
        for side, items in (("query", task.queries), ("corpus item", task.corpus)):
            for index, item in enumerate(items):
                parse_input(item, index, f"task {task.name!r} {side}")


def rewrite_sensitivity(
    encoder,
    tasks: list[RetrievalTask],
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    show_progress_bar: bool | None = None,
    max_length: int | None = None,
) -> dict:
    """Measure how much `encoder`'s gen embeddings depend on their rewrites (see the module docstring).

    For each task: each query's rewrite is generated (gen mode, greedy, `max_new_tokens`); the queries are embedded
    teacher-forced with their own rewrite (its exact tokens), with another query's (a derangement drawn from `seed`
    and the task's name, so it is the same in every run), and with none; the corpus is embedded in disc and in gen
    mode. Each query variant is scored with Hit@1 against both (the task's pools and relevance apply, as in
    `evaluate`).

    Args:
        encoder ([`RimeEncoder`]): the model to diagnose.
        tasks (`list[RetrievalTask]`): each with at least 2 queries; its instructions apply.
        max_new_tokens (`int`, *optional*): the rewrite budget (default: the model config's; the one used is
            reported).
        batch_size (`int`): items per forward / generate call.
        seed (`int`): seeds the swaps.
        show_progress_bar (`bool`, *optional*): `None` shows bars on a terminal.
        max_length (`int`, *optional*): refuse sequences longer than this many tokens, as in `encode`.

    Returns:
        `dict` with `"metric"` (`"hit@1"`), `"max_new_tokens"`, `"seed"`, `"tasks"` (by name) and `"overall"` (the
        mean over tasks). Each task holds `"num_queries"`, `"identical_swaps"` (swaps between two equal rewrite
        texts), `"unfinished_share"` (own rewrites that hit the budget), `"hit@1"` as `{pair: {variant: score}}` for
        the pairs `"gen->disc"`, `"gen->gen"` and the variants `"own"`, `"swapped"`, `"removed"`, `"drop"` as
        `{pair: {"swapped": own - swapped, "removed": own - removed}}` and `"cosine"` as `{"swapped": mean,
        "removed": mean}` of the cosines between each query's own-rewrite embedding and the other one.

    Items are parsed and the tasks checked (`check_tasks`) before any model work; each encoder call then checks its
    items in full (media, prompt length) before it runs.
    """
    check_tasks(tasks)
    budget = encoder.rewrite_budget(max_new_tokens)
    run = dict(batch_size=batch_size, show_progress_bar=show_progress_bar, max_length=max_length)
    per_task = {}
    for task in tqdm(tasks, desc="Tasks", disable=show_progress_bar is False or len(tasks) < 2):
        partners = random_derangement(len(task.queries), seed=[seed, zlib.crc32(task.name.encode("utf-8"))])
        per_task[task.name] = _task_sensitivity(encoder, task, partners, budget, run)
    return {
        "metric": METRIC,
        "max_new_tokens": budget,
        "seed": seed,
        "tasks": per_task,
        "overall": mean_over_tasks(per_task),
    }


def _task_sensitivity(encoder, task: RetrievalTask, partners: np.ndarray, budget: int, run: dict) -> dict:
    """One task's figures; `partners[i]` is the query whose rewrite query `i` gets when swapped."""
    queries = {"role": "query", "instruction": task.query_instruction, **run}
    generations = encoder.generate(task.queries, max_new_tokens=budget, **queries)
    own = [generation.token_ids for generation in generations]
    rewrites = {"own": own, "swapped": [own[p] for p in partners], "removed": [None] * len(own)}
    embeddings = {
        variant: encoder.encode_with_rewrites(task.queries, rewrites[variant], **queries) for variant in VARIANTS
    }
    corpus = {"role": "document", "instruction": task.corpus_instruction, **run}
    corpus_embeddings = {
        "gen->disc": encoder.encode(task.corpus, mode="disc", **corpus),
        "gen->gen": encoder.encode(task.corpus, mode="gen", max_new_tokens=budget, **corpus),
    }
    relevance = task.relevance_matrix()
    hits = {
        pair: {
            variant: float(
                compute_metric(
                    METRIC,
                    task.mask_pools(embeddings[variant].astype(np.float64) @ documents.T.astype(np.float64)),
                    relevance,
                )
            )
            for variant in VARIANTS
        }
        for pair, documents in corpus_embeddings.items()
    }
    texts = [generation.text for generation in generations]
    return {
        "num_queries": len(task.queries),
        "identical_swaps": sum(texts[i] == texts[p] for i, p in enumerate(partners.tolist())),
        "unfinished_share": float(np.mean([not generation.finished for generation in generations])),
        METRIC: hits,
        "drop": {pair: rewrite_drops(hits[pair]) for pair in PAIRS},
        "cosine": {
            variant: float(paired_cosines(embeddings["own"], embeddings[variant]).mean()) for variant in VARIANTS[1:]
        },
    }


def format_rewrite_sensitivity(results: dict) -> str:
    """A Markdown table of `rewrite_sensitivity`'s results: one row per task and pair, then the overall rows.

    The cosines describe the query embeddings, whatever the corpus mode, so both rows of a task show the same ones.
    """
    columns = ("task", "queries", "pair", *VARIANTS, "own − swapped", "own − removed", "cos swapped", "cos removed")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    rows = list(results["tasks"].items())
    if len(rows) > 1:
        rows.append(("overall", results["overall"]))
    for name, row in rows:
        for pair, hits in row[METRIC].items():
            drop, cosine = row["drop"][pair], row["cosine"]
            cells = [name, str(row["num_queries"]), pair]
            cells += [f"{hits[variant]:.3f}" for variant in VARIANTS]
            cells += [f"{drop['swapped']:+.3f}", f"{drop['removed']:+.3f}"]
            cells += [f"{cosine['swapped']:.3f}", f"{cosine['removed']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
    identical = results["overall"]["identical_swaps"]
    lines.append(
        f"\nHit@1 of gen-mode queries with their own rewrite, another query's (swapped; {identical} of "
        f"{results['overall']['num_queries']} swaps between identical rewrites) and none (removed); rewrite budget "
        f"{results['max_new_tokens']} tokens. A gen embedding that ignores its rewrite shows no drop and cosines "
        "near 1."
    )
    return "\n".join(lines)


__all__ = [
    "check_tasks",
    "format_rewrite_sensitivity",
    "mean_over_tasks",
    "paired_cosines",
    "random_derangement",
    "rewrite_drops",
    "rewrite_sensitivity",
]
