"""Cross-Mode Alignment (CMA): one embedding space for RIME's discriminative and generative modes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .info_nce import info_nce


def cross_mode_alignment(
    query_disc: torch.Tensor,
    query_gen: torch.Tensor,
    doc_disc: torch.Tensor,
    doc_gen: torch.Tensor,
    temperature: float = 0.02,
    symmetric: bool = True,
    hard_negatives_disc: torch.Tensor | None = None,
    hard_negatives_gen: torch.Tensor | None = None,
    same_input_weight: float = 0.0,
    gather_across_processes: bool = False,
) -> torch.Tensor:
    r"""Contrastive loss across modes, so a query in one mode retrieves documents embedded in the other.

    $$\mathcal{L}_{CMA} = \tfrac{1}{2}\left[\mathrm{NCE}(g(q), d(t)) + \mathrm{NCE}(d(q), g(t))\right]
    \;+\; w \cdot \tfrac{1}{2}\left[\mathrm{align}(q) + \mathrm{align}(t)\right]$$

    where `d(.)` / `g(.)` are the discriminative / generative embeddings, NCE is [`info_nce`] and the optional
    same-input term `align(x) = mean(1 - cos(g(x), d(x)))` (weight `w`, off by default) pulls an item's two
    embeddings together directly. Hard negatives join each NCE in the document side's mode.

    Args:
        query_disc, query_gen (`torch.Tensor` of shape `(B, D)`): the queries' disc / gen embeddings.
        doc_disc, doc_gen (`torch.Tensor` of shape `(N >= B, D)`): the documents' disc / gen embeddings; row `i` is
            the positive of query `i`.
        temperature (`float`, defaults to 0.02): softmax temperature.
        symmetric (`bool`, defaults to `True`): symmetric NCE terms (see [`info_nce`]).
        hard_negatives_disc, hard_negatives_gen (`torch.Tensor` of shape `(B, H, D)` or `(M, D)`, *optional*):
            hard negatives embedded in disc / gen mode; used by `NCE(g(q), d(t))` / `NCE(d(q), g(t))`.
        same_input_weight (`float`, defaults to 0.0): weight of the same-input alignment term.
        gather_across_processes (`bool`, defaults to `False`): negatives from every process (see [`info_nce`]).

    Returns:
        `torch.Tensor` of shape `()`.

    Example:

    ```python
    >>> import torch.nn.functional as F
    >>> disc = F.normalize(torch.randn(4, 8), dim=-1)
    >>> aligned = cross_mode_alignment(disc, disc, disc, disc, temperature=0.05)
    >>> shuffled = cross_mode_alignment(disc, disc.roll(1, dims=0), disc, disc.roll(1, dims=0), temperature=0.05)
    >>> bool(aligned < shuffled)  # gen embeddings that agree with the disc ones cost less
    True

    ```

    Reference: RIME, "Beyond Chain-of-Thought: Rewrite as a Universal Interface for Generative Multimodal
    Embeddings" (arXiv 2604.22280). The paper's formula could not be read; this is the reconstruction documented in
    the project's design notes.
    """
    shared = {"temperature": temperature, "symmetric": symmetric, "gather_across_processes": gather_across_processes}
    loss = (
        info_nce(query_gen, doc_disc, hard_negatives=hard_negatives_disc, **shared)
        + info_nce(query_disc, doc_gen, hard_negatives=hard_negatives_gen, **shared)
    ) / 2
    if same_input_weight:
        alignment = (same_input_alignment(query_disc, query_gen) + same_input_alignment(doc_disc, doc_gen)) / 2
        loss = loss + same_input_weight * alignment
    return loss


def same_input_alignment(disc: torch.Tensor, gen: torch.Tensor) -> torch.Tensor:
    """Mean of `1 - cos(disc_i, gen_i)`: 0 when each item's two embeddings point the same way.

    ```python
    >>> round(float(same_input_alignment(torch.eye(2), -torch.eye(2))), 6)
    2.0

    ```
    """
    return (1 - F.cosine_similarity(disc.float(), gen.float(), dim=-1)).mean()


class CrossModeAlignmentLoss(nn.Module):
    """[`cross_mode_alignment`] as a module.

    Inputs: `query_disc`, `query_gen` `(B, D)`; `doc_disc`, `doc_gen` `(N >= B, D)`; optional
    `hard_negatives_disc`, `hard_negatives_gen`.

    Example:

    ```python
    >>> loss_fn = CrossModeAlignmentLoss(temperature=0.02)
    >>> round(float(loss_fn(torch.eye(3), torch.eye(3), torch.eye(3), torch.eye(3))), 6)
    0.0

    ```
    """

    def __init__(
        self,
        temperature: float = 0.02,
        symmetric: bool = True,
        same_input_weight: float = 0.0,
        gather_across_processes: bool = False,
    ):
        super().__init__()
        self.temperature = temperature
        self.symmetric = symmetric
        self.same_input_weight = same_input_weight
        self.gather_across_processes = gather_across_processes

    def forward(
        self,
        query_disc: torch.Tensor,
        query_gen: torch.Tensor,
        doc_disc: torch.Tensor,
        doc_gen: torch.Tensor,
        hard_negatives_disc: torch.Tensor | None = None,
        hard_negatives_gen: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return cross_mode_alignment(
            query_disc,
            query_gen,
            doc_disc,
            doc_gen,
            temperature=self.temperature,
            symmetric=self.symmetric,
            hard_negatives_disc=hard_negatives_disc,
            hard_negatives_gen=hard_negatives_gen,
            same_input_weight=self.same_input_weight,
            gather_across_processes=self.gather_across_processes,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, same_input_weight={self.same_input_weight}"


__all__ = ["CrossModeAlignmentLoss", "cross_mode_alignment", "same_input_alignment"]
