"""Exact and FAISS search return the same neighbours; RimeEncoder.search runs on either."""

import numpy as np
import pytest
import torch

from transformers_rime import RimeEncoder
from transformers_rime.index import ExactIndex, build_index


def unit_rows(rows: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def test_exact_search_is_the_sorted_similarity_matrix():
    corpus, queries = unit_rows(50), unit_rows(7, seed=1)
    scores, ids = ExactIndex(corpus, query_block=3).search(queries, k=5)  # several query blocks
    full = queries @ corpus.T
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1)[:, :5])
    np.testing.assert_allclose(scores, np.take_along_axis(full, ids, axis=1), rtol=1e-6)


def test_faiss_returns_the_same_top_k_as_exact_search():
    pytest.importorskip("faiss", reason="the eval extra (installed by dev)")
    corpus, queries = unit_rows(500, seed=2), unit_rows(40, seed=3)
    exact_scores, exact_ids = build_index(corpus).search(queries, k=10)
    faiss_scores, faiss_ids = build_index(corpus, backend="faiss").search(queries, k=10)
    np.testing.assert_array_equal(faiss_ids, exact_ids)
    np.testing.assert_allclose(faiss_scores, exact_scores, atol=1e-5)


def test_ties_come_back_in_corpus_order_and_k_is_capped_by_the_corpus():
    corpus = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    scores, ids = build_index(torch.from_numpy(corpus)).search(np.array([[1.0, 0.0]], dtype=np.float32), k=10)
    assert ids.tolist() == [[0, 2, 1]] and scores.shape == (1, 3)


def test_index_errors():
    with pytest.raises(ValueError, match="Unknown index backend"):
        build_index(unit_rows(3), backend="annoy")
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        build_index(np.ones(3))
    with pytest.raises(ValueError, match="k must be"):
        build_index(unit_rows(3)).search(unit_rows(1), k=0)


def test_encoder_search_gives_the_same_hits_on_both_backends(tiny_encoder):
    pytest.importorskip("faiss", reason="the eval extra (installed by dev)")
    corpus = ["a red car", "a black cat", "a chart of revenue", "a kitchen"]
    exact = tiny_encoder.search(["red automobile", "kitten"], corpus, top_k=3, show_progress_bar=False)
    with_faiss = tiny_encoder.search(
        ["red automobile", "kitten"], corpus, top_k=3, show_progress_bar=False, index="faiss"
    )
    assert [[h.corpus_id for h in row] for row in exact] == [[h.corpus_id for h in row] for row in with_faiss]
    assert len(exact[0]) == 3


@pytest.fixture(scope="module")
def tiny_encoder():
    from transformers_rime.testing import tiny_rime_model, tiny_rime_processor

    processor = tiny_rime_processor()
    return RimeEncoder(tiny_rime_model(processor=processor), processor)
