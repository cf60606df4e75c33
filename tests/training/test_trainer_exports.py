"""What training writes loads everywhere: PEFT adapter directories load merged, a PEFT model saves merged, the
contrastive trainer's outputs and checkpoints are complete exports (and still resume), and the examples refuse a
missing data path clearly."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers.utils import logging

from transformers_rime import RimeEncoder, RimeForEmbedding, RimeProcessor
from transformers_rime.testing import (
    color_object_pairs,
    tiny_rime_model,
    tiny_rime_processor,
    write_published_checkpoint,
)
from transformers_rime.training import RimeContrastiveConfig, RimeContrastiveTrainer


logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["a red car", "two blue bikes"]


def lora_config(processor, **overrides) -> LoraConfig:
    settings = {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "trainable_token_indices": {"embed_tokens": [processor.disc_emb_token_id, processor.gen_emb_token_id]},
        **overrides,
    }
    return LoraConfig(**settings)


def trained_adapter(model, processor, seed=0):
    """`model` wrapped in a LoRA adapter whose every part is non-zero (as after training)."""
    peft_model = get_peft_model(model, lora_config(processor, init_lora_weights=False))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "trainable_tokens_delta" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return peft_model.eval()


def disc_embeddings(model, processor, texts=TEXTS) -> np.ndarray:
    with torch.no_grad():
        features = processor(text=texts, mode="disc", return_tensors="pt")
        return model(**features).embeddings.float().numpy()


def has_lora_layers(model) -> bool:
    return any("lora_" in name or "token_adapter" in name for name, _ in model.named_parameters())


# ---------------------------------------------------------------------------------------------- adapter directories


@pytest.fixture
def rime_base(tmp_path):
    """A RIME export, the base model an adapter names."""
    processor = tiny_rime_processor()
    RimeEncoder(tiny_rime_model(processor=processor), processor).save_pretrained(tmp_path / "base", model_card=False)
    return tmp_path / "base"


def test_a_bare_adapter_directory_loads_merged_into_the_base_it_names(tmp_path, rime_base):
    model = RimeForEmbedding.from_pretrained(str(rime_base))
    processor = RimeProcessor.from_pretrained(str(rime_base))
    peft_model = trained_adapter(model, processor)
    expected = disc_embeddings(peft_model, processor)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)  # adapter_config.json + adapter_model.safetensors, no processor
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(rime_base)
    assert not (adapter_dir / "config.json").exists()

    encoder = RimeEncoder.from_pretrained(str(adapter_dir), device="cpu")
    assert type(encoder.model) is RimeForEmbedding and not has_lora_layers(encoder.model)
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-5, rtol=0)
    assert (
        np.abs(
            encoder.encode(TEXTS) - disc_embeddings(RimeForEmbedding.from_pretrained(str(rime_base)), processor)
        ).max()
        > 1e-3
    )

    with pytest.raises(ValueError, match="PEFT adapter.*RimeEncoder.from_pretrained"):
        RimeForEmbedding.from_pretrained(str(adapter_dir))


def test_an_adapter_of_the_backbone_alone_loads_merged_too(tmp_path, rime_base):
    """TRL's policy adapter (Refine-RL under DeepSpeed / FSDP with LoRA) wraps `model.vlm`, not the RIME model."""
    model = RimeForEmbedding.from_pretrained(str(rime_base))
    processor = RimeProcessor.from_pretrained(str(rime_base))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    policy = get_peft_model(model.vlm, config)  # its layers are injected into model.vlm, as TRL's are
    expected = disc_embeddings(model.eval(), processor)
    policy.save_pretrained(tmp_path / "policy-adapter")  # names no RIME base: point it at one
    config_file = tmp_path / "policy-adapter" / "adapter_config.json"
    config_dict = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config_dict, "base_model_name_or_path": str(rime_base)}))

    encoder = RimeEncoder.from_pretrained(str(tmp_path / "policy-adapter"), device="cpu")
    assert type(encoder.model) is RimeForEmbedding and not has_lora_layers(encoder.model)
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-5, rtol=0)


