"""Evaluation: metrics, search, tasks, the four-mode harness, reports and the MMEB-V2 manifest.

- `metrics`: `hit_at_k`, `recall_at_k`, `mrr`, `ndcg_at_k` on score matrices (ties count against the query).
- `tasks`: `RetrievalTask`, the jsonl task folder format (`read_task`, `write_task`) and `synthetic_tasks`.
- `harness`: `evaluate(encoder, tasks)`, every query-mode x corpus-mode pair, cached and resumable; `plot`: the PNG.
- `mmeb`: MMEB-V2's 78 tasks (pinned) and its aggregation (`mmeb_v2_scores`); `mmeb_data` and `mmeb_video`:
  readers for a local copy of its evaluation files, all 78 tasks (`read_mmeb_v2`).
- `mteb`: `RimeMtebEncoder`, so that mteb can evaluate a `RimeEncoder` (mteb is not a dependency).
- `sensitivity`: `rewrite_sensitivity`, how much gen embeddings depend on their rewrites (swapped between queries
  or removed), and `format_rewrite_sensitivity`, its table (`rime diagnose`).
"""

from .harness import encoder_fingerprint, evaluate, write_reports
from .metrics import hit_at_k, mrr, ndcg_at_k, ranked_relevance, recall_at_k
from .mmeb import MMEB_V2_TASKS, mmeb_v2_scores
from .mmeb_data import read_mmeb_v2
from .mteb import RimeMtebEncoder
from .plot import plot_results
from .sensitivity import format_rewrite_sensitivity, rewrite_sensitivity
from .tasks import (
    DEFAULT_METRICS,
    RetrievalTask,
    compute_metric,
    parse_metric,
    read_task,
    synthetic_tasks,
    write_task,
)


__all__ = [
    "DEFAULT_METRICS",
    "MMEB_V2_TASKS",
    "RetrievalTask",
    "RimeMtebEncoder",
    "compute_metric",
    "encoder_fingerprint",
    "evaluate",
    "format_rewrite_sensitivity",
    "parse_metric",
    "plot_results",
    "read_mmeb_v2",
    "read_task",
    "rewrite_sensitivity",
    "synthetic_tasks",
    "write_reports",
    "write_task",
    "hit_at_k",
    "mmeb_v2_scores",
    "mrr",
    "ndcg_at_k",
    "ranked_relevance",
    "recall_at_k",
]
