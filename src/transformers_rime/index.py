"""Nearest-neighbour search over embeddings: exact (torch) or FAISS (the `eval` extra), with one interface.

Embeddings are L2-normalised, so the inner product is the cosine similarity.

```python
>>> import numpy as np
>>> index = build_index(np.eye(3, dtype=np.float32))
>>> scores, ids = index.search(np.array([[0.0, 0.8, 0.6]], dtype=np.float32), k=2)
>>> ids.tolist(), [round(float(s), 2) for s in scores[0]]
([[1, 2]], [0.8, 0.6])

```
"""

from __future__ import annotations

import numpy as np
import torch


INDEX_BACKENDS = ("exact", "faiss")


class ExactIndex:
    """Exact inner-product search: one matrix product per block of queries, then a stable sort (equal scores come
    back in corpus order)."""

    def __init__(self, embeddings, device: str | torch.device | None = None, query_block: int = 1024):
        self.embeddings = torch.as_tensor(_float32(embeddings), device=device)
        self.query_block = query_block

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top `k` corpus entries per query: `(scores, ids)`, both `(Q, min(k, len(index)))`, best first."""
        queries = torch.as_tensor(_float32(queries), device=self.embeddings.device)
        k = _check_k(k, len(self))
        all_scores, all_ids = [], []
        for start in range(0, queries.shape[0], self.query_block):
            scores = queries[start : start + self.query_block] @ self.embeddings.T
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
            all_scores.append(torch.gather(scores, 1, order).cpu())
            all_ids.append(order.cpu())
        if not all_ids:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return torch.cat(all_scores).numpy(), torch.cat(all_ids).numpy()


class FaissIndex:
    """Exact inner-product search with FAISS (`IndexFlatIP`): the same results as [`ExactIndex`], faster on large
    corpora. Needs `pip install "transformers_rime[eval]"`."""

    def __init__(self, embeddings):
        try:
            import faiss
        except ImportError as error:
            raise ImportError('FaissIndex needs faiss: pip install "transformers_rime[eval]" (faiss-cpu).') from error
        embeddings = _float32(embeddings)
        self.index = faiss.IndexFlatIP(embeddings.shape[1])
        self.index.add(embeddings)

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top `k` corpus entries per query: `(scores, ids)`, both `(Q, min(k, len(index)))`, best first."""
        k = _check_k(k, len(self))
        scores, ids = self.index.search(_float32(queries), k)
        return scores, ids.astype(np.int64)


def build_index(embeddings, backend: str = "exact", **kwargs) -> ExactIndex | FaissIndex:
    """An index over `embeddings` (`(N, D)`): `backend="exact"` (torch) or `"faiss"`."""
    if backend == "exact":
        return ExactIndex(embeddings, **kwargs)
    if backend == "faiss":
        return FaissIndex(embeddings, **kwargs)
    raise ValueError(f"Unknown index backend {backend!r}; choose one of {INDEX_BACKENDS}.")


def _float32(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"Expected a (N, D) matrix of embeddings, got shape {values.shape}.")
    return values


def _check_k(k: int, size: int) -> int:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if size == 0:
        raise ValueError("The index is empty.")
    return min(k, size)


__all__ = ["INDEX_BACKENDS", "ExactIndex", "FaissIndex", "build_index"]