def test_an_adapter_that_does_not_fit_its_base_or_names_none_is_refused(tmp_path, rime_base):
    from safetensors.torch import load_file, save_file

    processor = RimeProcessor.from_pretrained(str(rime_base))
    peft_model = trained_adapter(RimeForEmbedding.from_pretrained(str(rime_base)), processor)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    extra = "base_model.model.vlm.model.language_model.layers.0.mlp.gate_proj.lora_A.weight"
    save_file({**weights, extra: torch.zeros(4, 8)}, adapter_dir / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="does not fit its base model.*gate_proj"):
        RimeEncoder.from_pretrained(str(adapter_dir), device="cpu")

    config_file = adapter_dir / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": None}))
    with pytest.raises(ValueError, match="names no base model"):
        RimeEncoder.from_pretrained(str(adapter_dir), device="cpu")


def test_loading_an_adapter_without_peft_names_the_train_extra(tmp_path, rime_base, monkeypatch):
    processor = RimeProcessor.from_pretrained(str(rime_base))
    trained_adapter(RimeForEmbedding.from_pretrained(str(rime_base)), processor).save_pretrained(tmp_path / "adapter")
    monkeypatch.setitem(sys.modules, "peft", None)  # what a missing package looks like to `import peft`
    with pytest.raises(ImportError, match=r"transformers_rime\[train\]"):
        RimeEncoder.from_pretrained(str(tmp_path / "adapter"), device="cpu")


