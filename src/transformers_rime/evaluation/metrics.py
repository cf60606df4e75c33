"""Ranking metrics on score matrices: `hit_at_k`, `recall_at_k`, `mrr` and `ndcg_at_k` (MMEB-V2's `ndcg_linear`).

Every function takes

- `scores`, `(Q, C)`: the similarity of each query to each candidate. `-inf` marks a candidate outside the query's
  pool (MMEB-V2's `local` tasks rank each query against its own candidate list; pad the others with `-inf`);
- `relevance`, `(Q, C)`: the relevance grade of each candidate for each query, `0` for irrelevant (booleans work
  for binary relevance; any positive grade counts as relevant for hit, recall and MRR);

and returns the mean over queries, or the per-query values with `reduce=False`.

**Ties** count against the query: candidates with equal scores are ranked less relevant first, so a relevant
candidate tied with an irrelevant one ranks below it. The result therefore never depends on the order of the
candidates (shuffling the corpus leaves every metric unchanged), and a model that gives every candidate the same
score gets no credit. **k larger than the pool** is the whole pool.

```python
>>> import numpy as np
>>> scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.8]])
>>> relevance = np.array([[0, 1, 0], [0, 1, 0]])
>>> hit_at_k(scores, relevance, k=1), mrr(scores, relevance)  # query 2 ties its positive with a negative
(0.0, 0.5)

```
"""

from __future__ import annotations

import numpy as np
import torch


def ranked_relevance(scores, relevance) -> tuple[np.ndarray, np.ndarray]:
    """Relevance grades in ranked order, `(Q, C)`, and each query's pool size, `(Q,)`.

    Row `q` lists the grades of query `q`'s candidates from best to worst score (ties: less relevant first); the
    entries past `pool_sizes[q]` are the candidates outside its pool and must be ignored.

    ```python
    >>> ranked, pool = ranked_relevance([[0.1, 0.7, -float("inf")]], [[1, 0, 0]])
    >>> ranked.tolist(), pool.tolist()
    ([[0.0, 1.0, 0.0]], [2])

    ```
    """
    scores, relevance = _as_arrays(scores, relevance)
    in_pool = scores > -np.inf
    if (relevance[~in_pool] > 0).any():
        query = int(np.nonzero(((relevance > 0) & ~in_pool).any(axis=1))[0][0])
        raise ValueError(f"Query {query} has a relevant candidate outside its pool (score -inf).")
    pool_sizes = in_pool.sum(axis=1)
    no_positive = np.nonzero(~((relevance > 0) & in_pool).any(axis=1))[0]
    if len(no_positive):
        raise ValueError(
            f"{len(no_positive)} queries have no relevant candidate in their pool (first: query {no_positive[0]}); "
            "their metrics are undefined."
        )
    # lexsort: the last key is the primary one -> by score descending, then relevance ascending (ties count against)
    order = np.lexsort((relevance, -scores), axis=-1)
    return np.take_along_axis(relevance, order, axis=-1), pool_sizes


def hit_at_k(scores, relevance, k: int = 1, reduce: bool = True):
    """Whether a relevant candidate is among the top `k` (MMEB-V2's `hit@k`, its image and video main metric).

    ```python
    >>> hit_at_k([[0.2, 0.9, 0.5]], [[1, 0, 0]], k=2), hit_at_k([[0.2, 0.9, 0.5]], [[1, 0, 0]], k=3)
    (0.0, 1.0)

    ```
    """
    ranked, pool = ranked_relevance(scores, relevance)
    values = (_top(ranked, pool, k) > 0).any(axis=1).astype(np.float64)
    return _reduce(values, reduce)


def recall_at_k(scores, relevance, k: int = 10, reduce: bool = True):
    """Share of a query's relevant candidates found in its top `k`.

    ```python
    >>> recall_at_k([[0.9, 0.8, 0.1]], [[1, 0, 1]], k=2)
    0.5

    ```
    """
    ranked, pool = ranked_relevance(scores, relevance)
    found = (_top(ranked, pool, k) > 0).sum(axis=1)
    total = (_top(ranked, pool, ranked.shape[1]) > 0).sum(axis=1)
    return _reduce(found / total, reduce)


def mrr(scores, relevance, k: int | None = None, reduce: bool = True):
    """Mean reciprocal rank of the first relevant candidate; with `k`, a first hit below rank `k` counts 0.

    ```python
    >>> mrr([[0.9, 0.8, 0.1]], [[0, 0, 1]]), mrr([[0.9, 0.8, 0.1]], [[0, 0, 1]], k=2)
    (0.3333333333333333, 0.0)

    ```
    """
    ranked, pool = ranked_relevance(scores, relevance)
    top = _top(ranked, pool, ranked.shape[1] if k is None else k) > 0
    first = top.argmax(axis=1)
    values = np.where(top.any(axis=1), 1.0 / (first + 1), 0.0)
    return _reduce(values, reduce)


def ndcg_at_k(scores, relevance, k: int = 5, reduce: bool = True):
    r"""Normalised discounted cumulative gain with linear gain (MMEB-V2's `ndcg_linear@k`, its visdoc metric).

    $$\mathrm{DCG@k} = \sum_{i=1}^{k} \frac{\mathrm{rel}_i}{\log_2(i + 1)}, \qquad
    \mathrm{nDCG@k} = \frac{\mathrm{DCG@k}}{\mathrm{IDCG@k}}$$

    with graded relevance taken as is (linear gain) and IDCG the DCG of the pool's best possible order.

    ```python
    >>> round(ndcg_at_k([[0.9, 0.8, 0.1]], [[1, 2, 0]], k=2), 4)  # the grade-2 page ranked second
    0.8597

    ```
    """
    ranked, pool = ranked_relevance(scores, relevance)
    top = _top(ranked, pool, k)
    discounts = 1.0 / np.log2(np.arange(top.shape[1]) + 2.0)
    dcg = (top * discounts).sum(axis=1)
    ideal = -np.sort(-_top(ranked, pool, ranked.shape[1]), axis=1)[:, : top.shape[1]]
    idcg = (ideal * discounts).sum(axis=1)
    return _reduce(dcg / idcg, reduce)


def _as_arrays(scores, relevance) -> tuple[np.ndarray, np.ndarray]:
    scores = _numpy(scores).astype(np.float64)
    relevance = _numpy(relevance).astype(np.float64)
    if scores.ndim != 2 or scores.shape != relevance.shape:
        raise ValueError(
            f"scores and relevance must both be (queries, candidates); got {scores.shape} and {relevance.shape}."
        )
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN.")
    if (relevance < 0).any():
        raise ValueError("relevance grades must be >= 0.")
    return scores, relevance


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values)


def _top(ranked: np.ndarray, pool_sizes: np.ndarray, k: int) -> np.ndarray:
    """The first `k` ranked grades of each query, zeroed past its pool, `(Q, min(k, C))`."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    top = ranked[:, :k].copy()
    top[np.arange(top.shape[1])[None, :] >= pool_sizes[:, None]] = 0.0
    return top


def _reduce(values: np.ndarray, reduce: bool):
    return float(values.mean()) if reduce else values


__all__ = ["hit_at_k", "mrr", "ndcg_at_k", "ranked_relevance", "recall_at_k"]
