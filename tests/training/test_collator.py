"""The stage-1 collator: teacher-forced sequences, labels, chunks and errors; consistency with inference."""

from __future__ import annotations

import pytest
import torch

from transformers_rime.testing import ForcedTokens
from transformers_rime.training import RimeContrastiveCollator, append_target_tokens, rewrite_target


def _row(i: int, **extra) -> dict:
    return {
        "query": f"query number {i}",
        "positive": f"the document {i}",
        "query_rewrite": f"query {i}",
        "positive_rewrite": f"<rewrite>doc {i}</rewrite>",
        **extra,
    }


def test_sequence_is_the_gen_prompt_then_the_rewrite_and_only_the_rewrite_is_labelled(processor):
    batch = RimeContrastiveCollator(processor)([_row(0), _row(1)])
    query = batch["query"][0]
    tokenizer = processor.tokenizer
    for row in range(2):
        mask = query["attention_mask"][row].bool()
        ids, labels = query["input_ids"][row][mask], query["labels"][row][mask]
        target = tokenizer(f"<rewrite>query {row}</rewrite><gen_emb>", add_special_tokens=False)["input_ids"]
        prompt = processor(text=[f"query number {row}"], mode="gen", role="query", return_tensors="pt")
        assert ids.tolist() == prompt["input_ids"][0].tolist() + target
        assert labels.tolist() == [-100] * (len(ids) - len(target)) + target
        assert ids[-1] == processor.gen_emb_token_id
    assert (query["labels"][~query["attention_mask"].bool()] == -100).all()
    # documents use the document instruction; an already-tagged rewrite is kept verbatim
    positive = tokenizer.decode(batch["positive"][0]["input_ids"][0])
    assert processor.document_instruction in positive and positive.endswith("<rewrite>doc 0</rewrite><gen_emb>")


def test_teacher_forced_embeddings_equal_inference_embeddings(processor, model, image):
    """The states training reads are the ones inference reads: disc at <disc_emb>, gen at the <gen_emb> it wrote."""
    row = {"query": {"text": "what is shown?", "image": image}, "positive": "x", "query_rewrite": "a noisy picture"}
    row["positive_rewrite"] = "x"
    chunk = RimeContrastiveCollator(processor)([row])["query"][0]
    features = {k: v for k, v in chunk.items() if k != "labels"}
    with torch.no_grad():
        trained = model(**features, return_gen_embeddings=True)
    prompt = processor(text=["what is shown?"], images=[image], mode="gen", role="query", return_tensors="pt")
    target = processor.tokenizer("<rewrite>a noisy picture</rewrite><gen_emb>", add_special_tokens=False)["input_ids"]
    force = ForcedTokens(prompt["input_ids"].shape[1], target)
    generated = model.generate_embeddings(**prompt, max_new_tokens=len(target), logits_processor=[force])
    assert generated.finished.tolist() == [True]
    assert generated.sequences[0].tolist() == target
    torch.testing.assert_close(trained.gen_embeddings, generated.embeddings, atol=1e-5, rtol=0)
    torch.testing.assert_close(trained.embeddings, generated.disc_embeddings, atol=1e-5, rtol=0)
    assert "pixel_values" in chunk and chunk["mm_token_type_ids"].shape == chunk["input_ids"].shape


def test_disc_only_training_needs_no_rewrite_and_uses_disc_prompts(processor):
    batch = RimeContrastiveCollator(processor, with_rewrites=False)([{"query": "a", "positive": "b"}])
    assert "labels" not in batch["query"][0]
    expected = processor(text=["a"], mode="disc", role="query", return_tensors="pt")["input_ids"]
    assert batch["query"][0]["input_ids"].tolist() == expected.tolist()


def test_missing_rewrite_names_the_row_and_column(processor):
    rows = [_row(0), {"query": "a", "positive": "b", "query_rewrite": "a", "source": "CIRR"}]
    with pytest.raises(ValueError, match=r"batch row 1 \(source 'CIRR'\), column 'positive': no rewrite"):
        RimeContrastiveCollator(processor)(rows)
    with pytest.raises(ValueError, match="batch row 0: missing `positive`"):
        RimeContrastiveCollator(processor)([{"query": "a"}])
    with pytest.raises(ValueError, match="column 'query': empty rewrite"):
        RimeContrastiveCollator(processor)([_row(0, query_rewrite="  <gen_emb>")])


