"""Loss math against values computed by hand (python floats, no torch), plus gradient flow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from transformers_rime.losses import (
    CrossModeAlignmentLoss,
    InfoNCELoss,
    ModeEmbeddings,
    cross_mode_alignment,
    info_nce,
    rime_contrastive_loss,
    same_input_alignment,
)


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _cross_entropy(scores: list[float], target: int) -> float:
    return -scores[target] + math.log(sum(math.exp(s) for s in scores))


def _hand_info_nce(queries, documents, tau, symmetric=True, negatives=()):
    """InfoNCE written out: each query against all documents then negatives; documents against queries."""
    batch = len(queries)
    candidates = list(documents) + list(negatives)
    forward = sum(_cross_entropy([_dot(q, c) / tau for c in candidates], i) for i, q in enumerate(queries)) / batch
    if not symmetric:
        return forward
    backward = sum(_cross_entropy([_dot(d, q) / tau for q in queries], i) for i, d in enumerate(documents[:batch]))
    return (forward + backward / batch) / 2


Q = [[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]]
D = [[0.8, 0.6, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
NEG = [[[0.0, 0.8, 0.6]], [[1.0, 0.0, 0.0]], [[0.6, 0.0, 0.8]]]  # (B=3, H=1, D=3)


@pytest.mark.parametrize("symmetric", [True, False])
def test_info_nce_equals_hand_computation(symmetric):
    loss = info_nce(torch.tensor(Q), torch.tensor(D), temperature=0.5, symmetric=symmetric)
    assert float(loss) == pytest.approx(_hand_info_nce(Q, D, 0.5, symmetric), rel=1e-6)


def test_info_nce_hard_negatives_are_pooled_over_the_batch():
    negatives = [n for per_query in NEG for n in per_query]
    expected = _hand_info_nce(Q, D, 0.1, negatives=negatives)
    loss = info_nce(torch.tensor(Q), torch.tensor(D), temperature=0.1, hard_negatives=torch.tensor(NEG))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # (M, D) is accepted too, and a query's own hard negative counts for every other query
    flat = info_nce(torch.tensor(Q), torch.tensor(D), temperature=0.1, hard_negatives=torch.tensor(negatives))
    assert float(flat) == pytest.approx(expected, rel=1e-6)
    only_own = _hand_info_nce(Q, D, 0.1, negatives=NEG[0])
    assert expected != pytest.approx(only_own)


def test_info_nce_targets_stay_on_the_diagonal_when_documents_outnumber_queries():
    queries, documents = Q[:2], D  # 2 queries, 3 documents: row 2 is an extra negative
    loss = info_nce(torch.tensor(queries), torch.tensor(documents), temperature=0.2)
    assert float(loss) == pytest.approx(_hand_info_nce(queries, documents, 0.2), rel=1e-6)
    # a perfect match stays (near) zero loss with extra documents: targets are 0..B-1, not scaled
    eye = torch.eye(4)
    assert float(info_nce(eye[:2], eye, temperature=0.01)) < 1e-6


def test_info_nce_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least as many documents"):
        info_nce(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        info_nce(torch.randn(3, 1, 4), torch.randn(3, 4))


def test_info_nce_module_matches_function():
    q, d, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 2, 8)
    module = InfoNCELoss(temperature=0.3, symmetric=False)
    torch.testing.assert_close(module(q, d, n), info_nce(q, d, 0.3, symmetric=False, hard_negatives=n))
    assert "temperature=0.3" in repr(module)


def test_cross_mode_alignment_is_the_mean_of_the_two_cross_mode_nce_terms():
    qd, qg, dd, dg = (torch.tensor(x) for x in (Q, D, D, Q))
    expected = (_hand_info_nce(D, D, 0.5) + _hand_info_nce(Q, Q, 0.5)) / 2  # NCE(g(q), d(t)), NCE(d(q), g(t))
    assert float(cross_mode_alignment(qd, qg, dd, dg, temperature=0.5)) == pytest.approx(expected, rel=1e-6)


def test_cross_mode_alignment_gradient_reaches_both_modes_of_both_sides():
    tensors = [F.normalize(torch.randn(4, 8), dim=-1).requires_grad_() for _ in range(4)]
    cross_mode_alignment(*tensors).backward()
    for name, tensor in zip(("query_disc", "query_gen", "doc_disc", "doc_gen"), tensors):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, name


def test_cross_mode_alignment_hard_negatives_join_in_the_document_mode():
    qd, qg, dd, dg = (F.normalize(torch.randn(3, 8), dim=-1) for _ in range(4))
    nd, ng = F.normalize(torch.randn(3, 2, 8), dim=-1), F.normalize(torch.randn(3, 2, 8), dim=-1)
    loss = cross_mode_alignment(qd, qg, dd, dg, hard_negatives_disc=nd, hard_negatives_gen=ng)
    expected = (info_nce(qg, dd, hard_negatives=nd) + info_nce(qd, dg, hard_negatives=ng)) / 2
    torch.testing.assert_close(loss, expected)


def test_same_input_term_is_added_with_its_weight():
    qd, qg, dd, dg = (F.normalize(torch.randn(3, 8), dim=-1) for _ in range(4))
    base = cross_mode_alignment(qd, qg, dd, dg)
    with_term = CrossModeAlignmentLoss(same_input_weight=0.5)(qd, qg, dd, dg)
    align_q = sum(1 - _dot(a, b) for a, b in zip(qd.tolist(), qg.tolist())) / 3
    align_d = sum(1 - _dot(a, b) for a, b in zip(dd.tolist(), dg.tolist())) / 3
    assert float(with_term - base) == pytest.approx(0.5 * (align_q + align_d) / 2, rel=1e-5)
    assert float(same_input_alignment(qd, qd)) == pytest.approx(0.0, abs=1e-6)


def _groups(batch=3, dim=8, negatives=0):
    def make(n):
        return ModeEmbeddings(F.normalize(torch.randn(n, dim), dim=-1), F.normalize(torch.randn(n, dim), dim=-1))

    return make(batch), make(batch), make(negatives) if negatives else None


def test_rime_contrastive_loss_is_the_weighted_sum_of_its_terms():
    query, positive, negative = _groups(negatives=2)
    lm = torch.tensor(3.0)
    loss, terms = rime_contrastive_loss(
        query, positive, negative, lm_loss=lm, lm_weight=0.5, disc_weight=2.0, gen_weight=0.25, cma_weight=1.5
    )
    assert set(terms) == {"lm", "disc_nce", "gen_nce", "cma"}
    torch.testing.assert_close(terms["disc_nce"], info_nce(query.disc, positive.disc, hard_negatives=negative.disc))
    torch.testing.assert_close(terms["gen_nce"], info_nce(query.gen, positive.gen, hard_negatives=negative.gen))
    expected = 0.5 * 3.0 + 2.0 * terms["disc_nce"] + 0.25 * terms["gen_nce"] + 1.5 * terms["cma"]
    torch.testing.assert_close(loss, expected)


def test_zero_weights_switch_terms_off_and_need_no_gen_embeddings():
    query, positive, _ = _groups()
    disc_only = ModeEmbeddings(query.disc), ModeEmbeddings(positive.disc)
    loss, terms = rime_contrastive_loss(*disc_only, lm_weight=0, gen_weight=0, cma_weight=0)
    assert list(terms) == ["disc_nce"]
    torch.testing.assert_close(loss, info_nce(query.disc, positive.disc))
    with pytest.raises(ValueError, match="generative embeddings"):
        rime_contrastive_loss(*disc_only, lm_weight=0)
    with pytest.raises(ValueError, match="no lm_loss"):
        rime_contrastive_loss(query, positive)
    with pytest.raises(ValueError, match="Every loss weight is 0"):
        rime_contrastive_loss(query, positive, lm_weight=0, disc_weight=0, gen_weight=0, cma_weight=0)