def test_the_old_lora_output_of_a_stock_backbone_loads_and_exports(tmp_path, capsys):
    """What `train_contrastive.py --use_lora` wrote before: the adapter and the training processor (whose tokenizer
    has the RIME tokens a stock backbone lacks), no config.json. It loads merged, and `rime export` makes it a
    complete export that SentenceTransformer reads."""
    from sentence_transformers import SentenceTransformer

    from transformers_rime.cli import main

    backbone = write_published_checkpoint(tmp_path / "qwen2-vl", with_rime_tokens=False)
    processor = RimeProcessor.from_pretrained(str(backbone))  # adds <disc_emb> / <gen_emb>
    model = RimeForEmbedding.from_pretrained(str(backbone), tokenizer=processor.tokenizer)
    peft_model = trained_adapter(model, processor)
    expected = disc_embeddings(peft_model, processor)
    adapter_dir = tmp_path / "lora-run"
    peft_model.save_pretrained(adapter_dir)
    processor.save_pretrained(adapter_dir)

    encoder = RimeEncoder.from_pretrained(str(adapter_dir), device="cpu")
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-5, rtol=0)

    export = tmp_path / "export"
    assert main(["export", "--model", str(adapter_dir), "--output-dir", str(export)]) == 0, capsys.readouterr().err
    assert {"config.json", "model.safetensors", "modules.json"} <= set(os.listdir(export))
    assert not (export / "adapter_config.json").exists()
    np.testing.assert_allclose(RimeEncoder.from_pretrained(str(export)).encode(TEXTS), expected, atol=1e-5, rtol=0)
    st_model = SentenceTransformer(str(export), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(
        st_model.encode_query(TEXTS), RimeEncoder.from_pretrained(str(export)).encode(TEXTS), atol=1e-5, rtol=0
    )


def test_a_peft_model_saves_merged_and_is_left_as_it_is(tmp_path):
    processor = tiny_rime_processor()
    peft_model = trained_adapter(tiny_rime_model(processor=processor), processor)
    expected = disc_embeddings(peft_model, processor)
    encoder = RimeEncoder(peft_model, processor)
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-5, rtol=0)
    encoder.save_pretrained(tmp_path / "export")

    assert {"config.json", "model.safetensors", "modules.json"} <= set(os.listdir(tmp_path / "export"))
    assert not (tmp_path / "export" / "adapter_config.json").exists()
    loaded = RimeEncoder.from_pretrained(str(tmp_path / "export"), device="cpu")
    np.testing.assert_allclose(loaded.encode(TEXTS), expected, atol=1e-5, rtol=0)
    assert encoder.model is peft_model and has_lora_layers(peft_model)  # not merged in place
    np.testing.assert_allclose(disc_embeddings(peft_model, processor), expected, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------- the contrastive trainer


def contrastive_args(tmp_path, output="out", **overrides) -> RimeContrastiveConfig:
    settings = {
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "seed": 0,
        "max_steps": 2,
        "save_strategy": "steps",
        "save_steps": 1,
        **overrides,
    }
    return RimeContrastiveConfig(str(tmp_path / output), **settings)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_contrastive_checkpoints_and_output_load_with_every_loader(tmp_path, lora):
    from sentence_transformers import SentenceTransformer

    processor = tiny_rime_processor()
    model = tiny_rime_model(processor=processor)
    trainer = RimeContrastiveTrainer(
        model,
        contrastive_args(tmp_path),
        train_dataset=color_object_pairs(8),
        processing_class=processor,
        peft_config=lora_config(processor) if lora else None,
    )
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    checkpoint = out / "checkpoint-1"
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file() == lora
    encoder = RimeEncoder.from_pretrained(str(checkpoint), device="cpu")
    st_model = SentenceTransformer(str(checkpoint), trust_remote_code=True, device="cpu")
    for role, method in (("query", st_model.encode_query), ("document", st_model.encode_document)):
        np.testing.assert_allclose(method(TEXTS), encoder.encode(TEXTS, role=role), atol=1e-5, rtol=0)

    final = RimeEncoder.from_pretrained(str(out), device="cpu")
    assert type(final.model) is RimeForEmbedding and not (out / "adapter").exists()
    trainer.model.eval()
    np.testing.assert_allclose(final.encode(TEXTS), disc_embeddings(trainer.model, processor), atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        SentenceTransformer(str(out), trust_remote_code=True, device="cpu").encode_query(TEXTS),
        final.encode(TEXTS),
        atol=1e-5,
        rtol=0,
    )


def test_lora_contrastive_training_resumes_from_its_checkpoint_exactly(tmp_path):
    processor = tiny_rime_processor()
    rows = color_object_pairs(16)

    def run(output, resume=None):
        model = tiny_rime_model(processor=processor)
        trainer = RimeContrastiveTrainer(
            model,
            contrastive_args(tmp_path, output, max_steps=4, save_steps=2),
            train_dataset=rows,
            processing_class=processor,
            peft_config=lora_config(processor, lora_dropout=0.0),
        )
        result = trainer.train(resume_from_checkpoint=resume)
        return result, trainer

    _, whole = run("whole")
    checkpoint = tmp_path / "whole" / "checkpoint-2"
    result, resumed = run("resumed", resume=str(checkpoint))
    assert result.global_step == 4
    expected, final = whole.merged_model().state_dict(), resumed.merged_model().state_dict()
    assert expected.keys() == final.keys()
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], atol=1e-6, rtol=0, msg=name)


# ---------------------------------------------------------------------------------------------- examples


def load_example(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_refine_rl_example_with_a_model_but_no_data_path_is_a_usage_error(tmp_path, capsys, monkeypatch):
    example = load_example("train_refine_rl", monkeypatch)
    common = [
        "--model_name_or_path",
        str(tmp_path / "stage1"),
        "--output_dir",
        str(tmp_path / "out"),
        "--bf16",
        "False",
    ]
    with pytest.raises(SystemExit) as exit_info:
        example.main(common)  # checked before the (missing) model is looked at
    assert exit_info.value.code == 2
    assert "--data_path is required with --model_name_or_path" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        example.main([*common, "--data_path", "rows.jsonl", "--data_format", "csv"])
    assert exit_info.value.code == 2 and "--data_format 'csv'" in capsys.readouterr().err
