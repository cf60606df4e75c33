"""RimeForEmbedding: disc and gen embeddings against plain-backbone references, invariances, loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import ForceTokens
from transformers_rime import RimeEmbeddingOutput, RimeForEmbedding
from transformers_rime.models.rime.pooling_rime import (
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


# ----------------------------------------------------------------------------- decoding options


class SetScores:
    """A caller's logits processor: at step `step`, only `values` (token id -> logit) remain, for every row."""

    def __init__(self, prompt_length: int, values: dict[int, float], step: int = 0):
        self.prompt_length, self.values, self.step = prompt_length, values, step

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_length != self.step:
            return scores
        scores = torch.full_like(scores, float("-inf"))
        for token_id, value in self.values.items():
            scores[:, token_id] = value
        return scores


def _first_step(model, batch, values, **sampling):
    plan = SetScores(batch["input_ids"].shape[1], values)
    return model.generate_embeddings(**batch, max_new_tokens=1, do_sample=True, logits_processor=[plan], **sampling)


def test_sampling_moves_the_end_of_turn_mass_of_the_final_distribution(processor, model):
    """Temperature, top-k and top-p act before an end of turn becomes <gen_emb> (transformers applies a caller's
    processors before its warpers, so the merge cannot be one of them)."""
    gen_id, end_id = processor.gen_emb_token_id, processor.end_of_turn_token_ids[0]
    word = processor.tokenizer.convert_tokens_to_ids("a")
    one = processor(text=TEXTS[:1], mode="gen", return_tensors="pt")
    # top-k 1 keeps only the best token: a word beats the end of turn, which merged with <gen_emb> would not
    out = _first_step(model, one, {word: 1.0, end_id: 0.8, gen_id: 0.8}, top_k=1)
    assert out.sequences[0, 0] == word
    # ... and when the end of turn is best, every draw is a substituted <gen_emb>
    many = processor(text=TEXTS[:1] * 32, mode="gen", return_tensors="pt")
    out = _first_step(model, many, {word: 0.5, end_id: 1.0, gen_id: 0.9}, top_k=1)
    assert (out.sequences[:, 0] == gen_id).all() and not out.finished.any()
    # at temperature 0.5, P(<gen_emb>) is the end-of-turn + <gen_emb> mass of softmax(scores / 0.5)
    probabilities = torch.tensor([1.0, 0.0, 0.0]).div(0.5).softmax(0)  # word, end of turn, <gen_emb>
    torch.manual_seed(0)
    rows = processor(text=TEXTS[:1] * 1200, mode="gen", return_tensors="pt")
    out = _first_step(model, rows, {word: 1.0, end_id: 0.0, gen_id: 0.0}, temperature=0.5)
    drew_gen = out.sequences[:, 0] == gen_id
    assert abs(drew_gen.float().mean() - (probabilities[1] + probabilities[2])) < 0.04  # 0.213; 0.351 if merged first
    assert abs(out.finished[drew_gen].float().mean() - 0.5) < 0.1  # half the <gen_emb> draws were ends of turn


def test_sampling_warpers_are_the_ones_generate_applies(model):
    """The warpers we sample through are the ones transformers builds (this fails when it adds a new one)."""
    from transformers import GenerationConfig

    from transformers_rime.models.rime.generation_rime import SAMPLING_SETTINGS, sampling_warpers

    every = dict(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, typical_p=0.95, epsilon_cutoff=3e-4, eta_cutoff=3e-4)
    config = GenerationConfig(do_sample=True, **every, top_h=0.5)
    theirs = model.vlm._get_logits_processor(config, input_ids_seq_length=4, device="cpu")
    assert [type(w).__name__ for w in sampling_warpers(config)] == [type(w).__name__ for w in theirs]
    neutral = model.vlm._get_logits_processor(
        GenerationConfig(do_sample=True, **SAMPLING_SETTINGS), input_ids_seq_length=4, device="cpu"
    )
    assert len(neutral) == 0


@pytest.mark.parametrize("where", ["generation_config", "argument"])
def test_gen_emb_as_an_end_of_sequence_id_changes_nothing(processor, model, where):
    gen_id, end_id = processor.gen_emb_token_id, processor.end_of_turn_token_ids[0]
    for rows in (TEXTS[:1], TEXTS):  # a batch of one always crashed
        batch = processor(text=rows, images=_images(len(rows)), mode="gen", return_tensors="pt")
        force = [ForceTokens(batch["input_ids"].shape[1], {0: (2, gen_id)})]
        expected = model.generate_embeddings(**batch, max_new_tokens=5, logits_processor=force)
        kwargs = {}
        if where == "argument":
            kwargs["eos_token_id"] = [end_id, gen_id]
        else:
            model.vlm.generation_config.eos_token_id = [end_id, gen_id]
        out = model.generate_embeddings(**batch, max_new_tokens=5, logits_processor=force, **kwargs)
        model.vlm.generation_config.eos_token_id = end_id
        assert out.finished.tolist() == expected.finished.tolist() and out.finished[0]
        assert torch.equal(out.sequences, expected.sequences)
        torch.testing.assert_close(out.embeddings, expected.embeddings, atol=0, rtol=0)


