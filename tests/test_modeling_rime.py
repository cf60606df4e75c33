"""RimeForEmbedding: disc and gen embeddings against plain-backbone references, invariances, loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import ForceTokens
from transformers_rime import RimeEmbeddingOutput, RimeForEmbedding
from transformers_rime.models.rime.modeling_rime import (
    gather_positions,
    last_nonpad_positions,
    last_token_positions,
)
from transformers_rime.testing import FAMILIES, random_image, tiny_rime_model, tiny_rime_processor


TEXTS = ["a red car", "what is shown in this picture? describe the scene", "a black cat"]


def _images(n=3):
    return [None, random_image(64, 48, seed=1), [random_image(40, 90, seed=2), random_image(30, 30, seed=3)]][:n]


def _single(batch, row):
    """Row `row` of a left-padded batch, unpadded, with its own images."""
    keep = batch["attention_mask"][row].bool()
    out = {
        "input_ids": batch["input_ids"][row, keep][None],
        "attention_mask": batch["attention_mask"][row, keep][None],
    }
    if "mm_token_type_ids" in batch:
        out["mm_token_type_ids"] = batch["mm_token_type_ids"][row, keep][None]
    return out


def _reference_disc(model, processor, text, images, mode="disc"):
    """Plain backbone forward, hidden_states[-1] at the last <disc_emb>, L2-normalised."""
    batch = processor(text=[text], images=[images], mode=mode, return_tensors="pt")
    out = model.vlm(**batch, output_hidden_states=True)
    ids = batch["input_ids"][0].tolist()
    pos = len(ids) - 1 - ids[::-1].index(processor.disc_emb_token_id)
    return F.normalize(out.hidden_states[-1][0, pos], dim=-1)


# ----------------------------------------------------------------------------- pooling functions


def test_last_token_positions_takes_the_last_occurrence_for_any_padding():
    ids = torch.tensor([[0, 0, 5, 9, 5, 1], [5, 1, 2, 0, 0, 0], [3, 3, 3, 3, 3, 5]])
    assert last_token_positions(ids, 5).tolist() == [4, 0, 5]


def test_last_token_positions_names_rows_without_the_token():
    with pytest.raises(ValueError, match=r"row\(s\) \[1\]"):
        last_token_positions(torch.tensor([[1, 5], [1, 2]]), 5, "<disc_emb>")


def test_last_nonpad_positions_left_right_and_none():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert last_nonpad_positions(mask).tolist() == [3, 2, 3]


def test_gather_positions_picks_one_state_per_row():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float).reshape(2, 3, 2)
    assert gather_positions(hidden, torch.tensor([2, 0])).tolist() == [[4.0, 5.0], [6.0, 7.0]]


# ----------------------------------------------------------------------------- disc embeddings


@pytest.mark.parametrize("family", FAMILIES)
def test_disc_embedding_equals_plain_backbone_reference(family):
    processor = tiny_rime_processor(family)
    model = tiny_rime_model(family, processor=processor)
    batch = processor(text=TEXTS, images=_images(), mode="disc", return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
        assert isinstance(out, RimeEmbeddingOutput)
        assert out.embeddings.shape == (3, model.config.hidden_size)
        torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(3))
        for row, (text, images) in enumerate(zip(TEXTS, _images())):
            reference = _reference_disc(model, processor, text, images)
            torch.testing.assert_close(out.embeddings[row], reference, atol=1e-5, rtol=0)


def test_disc_embedding_is_the_same_from_a_gen_mode_prompt(processor, model):
    with torch.no_grad():
        disc = model(**processor(text=TEXTS, images=_images(), mode="disc", return_tensors="pt")).embeddings
        from_gen = model(**processor(text=TEXTS, images=_images(), mode="gen", return_tensors="pt")).embeddings
    torch.testing.assert_close(disc, from_gen, atol=1e-5, rtol=0)


def test_batch_order_and_padding_side_invariance(processor, model):
    batch = processor(text=TEXTS, images=_images(), mode="disc", return_tensors="pt")
    with torch.no_grad():
        batched = model(**batch).embeddings
        reordered = model(
            **processor(text=TEXTS[::-1], images=_images()[::-1], mode="disc", return_tensors="pt")
        ).embeddings
        torch.testing.assert_close(batched, reordered.flip(0), atol=1e-5, rtol=0)
        for row in range(3):  # alone, without padding
            single = processor(text=[TEXTS[row]], images=[_images()[row]], mode="disc", return_tensors="pt")
            torch.testing.assert_close(model(**single).embeddings[0], batched[row], atol=1e-5, rtol=0)
        # the same text-only rows padded on the right instead
        text_batch = processor(text=TEXTS, mode="disc", return_tensors="pt")
        left = model(**text_batch).embeddings
        lengths = text_batch["attention_mask"].sum(1)
        right_ids = torch.full_like(text_batch["input_ids"], processor.tokenizer.pad_token_id)
        right_mask = torch.zeros_like(text_batch["attention_mask"])
        for row, n in enumerate(lengths.tolist()):
            right_ids[row, :n] = text_batch["input_ids"][row, -n:]
            right_mask[row, :n] = 1
        right = model(input_ids=right_ids, attention_mask=right_mask).embeddings
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)


def test_forward_accepts_return_dict_use_cache_and_unknown_kwargs(processor, model):
    batch = processor(text=TEXTS[:2], mode="disc", return_tensors="pt")
    with torch.no_grad():
        as_dict = model(**batch, return_dict=True, use_cache=True, task="query", prompt_length=3)
        as_tuple = model(**batch, return_dict=False)
    torch.testing.assert_close(as_tuple[0], as_dict.embeddings)
    assert as_dict.logits is None and as_dict.loss is None


def test_labels_give_the_backbone_lm_loss_and_gradients(processor, model):
    batch = processor(text=TEXTS[:2], images=_images(2), mode="gen", return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(**batch, labels=labels, output_logits=True)
    reference = model.vlm(**batch, labels=labels)
    torch.testing.assert_close(out.loss, reference.loss)
    torch.testing.assert_close(out.logits, reference.logits)
    assert model(**batch, labels=labels).logits is None  # the loss alone never builds (B, L, V) logits
    (out.loss + out.embeddings.sum()).backward()
    assert model.get_input_embeddings().weight.grad is not None
    assert model.vlm.model.visual.patch_embed.proj.weight.grad is not None


def test_output_hidden_states_last_layer_matches_last_hidden_state(processor, model):
    with torch.no_grad():
        out = model(**processor(text=TEXTS[:1], mode="disc", return_tensors="pt"), output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)


def test_missing_token_ids_give_a_clear_error(processor):
    model = tiny_rime_model(processor=processor)
    model.config.disc_emb_token_id = None
    with pytest.raises(ValueError, match="disc_emb_token_id is not set"):
        model(**processor(text=["x"], mode="disc", return_tensors="pt"))


# ----------------------------------------------------------------------------- gen embeddings


def _reference_gen(model, processor, single, max_new_tokens, logits_processor=None):
    """Greedy generate with the plain backbone, then a full forward up to <gen_emb> (appended if missing)."""
    gen_id, end_ids = processor.gen_emb_token_id, processor.end_of_turn_token_ids
    with torch.no_grad():
        sequences = model.vlm.generate(
            **single,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=[gen_id, *end_ids],
            pad_token_id=processor.tokenizer.pad_token_id,
            logits_processor=logits_processor or [],
        )
        new = sequences[0, single["input_ids"].shape[1] :].tolist()
        finished = bool(new) and new[-1] == gen_id
        if not finished:
            new = new[:-1] if new and new[-1] in end_ids else new
            new = new + [gen_id]
        full_ids = torch.cat([single["input_ids"], torch.tensor([new])], dim=1)
        extra = {k: v for k, v in single.items() if k in ("pixel_values", "image_grid_thw")}
        extra["mm_token_type_ids"] = F.pad(single["mm_token_type_ids"], (0, len(new)))
        hidden = model.vlm(
            input_ids=full_ids, attention_mask=torch.ones_like(full_ids), **extra, output_hidden_states=True
        ).hidden_states[-1]
    return F.normalize(hidden[0, -1], dim=-1), new, finished


@pytest.mark.parametrize("family", FAMILIES)
def test_gen_embedding_equals_reference_finished_and_unfinished(family):
    processor = tiny_rime_processor(family)
    model = tiny_rime_model(family, processor=processor)
    gen_id, im_end = processor.gen_emb_token_id, processor.end_of_turn_token_ids[0]
    images = _images()
    batch = processor(text=TEXTS, images=images, mode="gen", return_tensors="pt")
    # row 0 generates <gen_emb> at step 2; row 1 ends its turn at step 3; row 2 runs out of budget
    plan = {0: (2, gen_id), 1: (3, im_end)}
    out = model.generate_embeddings(
        **batch, max_new_tokens=5, logits_processor=[ForceTokens(batch["input_ids"].shape[1], plan)]
    )
    assert out.finished.tolist() == [True, False, False]
    assert out.num_new_tokens.tolist() == [3, 3, 5]
    for row in range(3):
        single = processor(text=[TEXTS[row]], images=[images[row]], mode="gen", return_tensors="pt")
        force = ForceTokens(single["input_ids"].shape[1], {0: plan[row]} if row in plan else {})
        reference, tokens, finished = _reference_gen(model, processor, dict(single), 5, [force])
        assert finished == bool(out.finished[row])
        n = len(tokens)
        assert out.sequences[row, :n].tolist() == tokens
        assert (out.sequences[row, n:] == processor.tokenizer.pad_token_id).all()
        torch.testing.assert_close(out.embeddings[row], reference, atol=1e-5, rtol=0)
    # the disc embeddings from the same prefill equal a disc-mode forward
    disc = model(**processor(text=TEXTS, images=images, mode="disc", return_tensors="pt")).embeddings
    torch.testing.assert_close(out.disc_embeddings, disc.detach(), atol=1e-5, rtol=0)


def test_gen_is_greedy_whatever_the_generation_config_says(processor, model):
    batch = processor(text=TEXTS[:2], mode="gen", return_tensors="pt")
    first = model.generate_embeddings(**batch, max_new_tokens=6)
    model.vlm.generation_config.do_sample = True
    model.vlm.generation_config.temperature = 5.0
    model.vlm.generation_config.repetition_penalty = 3.0
    torch.manual_seed(123)
    second = model.generate_embeddings(**batch, max_new_tokens=6)
    assert torch.equal(first.sequences, second.sequences)
    torch.testing.assert_close(first.embeddings, second.embeddings)


def test_gen_sampling_can_be_requested(processor, model):
    batch = processor(text=TEXTS[:1] * 4, mode="gen", return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate_embeddings(**batch, max_new_tokens=8, do_sample=True, temperature=5.0, top_k=0)
    assert len({tuple(row.tolist()) for row in out.sequences}) > 1  # four draws of one prompt differ


def test_gen_with_zero_budget_appends_gen_emb_at_once(processor, model):
    out = model.generate_embeddings(**processor(text=TEXTS[:2], mode="gen", return_tensors="pt"), max_new_tokens=0)
    assert out.sequences.tolist() == [[processor.gen_emb_token_id]] * 2
    assert out.num_new_tokens.tolist() == [0, 0] and not out.finished.any()


def test_gen_needs_left_padding(processor, model):
    batch = processor(text=TEXTS[:2], mode="gen", return_tensors="pt")
    batch["attention_mask"] = batch["attention_mask"].flip(1)
    with pytest.raises(ValueError, match="left-padded"):
        model.generate_embeddings(**batch, max_new_tokens=2)


def test_forward_after_generate_is_unchanged(processor, model):
    """No state (e.g. cached rope deltas) leaks from generation into the next forward."""
    disc_batch = processor(text=TEXTS, images=_images(), mode="disc", return_tensors="pt")
    with torch.no_grad():
        before = model(**disc_batch).embeddings
        model.generate_embeddings(
            **processor(text=TEXTS[:1], images=_images(1), mode="gen", return_tensors="pt"), max_new_tokens=3
        )
        after = model(**disc_batch).embeddings
    torch.testing.assert_close(before, after, atol=0, rtol=0)


def test_is_a_pretrained_model_with_backbone_flags(model):
    assert isinstance(model, RimeForEmbedding)
    assert model.vlm.__class__.__name__ == "Qwen2VLForConditionalGeneration"
    assert "Qwen2VLDecoderLayer" in model._no_split_modules
    assert model.supports_gradient_checkpointing


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
def test_gradient_checkpointing_gives_the_same_gradients(processor):
    batch = processor(text=TEXTS[:2], images=_images(2), mode="gen", return_tensors="pt")
    grads = []
    for checkpointing in (False, True):
        model = tiny_rime_model(processor=processor).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(**batch).embeddings.square().sum().backward()
        grads.append(model.get_input_embeddings().weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_bfloat16_stays_close_to_float32(processor):
    model = tiny_rime_model(processor=processor)
    batch = processor(text=TEXTS, mode="disc", return_tensors="pt")
    with torch.no_grad():
        full = model(**batch).embeddings
        half = model.to(torch.bfloat16)(**batch).embeddings
    assert half.dtype == torch.bfloat16
    assert F.cosine_similarity(full, half.float()).min() > 0.99


def test_last_pooling_reads_the_last_attended_position(processor):
    model = tiny_rime_model(processor=processor, pooling="last")
    batch = processor(text=TEXTS, mode="disc", return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    torch.testing.assert_close(out.embeddings, F.normalize(out.last_hidden_state[:, -1], dim=-1))  # left padding
    with pytest.raises(ValueError, match="pooling='token'"):
        model.generate_embeddings(**processor(text=TEXTS[:1], mode="gen", return_tensors="pt"), max_new_tokens=1)


def test_a_caller_stopping_criterion_that_cuts_generation_short_is_an_error(processor, model):
    from transformers import MaxLengthCriteria

    batch = processor(text=TEXTS[:1], mode="gen", return_tensors="pt")
    cut = MaxLengthCriteria(max_length=batch["input_ids"].shape[1] + 2)
    with pytest.raises(RuntimeError, match="stopped before"):
        model.generate_embeddings(**batch, max_new_tokens=6, stopping_criteria=[cut])
