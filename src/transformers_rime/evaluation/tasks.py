"""Retrieval tasks: queries, a corpus, graded relevance and each query's candidate pool; and a jsonl folder format.

A task folder holds

- `corpus.jsonl`: one candidate per line, `{"id": "d1", "text": "...", "image": "pages/d1.png"}` (any of `text`,
  `image`, `images`, `video`; paths relative to the folder);
- `queries.jsonl`: one query per line, `{"id": "q1", "text": "...", "relevant": {"d1": 2, "d7": 1}}`
  (`relevant` may also be a list of ids, all of grade 1) and, for a `local` task, `"candidates": ["d1", "d4", ...]`,
  the ids it is ranked against (otherwise the whole corpus);
- `task.json` (optional): `{"name": ..., "metric": "hit@1", "query_instruction": ..., "corpus_instruction": ...,
  "group": ...}`.

Metrics are named as in MMEB-V2: `hit@k`, `recall@k`, `mrr`, `mrr@k`, `ndcg_linear@k` (also `ndcg@k`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.synthetic import KINDS, synthetic_examples
from ..fingerprints import item_fingerprint
from ..inputs import parse_input
from .metrics import hit_at_k, mrr, ndcg_at_k, recall_at_k


_METRIC = re.compile(r"^(hit|recall|mrr|ndcg|ndcg_linear)(?:@(\d+))?$")
DEFAULT_METRICS = ("hit@1", "hit@5", "hit@10", "recall@10", "mrr", "ndcg_linear@5", "ndcg_linear@10")


@dataclass
class RetrievalTask:
    """One retrieval task.

    Args:
        name: the task's name (a key of the results).
        queries: the query items (anything `RimeEncoder.encode` takes).
        corpus: the candidate items.
        relevance: per query, `{corpus index: grade}` with grades > 0.
        pools: per query, the corpus indices it is ranked against (MMEB-V2's `local` tasks); `None` ranks every
            query against the whole corpus (`global`).
        metric: the main metric (`"hit@1"`, `"ndcg_linear@5"`, ...).
        query_instruction / corpus_instruction: override the processor's role instructions.
        group: where the task belongs for aggregate scores (e.g. `"image/RET"`).
    """

    name: str
    queries: list
    corpus: list
    relevance: list[dict[int, float]]
    pools: list[list[int]] | None = None
    metric: str = "hit@1"
    query_instruction: str | None = None
    corpus_instruction: str | None = None
    group: str | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        parse_metric(self.metric)
        if len(self.relevance) != len(self.queries):
            raise ValueError(
                f"Task {self.name!r}: {len(self.queries)} queries but {len(self.relevance)} relevance rows."
            )
        if self.pools is not None and len(self.pools) != len(self.queries):
            raise ValueError(f"Task {self.name!r}: {len(self.queries)} queries but {len(self.pools)} pools.")
        size = len(self.corpus)
        for q, grades in enumerate(self.relevance):
            if not grades or any(g <= 0 for g in grades.values()):
                raise ValueError(f"Task {self.name!r}, query {q}: needs at least one relevant candidate (grade > 0).")
            pool = range(size) if self.pools is None else set(self.pools[q])
            outside = [c for c in grades if not 0 <= c < size or c not in pool]
            if outside:
                raise ValueError(f"Task {self.name!r}, query {q}: relevant candidate(s) {outside} not in its pool.")

    def relevance_matrix(self) -> np.ndarray:
        """Grades, `(queries, corpus)`."""
        matrix = np.zeros((len(self.queries), len(self.corpus)))
        for q, grades in enumerate(self.relevance):
            for c, grade in grades.items():
                matrix[q, c] = grade
        return matrix

    def mask_pools(self, scores: np.ndarray) -> np.ndarray:
        """`scores` with `-inf` outside each query's pool (a copy; unchanged for a global task)."""
        if self.pools is None:
            return scores
        masked = np.full_like(scores, -np.inf)
        for q, pool in enumerate(self.pools):
            masked[q, pool] = scores[q, pool]
        return masked

    def fingerprint(self, side_fingerprints: dict[str, str] | None = None) -> str:
        """A hash of everything that decides the task's scores: items, relevance, pools, instructions, metric.

        `side_fingerprints` (`{"queries": ..., "corpus": ...}`, from `side_fingerprint`) saves hashing the items again.
        """
        sides = side_fingerprints or {side: self.side_fingerprint(side) for side in ("queries", "corpus")}
        header = [self.metric, self.relevance, self.pools, sides["queries"], sides["corpus"]]
        return hashlib.blake2b(json.dumps(header, default=str).encode(), digest_size=16).hexdigest()

    def side_fingerprint(self, side: str) -> str:
        """A hash of one side's items and instruction (`"queries"` or `"corpus"`), which keys its cached embeddings."""
        items, instruction = (
            (self.queries, self.query_instruction) if side == "queries" else (self.corpus, self.corpus_instruction)
        )
        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr(instruction).encode())
        for index, item in enumerate(items):
            digest.update(item_fingerprint(parse_input(item, index)).encode())
        return digest.hexdigest()


