"""Ranking metrics against hand-computed values: ties, graded relevance, local pools, k past the pool."""

import math

import numpy as np
import pytest
import torch

from transformers_rime.evaluation.metrics import hit_at_k, mrr, ndcg_at_k, ranked_relevance, recall_at_k


NEG_INF = -float("inf")


def test_hand_computed_values_on_binary_relevance():
    scores = [[0.9, 0.1, 0.5, 0.3], [0.2, 0.4, 0.6, 0.8]]
    relevance = [[0, 1, 1, 0], [1, 0, 0, 0]]
    # query 0 ranks: c0 (0), c2 (1), c3 (0), c1 (1); query 1 ranks c3, c2, c1, c0 -> its positive last
    assert hit_at_k(scores, relevance, k=1) == 0.0
    assert hit_at_k(scores, relevance, k=2) == 0.5
    assert recall_at_k(scores, relevance, k=2) == pytest.approx((1 / 2 + 0) / 2)
    assert recall_at_k(scores, relevance, k=4) == 1.0
    assert mrr(scores, relevance) == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert mrr(scores, relevance, k=3) == pytest.approx((1 / 2 + 0) / 2)
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(scores, relevance, k=4, reduce=False)[0] == pytest.approx(expected)
    np.testing.assert_allclose(hit_at_k(scores, relevance, k=2, reduce=False), [1.0, 0.0])


def test_graded_relevance_uses_linear_gain():
    scores = [[0.4, 0.9, 0.7, 0.1]]
    relevance = [[3, 0, 1, 2]]  # ranked grades: 0, 1, 3, 2
    dcg = 0 + 1 / math.log2(3) + 3 / math.log2(4)
    idcg = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(scores, relevance, k=3) == pytest.approx(dcg / idcg)
    assert ndcg_at_k([[3.0, 0.0, 1.0, 2.0]], relevance, k=4) == pytest.approx(1.0)  # scores in the ideal order


def test_ties_count_against_the_query():
    # the positive ties with two negatives at the top: it ranks third
    scores = [[0.5, 0.5, 0.5, 0.1]]
    relevance = [[0, 1, 0, 0]]
    assert hit_at_k(scores, relevance, k=2) == 0.0
    assert hit_at_k(scores, relevance, k=3) == 1.0
    assert mrr(scores, relevance) == pytest.approx(1 / 3)
    # graded ties: the lower grade ranks first
    assert ranked_relevance([[1.0, 1.0, 1.0]], [[2, 0, 1]])[0].tolist() == [[0.0, 1.0, 2.0]]
    # a constant model gets nothing from ties
    assert hit_at_k(np.zeros((3, 5)), np.eye(3, 5), k=4) == 0.0


def test_local_pools_and_k_larger_than_the_pool():
    # query 0 sees candidates 0-1, query 1 sees 1-3 (the others are -inf)
    scores = [[0.2, 0.7, NEG_INF, NEG_INF], [NEG_INF, 0.1, 0.3, 0.2]]
    relevance = [[1, 0, 0, 0], [0, 1, 0, 0]]
    assert ranked_relevance(scores, relevance)[1].tolist() == [2, 3]
    assert hit_at_k(scores, relevance, k=10) == 1.0
    assert recall_at_k(scores, relevance, k=100) == 1.0
    assert mrr(scores, relevance) == pytest.approx((1 / 2 + 1 / 3) / 2)
    # k past the pool: the missing ranks gain nothing, the ideal is the pool's
    assert ndcg_at_k(scores, relevance, k=10, reduce=False).tolist() == pytest.approx(
        [1 / math.log2(3), 1 / math.log2(4)]
    )


def test_metrics_do_not_depend_on_candidate_order():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((20, 30)), 1)  # coarse scores: many ties
    relevance = rng.integers(0, 3, size=(20, 30)) * (rng.random((20, 30)) < 0.2)
    relevance[:, 0] = np.maximum(relevance[:, 0], 1)
    permutation = rng.permutation(30)
    for metric, k in ((hit_at_k, 1), (recall_at_k, 5), (mrr, None), (ndcg_at_k, 5)):
        kwargs = {} if k is None else {"k": k}
        assert metric(scores, relevance, **kwargs) == pytest.approx(
            metric(scores[:, permutation], relevance[:, permutation], **kwargs)
        )


def test_torch_inputs_and_errors():
    assert hit_at_k(torch.tensor([[0.1, 0.9]]), torch.tensor([[False, True]])) == 1.0
    with pytest.raises(ValueError, match="no relevant candidate"):
        hit_at_k([[0.1, 0.9]], [[0, 0]])
    with pytest.raises(ValueError, match="outside its pool"):
        hit_at_k([[NEG_INF, 0.9]], [[1, 1]])
    with pytest.raises(ValueError, match="queries, candidates"):
        hit_at_k([0.1, 0.9], [0, 1])
    with pytest.raises(ValueError, match="k must be"):
        hit_at_k([[0.1, 0.9]], [[0, 1]], k=0)
    with pytest.raises(ValueError, match="NaN"):
        hit_at_k([[float("nan"), 0.9]], [[0, 1]])
