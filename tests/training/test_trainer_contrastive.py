"""RimeContrastiveTrainer: cached == uncached, learning, LoRA, frozen vision, resume, logging, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.utils import logging

from transformers_rime import RimeConfig, RimeForEmbedding
from transformers_rime.testing import color_object_pairs, tiny_rime_model, tiny_rime_processor, tiny_vlm_config
from transformers_rime.training import RimeContrastiveCollator, RimeContrastiveConfig, RimeContrastiveTrainer


logging.set_verbosity_error()


def make_args(tmp_path, output="out", **overrides) -> RimeContrastiveConfig:
    defaults = {
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
        "disable_tqdm": True,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": 1e-3,
        "temperature": 0.05,
        "seed": 0,
    }
    return RimeContrastiveConfig(str(tmp_path / output), **{**defaults, **overrides})


def dropout_model(processor, seed=0) -> RimeForEmbedding:
    """A tiny model whose attention has dropout, so replaying a chunk needs the same random state."""
    config = RimeConfig(vlm_config=tiny_vlm_config("qwen2_vl", processor.tokenizer, attention_dropout=0.3))
    processor.apply_token_ids(config)
    torch.manual_seed(seed)
    return RimeForEmbedding(config)


def rows_with_negatives(n=6):
    rows = color_object_pairs(n, with_images=True)
    for i, row in enumerate(rows):
        row["negatives"] = [f"not pair {i}", f"another decoy {i}"]
        row["negative_rewrites"] = [f"decoy {i}", f"decoy {i + 1}"]
    return rows


def loss_and_grads(trainer, model, inputs, seed=0):
    model.train()
    torch.manual_seed(seed)
    loss = trainer.compute_loss(model, inputs)
    trainer.accelerator.backward(loss)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.detach(), grads


def test_cached_gradients_equal_uncached_with_dropout_images_and_hard_negatives(tmp_path):
    processor = tiny_rime_processor()
    cached_model = dropout_model(processor)
    plain_model = copy.deepcopy(cached_model)
    inputs = RimeContrastiveCollator(processor, chunk_size=2)(rows_with_negatives())
    cached = RimeContrastiveTrainer(cached_model, make_args(tmp_path, cached_batch_size=2), processing_class=processor)
    plain = RimeContrastiveTrainer(plain_model, make_args(tmp_path), processing_class=processor)
    cached_loss, cached_grads = loss_and_grads(cached, cached_model, inputs)
    plain_loss, plain_grads = loss_and_grads(plain, plain_model, inputs)
    torch.testing.assert_close(cached_loss, plain_loss, atol=1e-6, rtol=0)
    assert cached_grads.keys() == plain_grads.keys() and len(plain_grads) > 10
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, atol=1e-5, rtol=0, msg=name)
    # the replay matters: another random state gives other gradients
    _, other_grads = loss_and_grads(plain, plain_model, inputs, seed=1)
    name = "vlm.model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(other_grads[name], plain_grads[name], atol=1e-5)


def test_cached_training_equals_uncached_training_with_gradient_accumulation(tmp_path):
    processor = tiny_rime_processor()
    rows = color_object_pairs(16)
    results = []
    for cached_batch_size in (None, 3):
        model = tiny_rime_model(processor=processor)
        args = make_args(tmp_path, max_steps=2, gradient_accumulation_steps=2, cached_batch_size=cached_batch_size)
        RimeContrastiveTrainer(model, args, train_dataset=rows, processing_class=processor).train()
        results.append(dict(model.named_parameters()))
    uncached, cached = results
    moved = 0
    reference = dict(tiny_rime_model(processor=processor).named_parameters())
    for name, parameter in uncached.items():
        torch.testing.assert_close(cached[name], parameter, atol=1e-5, rtol=0, msg=name)
        moved += not torch.equal(parameter, reference[name])
    assert moved > 10


def test_training_lowers_every_term_and_raises_accuracy_in_all_four_mode_pairs(tmp_path):
    processor = tiny_rime_processor()
    rows = color_object_pairs(32)
    args = make_args(tmp_path, max_steps=40, per_device_train_batch_size=8, logging_steps=10)
    trainer = RimeContrastiveTrainer(
        tiny_rime_model(processor=processor), args, train_dataset=rows, eval_dataset=rows, processing_class=processor
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for term in ("lm", "disc_nce", "gen_nce", "cma"):
        assert after[f"eval_{term}"] < before[f"eval_{term}"], term
    for pair in ("disc->disc", "gen->gen", "gen->disc", "disc->gen"):
        key = f"eval_accuracy/{pair}"
        assert before[key] <= 0.3 and after[key] >= 0.6, (pair, before[key], after[key])
    logged = [entry for entry in trainer.state.log_history if "lm" in entry and "loss" in entry]
    assert len(logged) == 4 and {"disc_nce", "gen_nce", "cma", "accuracy/gen->disc"} <= set(logged[0])


def test_disc_only_ablation_needs_no_rewrites(tmp_path):
    processor = tiny_rime_processor()
    rows = [{"query": row["query"], "positive": row["positive"]} for row in color_object_pairs(8)]
    args = make_args(tmp_path, max_steps=1, lm_weight=0, gen_weight=0, cma_weight=0, logging_steps=1)
    trainer = RimeContrastiveTrainer(
        tiny_rime_model(processor=processor), args, train_dataset=rows, processing_class=processor
    )
    trainer.train()
    logged = trainer.state.log_history[0]
    assert "disc_nce" in logged and "accuracy/disc->disc" in logged
    assert not {"lm", "gen_nce", "cma", "accuracy/gen->gen"} & set(logged)


def test_vision_tower_is_frozen_except_the_merger_by_default(tmp_path):
    processor = tiny_rime_processor()
    model = tiny_rime_model(processor=processor)
    RimeContrastiveTrainer(model, make_args(tmp_path), processing_class=processor)
    visual = dict(model.vlm.model.visual.named_parameters())
    assert not any(p.requires_grad for name, p in visual.items() if "merger" not in name)
    assert all(p.requires_grad for name, p in visual.items() if "merger" in name)
    model = tiny_rime_model(processor=processor)
    RimeContrastiveTrainer(model, make_args(tmp_path, freeze_vision_tower=False), processing_class=processor)
    assert all(p.requires_grad for p in model.parameters())


def test_lora_trains_adapters_only_and_saves_them(tmp_path):
    from peft import LoraConfig

    processor = tiny_rime_processor()
    model = tiny_rime_model(processor=processor)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1)
    args = make_args(tmp_path, max_steps=3, cached_batch_size=2)
    trainer = RimeContrastiveTrainer(
        model, args, train_dataset=color_object_pairs(8), processing_class=processor, peft_config=peft_config
    )
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    trainer.train()
    changed = [name for name, p in trainer.model.named_parameters() if "lora_B" in name and p.abs().sum() > 0]
    assert changed  # lora_B starts at zero
    base = trainer.model.get_base_model()
    for name, p in base.named_parameters():
        if "lora_" not in name and "base_layer" not in name:
            assert torch.equal(p, before[name]), name
    trainer.save_model(str(tmp_path / "adapter"))  # merged: a complete RIME export (tests/test_trainer_exports.py)
    assert (tmp_path / "adapter" / "model.safetensors").is_file() and (tmp_path / "adapter" / "config.json").is_file()


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    processor = tiny_rime_processor()
    rows = color_object_pairs(16)
    common = {
        "max_steps": 4,
        "save_strategy": "steps",
        "save_steps": 2,
        "homogeneous_batches": True,
        "gradient_checkpointing": True,
    }
    first = tiny_rime_model(processor=processor)
    args = make_args(tmp_path, **common)
    RimeContrastiveTrainer(first, args, train_dataset=rows, processing_class=processor).train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "processor_config.json").is_file()

    resumed = tiny_rime_model(processor=processor, seed=123)  # its own weights are replaced by the checkpoint's
    args = make_args(tmp_path, output="resumed", **common)
    trainer = RimeContrastiveTrainer(resumed, args, train_dataset=rows, processing_class=processor)
    result = trainer.train(resume_from_checkpoint=str(checkpoint))
    assert result.global_step == 4
    for (name, a), b in zip(first.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_homogeneous_batches_use_the_source_sampler(tmp_path):
    from transformers_rime.training import SourceHomogeneousSampler

    processor = tiny_rime_processor()
    rows = color_object_pairs(8)
    args = make_args(tmp_path, homogeneous_batches=True)
    trainer = RimeContrastiveTrainer(
        tiny_rime_model(processor=processor), args, train_dataset=rows, processing_class=processor
    )
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, SourceHomogeneousSampler) and sampler.block_size == 4
    sources = [rows[i]["source"] for i in sampler]
    assert all(len(set(sources[i : i + 4])) == 1 for i in range(0, len(sources), 4))
    no_source = [{"query": "a", "positive": "b", "query_rewrite": "a", "positive_rewrite": "b"}] * 4
    trainer = RimeContrastiveTrainer(
        tiny_rime_model(processor=processor), args, train_dataset=no_source, processing_class=processor
    )
    with pytest.raises(ValueError, match="needs a `source` column"):
        trainer._get_train_sampler()


def test_trains_from_an_iterable_dataset_of_image_rows(tmp_path):
    """accelerate would slice an IterableDataset's batches by default (dispatch_batches), which breaks the pixel
    tensors of a RIME batch: the config turns that off, and asking for it is an error."""

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            while True:
                yield from color_object_pairs(4, with_images=True)

    processor = tiny_rime_processor()
    trainer = RimeContrastiveTrainer(
        tiny_rime_model(processor=processor),
        make_args(tmp_path, max_steps=2, freeze_vision_tower=False),
        train_dataset=Stream(),
        processing_class=processor,
    )
    assert trainer.args.accelerator_config.dispatch_batches is False
    assert trainer.train().global_step == 2
    for setting in ("dispatch_batches", "split_batches"):
        with pytest.raises(ValueError, match="cannot be used with RIME batches"):
            make_args(tmp_path, accelerator_config={setting: True})


def test_errors_are_clear(tmp_path):
    processor = tiny_rime_processor()
    model = tiny_rime_model(processor=processor)
    with pytest.raises(ValueError, match="processing_class"):
        RimeContrastiveTrainer(model, make_args(tmp_path))
    with pytest.raises(ValueError, match="Every loss weight is 0"):
        make_args(tmp_path, lm_weight=0, disc_weight=0, gen_weight=0, cma_weight=0)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        make_args(tmp_path, cma_weight=-1)
    trainer = RimeContrastiveTrainer(model, make_args(tmp_path, cached_batch_size=2), processing_class=processor)
    trainer.is_deepspeed_enabled = True  # what accelerate sets under a DeepSpeed launch
    with pytest.raises(ValueError, match="cannot run under DeepSpeed or FSDP"):
        trainer._check_cached_training_supported()
    wrong = tiny_rime_model(processor=tiny_rime_processor(tokenizer=_shifted_tokenizer()))
    with pytest.raises(ValueError, match="disagree"):
        RimeContrastiveTrainer(wrong, make_args(tmp_path), processing_class=processor)


def _shifted_tokenizer():
    from transformers_rime.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(["<shift>"])  # the RIME tokens get other ids than in the default processor
    return tokenizer


def test_training_starts_from_a_stock_backbone_checkpoint(tmp_path):
    """The README flow: the processor adds the RIME tokens, the model reads their ids from it, training runs."""
    from transformers_rime import RimeEncoder, RimeProcessor
    from transformers_rime.testing import write_published_checkpoint

    backbone = write_published_checkpoint(tmp_path / "qwen2-vl", with_rime_tokens=False)
    processor = RimeProcessor.from_pretrained(str(backbone))
    with pytest.raises(ValueError, match="has no <disc_emb>"):
        RimeForEmbedding.from_pretrained(str(backbone))
    model = RimeForEmbedding.from_pretrained(str(backbone), tokenizer=processor.tokenizer)
    args = make_args(tmp_path, max_steps=2)
    trainer = RimeContrastiveTrainer(model, args, train_dataset=color_object_pairs(8), processing_class=processor)
    trainer.train()
    trainer.save_model(str(tmp_path / "trained"))
    encoder = RimeEncoder.from_pretrained(str(tmp_path / "trained"))
    torch.testing.assert_close(
        torch.as_tensor(encoder.encode(["red car"], mode="disc")),
        model(**processor(text=["red car"], mode="disc", return_tensors="pt")).embeddings.detach(),
        atol=1e-5,
        rtol=0,
    )
