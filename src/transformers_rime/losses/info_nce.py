"""InfoNCE: the contrastive loss RIME trains each embedding space (and each cross-mode pair) with."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import gather_with_grad


def info_nce(
    query: torch.Tensor,
    document: torch.Tensor,
    temperature: float = 0.02,
    symmetric: bool = True,
    hard_negatives: torch.Tensor | None = None,
    gather_across_processes: bool = False,
) -> torch.Tensor:
    r"""Contrastive loss of queries against their positive documents, with in-batch and hard negatives.

    Every query scores against every candidate of the batch: all positives, any extra documents and all hard
    negatives (pooled, as in VLM2Vec: a query's hard negatives are negatives for every other query too). With
    `symmetric=True` the document-to-query direction is added and the two are averaged; that direction scores each
    positive against the queries only.

    $$\mathcal{L}_{q \to d} = -\frac{1}{B} \sum_i \log \frac{\exp(q_i \cdot d_i / \tau)}{\sum_{c} \exp(q_i \cdot c / \tau)},
    \qquad \mathcal{L} = \tfrac{1}{2}\left(\mathcal{L}_{q \to d} + \mathcal{L}_{d \to q}\right)$$

    Embeddings are used as given (RIME's are already L2-normalised, so a dot product is a cosine). Scores are
    computed in float32.

    Args:
        query (`torch.Tensor` of shape `(B, D)`): query embeddings.
        document (`torch.Tensor` of shape `(N, D)`, `N >= B`): row `i < B` is the positive of query `i`; rows
            from `B` on are extra negatives shared by all queries.
        temperature (`float`, defaults to 0.02): softmax temperature tau (UME-R1's fixed logit scale 50).
        symmetric (`bool`, defaults to `True`): average with the document-to-query loss.
        hard_negatives (`torch.Tensor` of shape `(B, H, D)` or `(M, D)`, *optional*): hard negatives, pooled over
            the batch.
        gather_across_processes (`bool`, defaults to `False`): score against the candidates (and, for the symmetric
            term, the queries) of every process, with gradients; see [`gather_with_grad`].

    Returns:
        `torch.Tensor` of shape `()`: the mean loss over this process's queries (and positives).

    Example:

    ```python
    >>> import torch.nn.functional as F
    >>> q = F.normalize(torch.randn(4, 8), dim=-1)
    >>> d = F.normalize(q + 0.1 * torch.randn(4, 8), dim=-1)
    >>> loss = info_nce(q, d, temperature=0.05)
    >>> bool(loss < info_nce(q, d.roll(1, dims=0), temperature=0.05))  # matched pairs score lower
    True

    ```

    Reference: van den Oord et al., "Representation Learning with Contrastive Predictive Coding" (2018); the
    symmetric form follows CLIP (Radford et al., 2021).
    """
    if query.dim() != 2 or document.dim() != 2:
        raise ValueError(
            f"info_nce expects (B, D) queries and (N, D) documents, got {query.shape} and {document.shape}."
        )
    batch_size = query.shape[0]
    if document.shape[0] < batch_size:
        raise ValueError(f"info_nce: {batch_size} queries need at least as many documents, got {document.shape[0]}.")
    query, document = query.float(), document.float()
    positives, extra = document[:batch_size], document[batch_size:]
    if hard_negatives is not None:
        extra = torch.cat([extra, hard_negatives.reshape(-1, hard_negatives.shape[-1]).float()])

    gather = gather_with_grad if gather_across_processes else _local
    all_positives, offset = gather(positives)
    candidates = [all_positives]
    if extra.shape[0] > 0 or gather_across_processes:  # every process must join the same collectives
        candidates.append(gather(extra)[0])
    targets = torch.arange(batch_size, device=query.device) + offset
    loss = F.cross_entropy(query @ torch.cat(candidates).T / temperature, targets)
    if not symmetric:
        return loss
    all_queries, query_offset = gather(query)
    targets = torch.arange(batch_size, device=query.device) + query_offset
    return (loss + F.cross_entropy(positives @ all_queries.T / temperature, targets)) / 2


def _local(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    return tensor, 0


class InfoNCELoss(nn.Module):
    """[`info_nce`] as a module, for use in training loops that configure a loss once.

    Inputs: `query` `(B, D)`, `document` `(N >= B, D)` (row `i` the positive of query `i`), optional
    `hard_negatives` `(B, H, D)`.

    Example:

    ```python
    >>> loss_fn = InfoNCELoss(temperature=0.02)
    >>> loss = loss_fn(torch.eye(3), torch.eye(3))
    >>> round(float(loss), 6)
    0.0

    ```
    """

    def __init__(self, temperature: float = 0.02, symmetric: bool = True, gather_across_processes: bool = False):
        super().__init__()
        self.temperature = temperature
        self.symmetric = symmetric
        self.gather_across_processes = gather_across_processes

    def forward(
        self, query: torch.Tensor, document: torch.Tensor, hard_negatives: torch.Tensor | None = None
    ) -> torch.Tensor:
        return info_nce(
            query,
            document,
            temperature=self.temperature,
            symmetric=self.symmetric,
            hard_negatives=hard_negatives,
            gather_across_processes=self.gather_across_processes,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, symmetric={self.symmetric}"


__all__ = ["InfoNCELoss", "info_nce"]