def parse_metric(name: str) -> tuple[str, int | None]:
    """`"ndcg_linear@5"` -> `("ndcg", 5)`; raises on an unknown name."""
    match = _METRIC.match(name)
    if match is None:
        raise ValueError(f"Unknown metric {name!r}; use hit@k, recall@k, mrr, mrr@k or ndcg_linear@k.")
    kind, k = match.group(1), match.group(2)
    kind = "ndcg" if kind == "ndcg_linear" else kind
    if kind != "mrr" and k is None:
        raise ValueError(f"Metric {name!r} needs a cut-off, e.g. {kind}@10.")
    return kind, None if k is None else int(k)


def compute_metric(name: str, scores, relevance) -> float:
    """The metric `name` (MMEB-V2 naming) of a score matrix."""
    kind, k = parse_metric(name)
    if kind == "hit":
        return hit_at_k(scores, relevance, k=k)
    if kind == "recall":
        return recall_at_k(scores, relevance, k=k)
    if kind == "ndcg":
        return ndcg_at_k(scores, relevance, k=k)
    return mrr(scores, relevance, k=k)


def read_task(folder: str | Path, name: str | None = None) -> RetrievalTask:
    """Read a task folder in the jsonl format of this module's docstring."""
    folder = Path(folder)
    for required in ("corpus.jsonl", "queries.jsonl"):
        if not (folder / required).is_file():
            raise FileNotFoundError(
                f"{folder} is not a task folder: {required} is missing (see `rime eval --help` for the layout)."
            )
    settings = (
        json.loads((folder / "task.json").read_text(encoding="utf-8")) if (folder / "task.json").is_file() else {}
    )
    corpus_rows = _read_jsonl(folder / "corpus.jsonl")
    ids = {}
    for line, row in enumerate(corpus_rows, 1):
        if "id" not in row:
            raise ValueError(f"{folder / 'corpus.jsonl'} line {line}: missing 'id'.")
        if str(row["id"]) in ids:
            raise ValueError(f"{folder / 'corpus.jsonl'} line {line}: duplicate id {row['id']!r}.")
        ids[str(row["id"])] = len(ids)
    corpus = [_item(row, folder, f"corpus.jsonl line {line}") for line, row in enumerate(corpus_rows, 1)]
    queries, relevance, pools = [], [], []
    for line, row in enumerate(_read_jsonl(folder / "queries.jsonl"), 1):
        where = f"{folder / 'queries.jsonl'} line {line}"
        relevant = row.get("relevant")
        if isinstance(relevant, list):
            relevant = {str(i): 1 for i in relevant}
        if not isinstance(relevant, dict) or not relevant:
            raise ValueError(f"{where}: 'relevant' must be a non-empty {{id: grade}} mapping or list of ids.")
        relevance.append({_lookup(ids, i, where): float(g) for i, g in relevant.items() if float(g) > 0})
        pools.append([_lookup(ids, i, where) for i in row["candidates"]] if "candidates" in row else None)
        queries.append(_item(row, folder, where))
    if any(p is None for p in pools) and not all(p is None for p in pools):
        raise ValueError(f"{folder / 'queries.jsonl'}: give 'candidates' for every query or for none.")
    return RetrievalTask(
        name=name or settings.get("name") or folder.name,
        queries=queries,
        corpus=corpus,
        relevance=relevance,
        pools=None if pools and pools[0] is None else pools,
        metric=settings.get("metric", "hit@1"),
        query_instruction=settings.get("query_instruction"),
        corpus_instruction=settings.get("corpus_instruction"),
        group=settings.get("group"),
    )