def test_a_callers_end_of_sequence_id_ends_the_rewrite(processor, model):
    """An id the caller names as end of sequence is an end of turn: replaced by <gen_emb>, flagged unfinished."""
    batch = processor(text=TEXTS[:1], mode="gen", return_tensors="pt")
    word = processor.tokenizer.convert_tokens_to_ids("a")
    force = [ForceTokens(batch["input_ids"].shape[1], {0: (1, word)})]
    out = model.generate_embeddings(**batch, max_new_tokens=5, logits_processor=force, eos_token_id=[word])
    assert out.sequences[0].tolist()[:2] != [word] and out.sequences[0, 1] == processor.gen_emb_token_id
    assert out.num_new_tokens.tolist() == [1] and not out.finished[0]


def test_num_return_sequences_draws_k_rewrites_per_prompt(processor, model):
    batch = processor(text=TEXTS[:2], images=_images(2), mode="gen", return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate_embeddings(**batch, max_new_tokens=6, do_sample=True, temperature=3.0, num_return_sequences=3)
    assert out.embeddings.shape == (6, 64) and out.finished.shape == (6,)
    disc = model(**processor(text=TEXTS[:2], images=_images(2), mode="disc", return_tensors="pt")).embeddings
    torch.testing.assert_close(out.disc_embeddings, disc.detach().repeat_interleave(3, dim=0), atol=1e-5, rtol=0)
    assert len({tuple(row.tolist()) for row in out.sequences[:3]}) > 1
    # each draw's embedding is the one a teacher-forced pass reads from its own prompt + rewrite
    for row in range(6):
        prompt = processor(text=[TEXTS[row // 3]], images=[_images(2)[row // 3]], mode="gen", return_tensors="pt")
        n = int(out.num_new_tokens[row]) + int(not out.finished[row])
        ids = torch.cat([prompt["input_ids"], out.sequences[row : row + 1, :n]], dim=1)
        extra = {k: v for k, v in prompt.items() if k in ("pixel_values", "image_grid_thw")}
        forced = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=(ids == processor.image_token_id).long(),
            return_gen_embeddings=True,
            **extra,
        )
        torch.testing.assert_close(out.embeddings[row], forced.gen_embeddings[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_return_sequences": 2}, "needs do_sample=True"),
        ({"num_beams": 2}, "beam search"),
        ({"prompt_lookup_num_tokens": 3}, "decoding loop"),
        ({"do_sample": True, "num_return_sequences": 0}, "positive integer"),
    ],
)
def test_decoding_modes_the_reader_cannot_follow_are_refused_up_front(processor, model, kwargs, message, monkeypatch):
    monkeypatch.setattr(model.vlm, "generate", lambda *a, **k: pytest.fail("generate ran"))
    with pytest.raises(ValueError, match=message):
        model.generate_embeddings(**processor(text=TEXTS[:1], mode="gen", return_tensors="pt"), **kwargs)


def test_gen_embeddings_of_a_prompt_without_its_rewrite_are_an_error(processor, model):
    """The gen instruction names <gen_emb>; a prompt without the rewrite must not be read there."""
    prompt = processor(text=TEXTS[:2], mode="gen", return_tensors="pt")
    assert (prompt["input_ids"] == processor.gen_emb_token_id).any(dim=1).all()
    with pytest.raises(ValueError, match=r"row\(s\) \[0, 1\]: the last <gen_emb> is inside the prompt"):
        model(**prompt, return_gen_embeddings=True)


def test_inference_ends_the_rewrite_on_every_end_of_turn_token(processor, model):
    """`<|endoftext|>` ends a rewrite even when the generation config lists only `<|im_end|>` (RL rollouts stop on
    the same ids: see the Refine-RL tests)."""
    end_of_text = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert model.vlm.generation_config.eos_token_id != end_of_text
    assert set(model.stop_token_ids()) == set(processor.end_of_turn_token_ids)
    batch = processor(text=TEXTS[:1], mode="gen", return_tensors="pt")
    force = [ForceTokens(batch["input_ids"].shape[1], {0: (2, end_of_text)})]
    out = model.generate_embeddings(**batch, max_new_tokens=5, logits_processor=force)
    assert out.sequences[0, 2] == processor.gen_emb_token_id and not out.finished[0]


def test_a_rewrite_that_writes_disc_emb_is_still_read_after_the_rewrite(processor, model):
    """A sampled rewrite may contain `<disc_emb>`; the prompt's (first) one anchors the check."""
    prompt = processor(text=TEXTS[:1], mode="gen", return_tensors="pt")
    rewrite = torch.tensor([[processor.disc_emb_token_id, 11, processor.gen_emb_token_id]])
    ids = torch.cat([prompt["input_ids"], rewrite], dim=1)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), return_gen_embeddings=True)
    torch.testing.assert_close(out.gen_embeddings[0], F.normalize(out.last_hidden_state[0, -1], dim=-1))
