"""The stage-1 objective of RIME: rewrite LM loss + InfoNCE in each mode + Cross-Mode Alignment."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cross_mode_alignment import cross_mode_alignment
from .info_nce import info_nce


@dataclass
class ModeEmbeddings:
    """An item group's embeddings in both modes: `disc` `(n, D)`, `gen` `(n, D)` or `None` (no rewrite given)."""

    disc: torch.Tensor
    gen: torch.Tensor | None = None


def rime_contrastive_loss(
    query: ModeEmbeddings,
    positive: ModeEmbeddings,
    negative: ModeEmbeddings | None = None,
    lm_loss: torch.Tensor | None = None,
    lm_weight: float = 1.0,
    disc_weight: float = 1.0,
    gen_weight: float = 1.0,
    cma_weight: float = 1.0,
    same_input_weight: float = 0.0,
    temperature: float = 0.02,
    symmetric: bool = True,
    gather_across_processes: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""RIME's stage-1 loss and its terms.

    $$\mathcal{L} = \lambda_{lm} \mathcal{L}_{LM} + \lambda_d \mathrm{NCE}(d(q), d(t)) + \lambda_g \mathrm{NCE}(g(q), g(t))
    + \lambda_{cma} \mathcal{L}_{CMA}$$

    A term whose weight is 0 is not computed (this is how ablations switch terms off). Hard negatives join every NCE
    in the document side's mode; negatives without gen embeddings only join the disc-side terms.

    Args:
        query, positive ([`ModeEmbeddings`]): `(B, D)` embeddings; `gen` is needed when `gen_weight` or
            `cma_weight` is non-zero.
        negative ([`ModeEmbeddings`], *optional*): hard negatives `(M, D)`, pooled over the batch.
        lm_loss (`torch.Tensor` of shape `()`, *optional*): the rewrite LM loss, already reduced; required when
            `lm_weight` is non-zero.
        lm_weight, disc_weight, gen_weight, cma_weight (`float`): the lambdas above.
        same_input_weight (`float`, defaults to 0.0): weight of CMA's optional same-input term.
        temperature, symmetric, gather_across_processes: as in [`info_nce`].

    Returns:
        `(loss, terms)`: the weighted sum and a dict of the unweighted terms that were computed (`"lm"`,
        `"disc_nce"`, `"gen_nce"`, `"cma"`), for logging.

    Example:

    ```python
    >>> e = torch.eye(4)
    >>> loss, terms = rime_contrastive_loss(ModeEmbeddings(e, e), ModeEmbeddings(e, e), lm_loss=torch.tensor(2.0))
    >>> sorted(terms), round(float(loss), 4)
    (['cma', 'disc_nce', 'gen_nce', 'lm'], 2.0)

    ```
    """
    nce = {"temperature": temperature, "symmetric": symmetric, "gather_across_processes": gather_across_processes}
    needs_gen = gen_weight != 0 or cma_weight != 0
    if needs_gen and (query.gen is None or positive.gen is None):
        raise ValueError("gen_weight / cma_weight need generative embeddings of queries and positives (rewrites).")
    negative_disc = negative.disc if negative is not None else None
    negative_gen = negative.gen if negative is not None else None
    terms: dict[str, torch.Tensor] = {}
    if lm_weight != 0:
        if lm_loss is None:
            raise ValueError("lm_weight is non-zero but no lm_loss was given.")
        terms["lm"] = lm_loss
    if disc_weight != 0:
        terms["disc_nce"] = info_nce(query.disc, positive.disc, hard_negatives=negative_disc, **nce)
    if gen_weight != 0:
        terms["gen_nce"] = info_nce(query.gen, positive.gen, hard_negatives=negative_gen, **nce)
    if cma_weight != 0:
        terms["cma"] = cross_mode_alignment(
            query.disc,
            query.gen,
            positive.disc,
            positive.gen,
            hard_negatives_disc=negative_disc,
            hard_negatives_gen=negative_gen,
            same_input_weight=same_input_weight,
            **nce,
        )
    weights = {"lm": lm_weight, "disc_nce": disc_weight, "gen_nce": gen_weight, "cma": cma_weight}
    if not terms:
        raise ValueError("Every loss weight is 0: nothing to train.")
    loss = sum(weights[name] * value for name, value in terms.items())
    return loss, terms


__all__ = ["ModeEmbeddings", "rime_contrastive_loss"]