def test_negatives_get_gen_sequences_only_when_all_have_rewrites(processor):
    with_rewrites = [_row(0, negatives=["n0", "n1"], negative_rewrites=["n zero", "n one"]), _row(1, negative="n2")]
    batch = RimeContrastiveCollator(processor)(with_rewrites)
    assert batch["negative"][0]["input_ids"].shape[0] == 3 and "labels" not in batch["negative"][0]
    batch = RimeContrastiveCollator(processor)([with_rewrites[0], _row(1, negative="n2", negative_rewrite="n two")])
    assert "labels" in batch["negative"][0]
    assert "negative" not in RimeContrastiveCollator(processor)([_row(0, negatives=[], negative_rewrites=[])])


def test_chunks_split_every_group(processor):
    batch = RimeContrastiveCollator(processor, chunk_size=2)([_row(i) for i in range(5)])
    assert [chunk["input_ids"].shape[0] for chunk in batch["query"]] == [2, 2, 1]
    with pytest.raises(ValueError, match="chunk_size"):
        RimeContrastiveCollator(processor, chunk_size=0)


def test_too_long_is_an_error_not_a_truncation(processor):
    with pytest.raises(ValueError, match=r"max_length=20 \(batch row 0, column 'query': \d+ tokens"):
        RimeContrastiveCollator(processor, max_length=20)([_row(0)])


def test_rows_from_the_readers_are_accepted(processor, image, tmp_path):
    path = tmp_path / "cat.png"
    image.save(path)
    row = {
        "query": {"text": "find the cat", "images": [], "video": None},
        "positive": {"text": None, "images": [str(path)], "video": None},
        "query_rewrite": "cat",
        "positive_rewrite": "<rewrite>a cat</rewrite>",
        "query_instruction": "",
        "positive_instruction": None,
        "source": "demo",
    }
    batch = RimeContrastiveCollator(processor)([row])
    query_text = processor.tokenizer.decode(batch["query"][0]["input_ids"][0])
    assert processor.query_instruction not in query_text  # "" means no instruction
    assert batch["positive"][0]["image_grid_thw"].shape == (1, 3)


def test_rewrite_target_and_append_target_tokens_helpers():
    assert rewrite_target(" text <gen_emb> ", "<r>", "</r>", "<gen_emb>") == "<r>text</r><gen_emb>"
    assert (
        rewrite_target("<think>x</think><answer>y</answer>", "<r>", "</r>", "<g>")
        == "<think>x</think><answer>y</answer><g>"
    )
    batch = {
        "input_ids": torch.tensor([[0, 5]]),
        "attention_mask": torch.tensor([[0, 1]]),
        "mm_token_type_ids": torch.tensor([[0, 1]]),
    }
    from transformers import BatchFeature

    out = append_target_tokens(BatchFeature(batch), [[7, 8]], pad_token_id=0)
    assert out["mm_token_type_ids"].tolist() == [[1, 0, 0]] and out["attention_mask"].tolist() == [[1, 1, 1]]


def test_pixel_values_shaped_like_the_ids_are_not_padded_as_tokens(processor):
    """A chunk whose padded prompt is as long as the patch dimension (1176 for Qwen2-VL) and whose patch count equals
    its size gives `pixel_values` the ids' shape; they must stay pixels."""
    from transformers import BatchFeature

    pixels = torch.randn(2, 6)  # 2 patches of dimension 6, two prompts of 6 tokens
    batch = BatchFeature(
        {
            "input_ids": torch.arange(12).view(2, 6),
            "attention_mask": torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]),
            "mm_token_type_ids": torch.zeros(2, 6, dtype=torch.long),
            "pixel_values": pixels,
            "image_grid_thw": torch.tensor([[1, 1, 2]]),
        }
    )
    out = append_target_tokens(batch, [[7], [8, 9]], pad_token_id=0)
    assert torch.equal(out["pixel_values"], pixels)
    assert out["input_ids"].shape == out["mm_token_type_ids"].shape == (2, 8)
