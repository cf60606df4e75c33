"""RimeEncoder: input forms, bad inputs before model work, batching invariance, similarity and search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transformers_rime import RimeEncoder, SearchHit
from transformers_rime.inputs import is_image_path, parse_input
from transformers_rime.testing import ForcedTokens, random_image, tiny_rime_model, tiny_rime_processor


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


def test_encode_with_rewrites_reproduces_gen_mode_from_the_generated_tokens(encoder, image):
    items = ["a red car", {"text": "what is shown?", "image": image}, "cat " * 30, "tea"]
    gen_id = encoder.processor.gen_emb_token_id
    width = encoder.processor(text=items[:1], mode="gen", role="query", return_tensors="pt")["input_ids"].shape[1]
    # alone in its batch, the first item is made to end its rewrite after two tokens; the others hit the budget
    finish = ForcedTokens(width, [40, 30, gen_id])
    generations = [encoder.generate(items[0], max_new_tokens=5, logits_processor=[finish])]
    generations += encoder.generate(items[1:], max_new_tokens=5, batch_size=2)
    assert [g.finished for g in generations] == [True, False, False, False]
    assert [len(g.token_ids) for g in generations] == [g.num_new_tokens - g.finished for g in generations]
    assert generations[0].token_ids == (40, 30)
    forced = encoder.encode_with_rewrites(items, [g.token_ids for g in generations], batch_size=3)
    assert forced.shape == (4, encoder.embedding_dim) and forced.dtype == np.float32
    np.testing.assert_allclose(forced, np.stack([g.embedding for g in generations]), atol=1e-5)
    np.testing.assert_allclose(forced[1:], encoder.encode(items[1:], mode="gen", max_new_tokens=5), atol=1e-5)
    as_tensors = [torch.tensor(g.token_ids) for g in generations]
    tensor = encoder.encode_with_rewrites(items, as_tensors, batch_size=1, convert_to="tensor")
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_allclose(tensor.numpy(), forced, atol=1e-5)  # batches do not change an embedding


def test_a_text_rewrite_is_tagged_and_tokenized_as_in_training(encoder):
    from transformers_rime.teacher_forcing import rewrite_target_ids

    items = ["a red car", "a black cat"]
    target = rewrite_target_ids(encoder.processor, "a noisy picture")  # ends with <gen_emb>
    width = encoder.processor(text=items, mode="gen", role="query", return_tensors="pt")["input_ids"].shape[1]
    force = ForcedTokens(width, target)
    generations = encoder.generate(items, max_new_tokens=len(target), logits_processor=[force])
    assert all(g.finished and g.text == "<rewrite>a noisy picture</rewrite>" for g in generations)
    expected = np.stack([g.embedding for g in generations])
    for rewrites in (["a noisy picture"] * 2, [g.text for g in generations], [g.token_ids for g in generations]):
        np.testing.assert_allclose(encoder.encode_with_rewrites(items, rewrites), expected, atol=1e-5)


def test_a_removed_rewrite_reads_gen_emb_right_after_the_prompt(encoder, model):
    items = ["a red car", "a black cat", "tea"]
    removed = encoder.encode_with_rewrites(items, [None, "", []])
    prompt = encoder.processor(text=["a red car"], mode="gen", role="query", return_tensors="pt")
    ids = torch.cat([prompt["input_ids"], torch.tensor([[encoder.processor.gen_emb_token_id]])], dim=1)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), return_gen_embeddings=True)
    np.testing.assert_allclose(removed[0], out.gen_embeddings[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(removed[1], encoder.encode_with_rewrites(["a black cat"], [None])[0], atol=1e-5)
    assert not np.allclose(removed[0], encoder.encode_with_rewrites(["a red car"], ["red car"])[0], atol=1e-3)
    assert encoder.encode_with_rewrites([], []).shape == (0, encoder.embedding_dim)


def _image_pad(processor) -> int:
    return processor.tokenizer.convert_tokens_to_ids(processor.image_token)


@pytest.mark.parametrize(
    ("inputs", "rewrites", "error", "message"),
    [
        (["a", "b"], ["x"], ValueError, "2 inputs but 1 rewrites"),
        ("a", ["x"], TypeError, "a list of items and a list of rewrites"),
        (["a", 3.5], ["x", "y"], TypeError, "input 1: unsupported input type float"),
        (["a", "b"], ["x", 5], TypeError, "rewrite 1: a rewrite is a string, a sequence of token ids or None"),
        (["a", "b"], ["x", "a <|im_end|> b"], ValueError, r"rewrite 1 contains <\|im_end\|>"),
        (["a", "b"], ["x", lambda p: [5, p.gen_emb_token_id]], ValueError, "rewrite 1: the token ids contain <gen"),
        (["a", "b"], ["x", lambda p: [5, len(p.tokenizer)]], ValueError, "rewrite 1: token id.*outside the vocab"),
        (["a", "b"], ["x", lambda p: [_image_pad(p)]], ValueError, "rewrite 1: .*image or video slot"),
        (["a", "b"], ["x", lambda p: np.zeros((1, 2), int)], ValueError, "rewrite 1: .*one-dimensional"),
    ],
)
def test_bad_rewrites_fail_before_any_model_work(encoder, inputs, rewrites, error, message, monkeypatch):
    monkeypatch.setattr(encoder.model, "forward", lambda *a, **k: pytest.fail("model work started"))
    rewrites = [r(encoder.processor) if callable(r) else r for r in rewrites]
    with pytest.raises(error, match=message):
        encoder.encode_with_rewrites(inputs, rewrites)


def test_a_rewrite_that_makes_the_sequence_too_long_is_named(encoder, monkeypatch):
    monkeypatch.setattr(encoder.model, "forward", lambda *a, **k: pytest.fail("model work started"))
    length = encoder.processor(text=["a red car"], mode="gen", role="query", return_tensors="pt")["input_ids"].shape[1]
    encoder.prepare(["a red car"], "gen", max_length=length + 1)  # the prompt alone fits
    with pytest.raises(
        ValueError, match=rf"input 1: with its rewrite the sequence is \d+ tokens.*max_length={length + 1}"
    ):
        encoder.encode_with_rewrites(["tea", "a red car"], [None, "a long rewrite of it"], max_length=length + 1)