def write_task(task: RetrievalTask, folder: str | Path) -> Path:
    """Write a task with text items (and image paths) in the folder format `read_task` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for index, item in enumerate(task.corpus):
            f.write(json.dumps({"id": f"d{index}", **_row(item)}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        for q, item in enumerate(task.queries):
            row = {"id": f"q{q}", **_row(item), "relevant": {f"d{c}": g for c, g in task.relevance[q].items()}}
            if task.pools is not None:
                row["candidates"] = [f"d{c}" for c in task.pools[q]]
            f.write(json.dumps(row) + "\n")
    settings = {"name": task.name, "metric": task.metric, "group": task.group}
    settings.update(query_instruction=task.query_instruction, corpus_instruction=task.corpus_instruction)
    (folder / "task.json").write_text(json.dumps({k: v for k, v in settings.items() if v is not None}, indent=2))
    return folder


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if text.strip():
            try:
                rows.append(json.loads(text))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {line}: not JSON ({error.msg}).") from None
    return rows


def _item(row: dict, folder: Path, where: str):
    item = {key: row[key] for key in ("text", "image", "images", "video") if row.get(key) is not None}
    if not item:
        raise ValueError(f"{where}: no 'text', 'image', 'images' or 'video'.")
    for key in ("image", "images", "video"):
        if key in item:
            paths = item[key] if isinstance(item[key], list) else [item[key]]
            resolved = [str(folder / p) for p in paths]
            missing = [p for p in resolved if not Path(p).is_file()]
            if missing:
                raise FileNotFoundError(f"{where}: missing media file(s) {missing[:3]}.")
            item[key] = resolved if isinstance(item[key], list) else resolved[0]
    return item if set(item) != {"text"} else item["text"]


def _row(item) -> dict:
    if isinstance(item, str):
        return {"text": item}
    if isinstance(item, dict):
        return {k: v for k, v in item.items() if isinstance(v, (str, list))}
    raise TypeError(f"write_task writes text items and paths, got {type(item).__name__}.")


def _lookup(ids: dict, key, where: str) -> int:
    if str(key) not in ids:
        raise ValueError(f"{where}: unknown corpus id {key!r}.")
    return ids[str(key)]


def synthetic_tasks(
    split: str = "heldout", per_kind: int = 32, seed: int = 1, kinds: tuple[str, ...] = KINDS
) -> list[RetrievalTask]:
    """One `RetrievalTask` per kind of `transformers_rime.data.synthetic` (by default the five retrieval kinds; any of
    `ALL_KINDS`, e.g. `REASONING_KINDS`): each query against the `per_kind` documents of its kind (Hit@1).

    ```python
    >>> [task.name for task in synthetic_tasks("heldout", per_kind=4, seed=1)]
    ['text_to_image', 'image_to_text', 'image_question_to_answer', 'text_to_page', 'text_to_video']

    ```
    """
    tasks = []
    for kind in kinds:
        rows = synthetic_examples(kind, split, per_kind, seed)
        corpus, index, relevance = [], {}, []
        for row in rows:
            key = row["positive_key"]
            if key not in index:
                index[key] = len(corpus)
                corpus.append(row["positive"])
            relevance.append({index[key]: 1.0})
        tasks.append(
            RetrievalTask(
                kind,
                queries=[row["query"] for row in rows],
                corpus=corpus,
                relevance=relevance,
                metric="hit@1",
                group="synthetic",
                metadata={"split": split, "seed": seed},
            )
        )
    return tasks


__all__ = [
    "DEFAULT_METRICS",
    "RetrievalTask",
    "compute_metric",
    "parse_metric",
    "read_task",
    "synthetic_tasks",
    "write_task",
]
