"""Embedding rewards of Refine-RL: how well a rollout's generative embedding retrieves its target.

Each function scores one rollout per row and returns `list[float]`, so it can be passed to TRL's `GRPOTrainer` as a
reward function as is: [`RimeRefineRLTrainer`] hands every reward function the keyword arguments below (one value
per rollout, like any dataset column), next to TRL's `prompts`, `completions` and `completion_ids`.

- `gen_embeddings`: the rollout's generative embedding, read at its `<gen_emb>` (`(N, D)` or N vectors `(D,)`).
- `anchor_embeddings`: the candidates' discriminative embeddings, the anchors (`(C, D)` shared by all rows, or one
  `(C_i, D)` matrix per row).
- `positive_index`: where the rollout's own target sits among its candidates.

Embeddings are expected L2-normalised (scores are dot products = cosine similarities).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _rows(embeddings) -> torch.Tensor:
    """`(N, D)` float32 from a matrix or a sequence of `(D,)` vectors."""
    if isinstance(embeddings, torch.Tensor):
        matrix = embeddings if embeddings.dim() == 2 else embeddings[None]
    else:
        matrix = torch.stack([torch.as_tensor(row) for row in embeddings])
    return matrix.float()


def candidate_scores(gen_embeddings, anchor_embeddings) -> list[torch.Tensor]:
    """Similarity of each row's embedding to each of its candidates: a list of N score vectors `(C_i,)`.

    Rows that share one anchor matrix (the usual case: TRL repeats a batch-level value per row) are scored with a
    single matrix product.

    ```python
    >>> candidate_scores(torch.eye(2), torch.eye(2))
    [tensor([1., 0.]), tensor([0., 1.])]

    ```
    """
    queries = _rows(gen_embeddings)
    if isinstance(anchor_embeddings, torch.Tensor):
        anchor_embeddings = [anchor_embeddings] * len(queries)
    if len(anchor_embeddings) != len(queries):
        raise ValueError(f"{len(queries)} embeddings but {len(anchor_embeddings)} anchor matrices.")
    groups: dict[int, tuple[torch.Tensor, list[int]]] = {}
    for row, anchors in enumerate(anchor_embeddings):
        groups.setdefault(id(anchors), (anchors, []))[1].append(row)
    scores: list[torch.Tensor | None] = [None] * len(queries)
    for anchors, rows in groups.values():
        anchors = _rows(anchors).to(queries.device)
        if anchors.shape[0] == 0:
            raise ValueError("A row has no candidates: the anchor matrix is empty.")
        block = queries[rows] @ anchors.T  # (n, C)
        for row, row_scores in zip(rows, block):
            scores[row] = row_scores
    return scores


def _positives(positive_index, scores: list[torch.Tensor]) -> list[int]:
    positives = [
        int(p) for p in (positive_index.tolist() if isinstance(positive_index, torch.Tensor) else positive_index)
    ]
    if len(positives) != len(scores):
        raise ValueError(f"{len(scores)} rows but {len(positives)} positive indices.")
    for row, (index, row_scores) in enumerate(zip(positives, scores)):
        if not 0 <= index < len(row_scores):
            raise ValueError(f"Row {row}: positive_index {index} is outside its {len(row_scores)} candidates.")
    return positives


def anchor_retrieval_reward(
    gen_embeddings, anchor_embeddings, positive_index: Sequence[int], temperature: float = 0.02, **kwargs
) -> list[float]:
    r"""Refine-RL's default reward: the softmax probability of the positive among the anchored candidates.

    $$r = \frac{\exp(g \cdot a^{+} / \tau)}{\sum_{c} \exp(g \cdot a_c / \tau)}$$

    where `g` is the rollout's generative embedding and `a_c` the discriminative embeddings of its candidates (the
    target `a+` and the negatives). In [0, 1]: 1 when the rollout singles out its target, `1/C` when all `C`
    candidates tie, 1 with a single candidate. Anchors are disc embeddings, which need no sampling, so the reward
    does not move with the sampling noise of other rollouts (unlike UME-R1's rollout-vs-rollout reward).

    Args:
        gen_embeddings (`torch.Tensor` of shape `(N, D)`, or N tensors `(D,)`): the rollouts' gen embeddings.
        anchor_embeddings (`torch.Tensor` of shape `(C, D)`, or N tensors `(C_i, D)`): candidate anchors.
        positive_index (sequence of `int`, length N): each row's target among its candidates.
        temperature (`float`, *optional*, defaults to 0.02): softmax temperature (stage 1's InfoNCE temperature).
        kwargs: ignored (TRL passes the batch's other columns).

    Returns:
        `list[float]`: one reward per rollout.

    ```python
    >>> g = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    >>> anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> [round(r, 4) for r in anchor_retrieval_reward(g, anchors, [0, 0], temperature=0.5)]
    [0.8808, 0.4013]

    ```
    """
    scores = candidate_scores(gen_embeddings, anchor_embeddings)
    positives = _positives(positive_index, scores)
    return [float(torch.softmax(s / temperature, dim=0)[p]) for s, p in zip(scores, positives)]


def margin_reward(gen_embeddings, anchor_embeddings, positive_index: Sequence[int], **kwargs) -> list[float]:
    r"""Score of the positive minus the score of the hardest negative: $r = g \cdot a^{+} - \max_{c \ne +} g \cdot a_c$.

    In [-2, 2] for unit vectors; above 0 when the positive ranks first. With a single candidate (no negative) the
    hardest negative counts as orthogonal (score 0), so the reward is the positive's similarity. Arguments as in
    [`anchor_retrieval_reward`].

    ```python
    >>> g = torch.tensor([[0.6, 0.8]])
    >>> [round(r, 4) for r in margin_reward(g, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), [0])]
    [-0.2]

    ```
    """
    scores = candidate_scores(gen_embeddings, anchor_embeddings)
    positives = _positives(positive_index, scores)
    rewards = []
    for row_scores, positive in zip(scores, positives):
        negatives = torch.cat([row_scores[:positive], row_scores[positive + 1 :]])
        hardest = float(negatives.max()) if len(negatives) else 0.0
        rewards.append(float(row_scores[positive]) - hardest)
    return rewards


def rank_reward(gen_embeddings, anchor_embeddings, positive_index: Sequence[int], **kwargs) -> list[float]:
    r"""Reciprocal rank of the positive among the candidates: $r = 1 / (1 + |\{c \ne + : g \cdot a_c \ge g \cdot a^{+}\}|)$.

    Ties count against the positive, so a rewrite that makes every candidate look alike earns `1/C`, not 1. Arguments
    as in [`anchor_retrieval_reward`].

    ```python
    >>> g = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    >>> rank_reward(g, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), [0, 0])
    [0.5, 1.0]

    ```
    """
    scores = candidate_scores(gen_embeddings, anchor_embeddings)
    positives = _positives(positive_index, scores)
    rewards = []
    for row_scores, positive in zip(scores, positives):
        at_least_as_good = int((row_scores >= row_scores[positive]).sum()) - 1  # the positive itself excluded
        rewards.append(1.0 / (1 + at_least_as_good))
    return rewards


def rollout_contrast_reward(gen_embeddings, partner_embeddings, partner_is_positive, **kwargs) -> list[float]:
    r"""UME-R1's reward, for comparison runs: a rollout is scored against the *rollouts* of the other side.

    For a query rollout `g` and all target-side rollouts `t_j` of the batch (`P` = the `k` rollouts of its own
    target), with `s_j = g \cdot t_j`:

    $$r = \frac{|\mathrm{Top}_k(s) \cap P|}{k} \cdot \Big(\operatorname{mean}_{j \in P} s_j - \operatorname{mean}_{j \notin P} s_j\Big)$$

    (the second mean is 0 when every partner rollout is a positive). The partners are sampled too, so this reward
    moves with their sampling noise: the instability Refine-RL's disc anchors remove. Ties in the top-k are broken
    by `torch.topk`.

    Args:
        gen_embeddings (`torch.Tensor` of shape `(N, D)`, or N tensors `(D,)`): the rollouts' gen embeddings.
        partner_embeddings (`torch.Tensor` of shape `(M, D)`, or N tensors `(M_i, D)`): other-side rollouts.
        partner_is_positive (`torch.BoolTensor` of shape `(M,)`, or N such masks): which partners are positives.
        kwargs: ignored.

    ```python
    >>> g = torch.tensor([[1.0, 0.0]])
    >>> partners = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    >>> [round(r, 4) for r in rollout_contrast_reward(g, partners, torch.tensor([True, False, True, False]))]
    [-0.1]

    ```
    """
    scores = candidate_scores(gen_embeddings, partner_embeddings)
    if isinstance(partner_is_positive, torch.Tensor) and partner_is_positive.dim() == 1:
        partner_is_positive = [partner_is_positive] * len(scores)
    rewards = []
    for row, (row_scores, positive) in enumerate(zip(scores, partner_is_positive)):
        positive = torch.as_tensor(positive, dtype=torch.bool, device=row_scores.device)
        k = int(positive.sum())
        if k == 0 or positive.shape != row_scores.shape:
            raise ValueError(
                f"Row {row}: partner_is_positive must mark at least one of its {len(row_scores)} partners."
            )
        top = torch.topk(row_scores, k).indices
        top_fraction = float(positive[top].float().mean())
        negative_mean = float(row_scores[~positive].mean()) if bool((~positive).any()) else 0.0
        rewards.append(top_fraction * (float(row_scores[positive].mean()) - negative_mean))
    return rewards


__all__ = [
    "anchor_retrieval_reward",
    "candidate_scores",
    "margin_reward",
    "rank_reward",
    "rollout_contrast_reward",
]
