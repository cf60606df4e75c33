"""RimeEncoder: input forms, bad inputs before model work, batching invariance, similarity and search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transformers_rime import RimeEncoder, SearchHit
from transformers_rime.inputs import is_image_path, parse_input
from transformers_rime.testing import random_image, tiny_rime_model, tiny_rime_processor


@pytest.fixture
def encoder(processor, model):
    return RimeEncoder(model, processor)


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "photo.PNG"
    random_image(50, 40, seed=9).save(path)
    return str(path)


def test_input_forms_are_recognised(image_path, image):
    frames = [random_image(seed=i) for i in range(3)]
    assert parse_input("a red car", 0).text == "a red car"
    assert parse_input(image_path, 0).images == [image_path]
    assert parse_input(image, 0).images == [image]
    assert parse_input(frames, 0).video == frames
    item = parse_input({"text": "q", "images": [image, image_path], "video": frames}, 0)
    assert (item.text, len(item.images), len(item.video), len(item.sizes)) == ("q", 2, 3, 5)
    assert is_image_path("x.TIFF") and not is_image_path("a photo.png of a cat")


@pytest.mark.parametrize(
    ("item", "error", "message"),
    [
        (3.5, TypeError, "input 1: unsupported input type float"),
        ({"txt": "x"}, ValueError, r"input 1: unknown key\(s\) \['txt'\]"),
        ({"text": 5}, TypeError, "input 1: 'text' must be a string"),
        ("", ValueError, "input 1: empty text"),
        ([], ValueError, "input 1: a video must be a non-empty list"),
        ({}, ValueError, "input 1: empty input dict"),
        ("/no/such/file.jpg", FileNotFoundError, "input 1: image file not found: /no/such/file.jpg"),
    ],
)
def test_bad_inputs_fail_before_any_model_work(encoder, item, error, message, monkeypatch):
    calls = []
    monkeypatch.setattr(encoder.model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(error, match=message):
        encoder.encode(["fine", item])
    assert calls == []


def test_corrupt_image_is_named_before_model_work(encoder, tmp_path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match=r"input 0: cannot read image file .*corrupt.jpg"):
        encoder.encode([str(path)])


def test_unknown_mode_role_and_output_type(encoder):
    with pytest.raises(ValueError, match="Unknown mode"):
        encoder.encode(["x"], mode="both")
    with pytest.raises(ValueError, match="Unknown role"):
        encoder.encode(["x"], role="doc")
    with pytest.raises(ValueError, match="Unknown convert_to"):
        encoder.encode(["x"], convert_to="list")


@pytest.mark.parametrize("method", ["encode", "generate"])
def test_several_rewrites_per_item_are_refused_with_a_pointer(encoder, method, monkeypatch):
    monkeypatch.setattr(encoder.model, "generate_embeddings", lambda *a, **k: pytest.fail("model work started"))
    kwargs = {"mode": "gen"} if method == "encode" else {}
    with pytest.raises(ValueError, match="one embedding per item.*num_return_sequences=k"):
        getattr(encoder, method)(["x", "y"], do_sample=True, num_return_sequences=3, **kwargs)


def test_mixed_inputs_encode_to_unit_vectors(encoder, image_path, image):
    items = ["a red car", image, image_path, [image, image], {"text": "what?", "image": image_path}]
    for mode in ("disc", "gen"):
        embeddings = encoder.encode(items, mode=mode, role="document", max_new_tokens=3)
        assert embeddings.shape == (5, encoder.embedding_dim) and embeddings.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_single_item_returns_a_vector_and_tensor_output(encoder):
    vector = encoder.encode("a red car")
    assert vector.shape == (encoder.embedding_dim,)
    tensor = encoder.encode(["a red car"], convert_to="tensor")
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_allclose(tensor[0].numpy(), vector, atol=1e-6)


@pytest.mark.parametrize("mode", ["disc", "gen"])
def test_embedding_does_not_depend_on_batch_neighbours(encoder, image, mode):
    items = ["a red car", {"text": "what is shown?", "image": image}, "cat " * 30, random_image(90, 30, seed=3)]
    batched = encoder.encode(items, mode=mode, batch_size=4, max_new_tokens=4)
    alone = np.stack([encoder.encode(item, mode=mode, max_new_tokens=4) for item in items])
    shuffled = encoder.encode(items[::-1], mode=mode, batch_size=3, max_new_tokens=4)[::-1]
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    np.testing.assert_allclose(batched, shuffled, atol=1e-5)


def test_encode_queries_and_documents_use_their_roles(encoder):
    queries = encoder.encode_queries(["tea"])
    documents = encoder.encode_documents(["tea"])
    assert not np.allclose(queries, documents)
    np.testing.assert_allclose(queries, encoder.encode(["tea"], role="query"))


def test_similarity_is_cosine():
    a = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(RimeEncoder.similarity(a, a), [[1.0, 0.6], [0.6, 1.0]], atol=1e-6)
    assert isinstance(RimeEncoder.similarity(torch.tensor(a), a), torch.Tensor)


@pytest.mark.parametrize("query_mode", ["disc", "gen"])
@pytest.mark.parametrize("corpus_mode", ["disc", "gen"])
def test_search_supports_all_mode_pairs(encoder, query_mode, corpus_mode):
    corpus = ["a red car", "a black cat", "a cup of tea", random_image(seed=2)]
    hits = encoder.search(
        ["a red car", "tea"], corpus, top_k=3, query_mode=query_mode, corpus_mode=corpus_mode, max_new_tokens=3
    )
    assert len(hits) == 2 and all(len(row) == 3 for row in hits)
    queries = encoder.encode_queries(["a red car", "tea"], mode=query_mode, max_new_tokens=3)
    documents = encoder.encode_documents(corpus, mode=corpus_mode, max_new_tokens=3)
    scores = queries @ documents.T
    for row, row_hits in enumerate(hits):
        assert all(isinstance(hit, SearchHit) for hit in row_hits)
        assert [hit.corpus_id for hit in row_hits] == list(np.argsort(-scores[row])[:3])
        np.testing.assert_allclose([hit.score for hit in row_hits], np.sort(scores[row])[::-1][:3], atol=1e-5)


def test_search_with_a_precomputed_index(encoder):
    corpus = ["a red car", "a black cat"]
    index = encoder.encode_documents(corpus)
    assert encoder.search(["cat"], corpus_embeddings=index, top_k=5) == encoder.search(["cat"], corpus, top_k=5)
    with pytest.raises(ValueError, match="corpus"):
        encoder.search(["cat"])


def test_encoder_applies_the_config_prompts_to_the_processor():
    processor = tiny_rime_processor()
    model = tiny_rime_model(processor=processor, query_instruction="Custom query prefix:")
    encoder = RimeEncoder(model, processor)
    assert encoder.processor.query_instruction == "Custom query prefix:"


def test_encoder_rejects_a_processor_with_other_token_ids():
    processor = tiny_rime_processor()
    model = tiny_rime_model(processor=processor)
    model.config.disc_emb_token_id += 1
    with pytest.raises(ValueError, match="disagree"):
        RimeEncoder(model, processor)


def test_progress_bar_on_long_work(encoder, capsys):
    encoder.encode(["a", "b", "c"], batch_size=1, show_progress_bar=True)
    assert "Encoding (disc, query)" in capsys.readouterr().err


def test_generate_returns_rewrites_and_both_embeddings(encoder, image):
    items = ["a red car", {"text": "what is shown?", "image": image}]
    generations = encoder.generate(items, max_new_tokens=3)
    assert [g.num_new_tokens for g in generations] == [3, 3] and not any(g.finished for g in generations)
    assert all(isinstance(g.text, str) and "<gen_emb>" not in g.text for g in generations)
    np.testing.assert_allclose(
        np.stack([g.embedding for g in generations]), encoder.encode(items, mode="gen", max_new_tokens=3), atol=1e-6
    )
    np.testing.assert_allclose(np.stack([g.disc_embedding for g in generations]), encoder.encode(items), atol=1e-5)


def test_empty_list_gives_an_empty_array(encoder):
    assert encoder.encode([]).shape == (0, encoder.embedding_dim)
    assert encoder.search([], ["a"], top_k=3) == []
