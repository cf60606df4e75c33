"""Save/load round trips, remote code without the package, and the published RIME-2B / UME-R1 layout."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from remote_code import run_without_package
from transformers_rime import RimeConfig, RimeEncoder, RimeForEmbedding, RimeProcessor
from transformers_rime.testing import random_image, tiny_rime_model, tiny_rime_processor, write_published_checkpoint


def _batch(processor, mode="disc"):
    return processor(
        text=["a red car", "what is this?"], images=[None, random_image(seed=4)], mode=mode, return_tensors="pt"
    )


@pytest.fixture
def saved_dir(tmp_path, processor, model):
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return tmp_path


def test_save_load_is_bit_exact(saved_dir, processor, model):
    loaded = RimeForEmbedding.from_pretrained(saved_dir)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    with torch.no_grad():
        assert torch.equal(model(**_batch(processor)).embeddings, loaded(**_batch(processor)).embeddings)
    assert _portable(loaded.config.to_dict()) == _portable(model.config.to_dict())


def _portable(config: dict) -> dict:
    """A config dict without the fields that legitimately change on load (path, resolved dtype)."""
    return {
        k: _portable(v) if isinstance(v, dict) else v for k, v in config.items() if k not in ("_name_or_path", "dtype")
    }


def test_saved_directory_is_safetensors_only_and_self_contained(saved_dir):
    files = set(os.listdir(saved_dir))
    assert {
        "model.safetensors",
        "configuration_rime.py",
        "modeling_rime.py",
        "pooling_rime.py",
        "generation_rime.py",
        "checkpoint_rime.py",
        "processing_rime.py",
        "inputs_rime.py",
    } <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".pth")) for f in files)
    config = json.loads((saved_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_rime.RimeConfig",
        "AutoModel": "modeling_rime.RimeForEmbedding",
    }
    processor_config = json.loads((saved_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_rime.RimeProcessor"


def test_hub_files_import_only_what_their_loaders_have_and_siblings():
    import ast

    import transformers_rime.models.rime as rime

    allowed = {
        "torch",
        "transformers",
        "PIL",
        "numpy",
        "__future__",
        "math",
        "os",
        "inspect",
        "dataclasses",
        "collections",
        "copy",
        "typing",
        "packaging",  # a transformers dependency
        "pathlib",
        "re",
        "io",
        "shutil",
        "tempfile",
        "json",  # stdlib: config.json and the safetensors shard index are read before loading
        "safetensors",  # a transformers dependency: weight headers are checked before any model is built
    }
    folder = os.path.dirname(rime.__file__)
    hub_files = {name: allowed for name in ("configuration_rime.py", "modeling_rime.py", "processing_rime.py")}
    hub_files["inputs_rime.py"] = allowed
    hub_files["pooling_rime.py"] = allowed
    hub_files["generation_rime.py"] = allowed
    hub_files["checkpoint_rime.py"] = allowed
    hub_files["video_rime.py"] = allowed
    hub_files["sentence_transformer_rime.py"] = allowed | {"sentence_transformers"}
    hub_files["pipeline_rime.py"] = allowed
    for name, allowed in hub_files.items():
        allowed = allowed | set(sys.stdlib_module_names)  # the standard library is always there
        tree = ast.parse(open(os.path.join(folder, name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    assert node.level == 1, f"{name}: only single-dot sibling imports survive the Hub copy"
                else:
                    assert node.module.split(".")[0] in allowed, f"{name} imports {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed, f"{name} imports {alias.name}"


def test_processor_round_trip(saved_dir, processor):
    loaded = RimeProcessor.from_pretrained(saved_dir)
    assert type(loaded.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert loaded.tokenizer.padding_side == "left"
    for name in ("query_instruction", "document_instruction", "gen_instruction", "max_video_frames"):
        assert getattr(loaded, name) == getattr(processor, name)
    original, restored = _batch(processor, "gen"), _batch(loaded, "gen")
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)


def test_auto_classes_resolve_to_rime_when_the_package_is_imported(saved_dir):
    assert isinstance(AutoConfig.from_pretrained(saved_dir), RimeConfig)
    assert isinstance(AutoModel.from_pretrained(saved_dir), RimeForEmbedding)
    assert isinstance(AutoProcessor.from_pretrained(saved_dir), RimeProcessor)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch

    from transformers import AutoModel, AutoProcessor
    from PIL import Image
    import numpy as np

    path = sys.argv[1]
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    batch = processor(text=["a red car", "what is this?"], images=[None, image], mode="gen", return_tensors="pt")
    with torch.no_grad():
        disc = model(**batch).embeddings
    gen = model.generate_embeddings(**batch, max_new_tokens=3)
    assert "transformers_rime" not in sys.modules
    print(json.dumps({"cls": type(model).__module__, "disc": disc.tolist(), "gen": gen.embeddings.tolist()}))
    """
)


def test_remote_code_loads_without_the_package(saved_dir, processor, model, tmp_path):
    result = run_without_package(REMOTE_SCRIPT, saved_dir, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["cls"].startswith("transformers_modules.")
    batch = _batch(processor, "gen")
    with torch.no_grad():
        disc = model(**batch).embeddings
    gen = model.generate_embeddings(**batch, max_new_tokens=3).embeddings
    torch.testing.assert_close(torch.tensor(remote["disc"]), disc, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(remote["gen"]), gen, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- published layout


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_published_layout_loads_every_weight(tmp_path, family):
    write_published_checkpoint(tmp_path, family)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert "lm_head.weight" not in stored  # tied embeddings, as in the 2B checkpoints
    model = RimeForEmbedding.from_pretrained(tmp_path)
    reference = AutoModelForImageTextToText.from_pretrained(tmp_path)
    ours, theirs = model.vlm.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # every stored tensor is in the model (nothing left random)
    values = {tuple(v.flatten()[:8].tolist()) for v in stored.values()}
    assert values <= {tuple(v.flatten()[:8].tolist()) for v in ours.values()}
    processor = RimeProcessor.from_pretrained(tmp_path)
    assert model.config.disc_emb_token_id == processor.disc_emb_token_id
    assert model.config.gen_emb_token_id == processor.gen_emb_token_id
    assert model.vlm.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_published_layout_with_a_missing_weight_is_an_error(tmp_path):
    from safetensors.torch import save_file

    write_published_checkpoint(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if "layers.1.mlp.up_proj" not in k}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing_keys"):
        RimeForEmbedding.from_pretrained(tmp_path)


def test_published_layout_with_an_unexpected_weight_is_an_error(tmp_path):
    from safetensors.torch import save_file

    write_published_checkpoint(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["model.extra_projection.weight"] = torch.zeros(4, 4)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unexpected_keys"):
        RimeForEmbedding.from_pretrained(tmp_path)


def test_published_layout_without_rime_tokens_is_an_error(tmp_path):
    from transformers_rime.testing import tiny_tokenizer

    write_published_checkpoint(tmp_path)
    tiny_tokenizer(with_rime_tokens=False).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="<disc_emb>"):
        RimeForEmbedding.from_pretrained(tmp_path)


def test_encoder_round_trip_and_published_layout(tmp_path):
    published = write_published_checkpoint(tmp_path / "published")
    encoder = RimeEncoder.from_pretrained(published, device="cpu")
    items = ["a red car", {"text": "what is this?", "image": random_image(seed=5)}]
    before = encoder.encode(items, mode="gen", max_new_tokens=3)
    encoder.save_pretrained(tmp_path / "rime")
    assert json.loads((tmp_path / "rime" / "config.json").read_text())["model_type"] == "rime"
    after = RimeEncoder.from_pretrained(tmp_path / "rime", device="cpu").encode(items, mode="gen", max_new_tokens=3)
    assert (before == after).all()


def test_config_round_trip_and_family_specific_processor(tmp_path):
    processor = tiny_rime_processor("qwen3_vl")
    model = tiny_rime_model("qwen3_vl", processor=processor)
    model.save_pretrained(tmp_path)
    loaded = RimeForEmbedding.from_pretrained(tmp_path)
    assert loaded.config.vlm_config.model_type == "qwen3_vl"
    assert loaded.vlm.__class__.__name__ == "Qwen3VLForConditionalGeneration"


def test_published_layout_gets_rimes_pixel_budget_unless_one_is_given(tmp_path, saved_dir, processor):
    write_published_checkpoint(tmp_path / "published")
    loaded = RimeProcessor.from_pretrained(tmp_path / "published")
    assert loaded.image_processor.size == {"shortest_edge": 3136, "longest_edge": 2359296}
    chosen = RimeProcessor.from_pretrained(tmp_path / "published", size={"shortest_edge": 784, "longest_edge": 9999})
    assert chosen.image_processor.size["longest_edge"] == 9999
    # a RIME directory keeps the budget it was saved with
    assert RimeProcessor.from_pretrained(saved_dir).image_processor.size == processor.image_processor.size


def test_rime_checkpoint_with_a_missing_weight_is_an_error(saved_dir):
    from safetensors.torch import save_file

    with safe_open(saved_dir / "model.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if "layers.0.self_attn.q_proj" not in k}
    save_file(tensors, saved_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing_keys"):
        RimeForEmbedding.from_pretrained(saved_dir)
    with pytest.raises(ValueError, match="missing_keys"):
        AutoModel.from_pretrained(saved_dir)


def test_output_loading_info_is_still_available(saved_dir):
    model, info = RimeForEmbedding.from_pretrained(saved_dir, output_loading_info=True)
    assert isinstance(model, RimeForEmbedding)
    assert not info["missing_keys"] and not info["unexpected_keys"]


# ----------------------------------------------------------------------------- loading options reach the backbone


@pytest.mark.parametrize("layout", ["published", "rime"])
def test_dtype_reaches_the_weights_in_either_layout(tmp_path, layout):
    """`dtype=` loads the weights in that dtype (bf16 takes half the memory of fp32), through every entry point."""
    path = write_published_checkpoint(tmp_path / "published")
    if layout == "rime":
        RimeEncoder.from_pretrained(path, device="cpu").save_pretrained(tmp_path / "rime", model_card=False)
        path = tmp_path / "rime"
    full = RimeForEmbedding.from_pretrained(path, dtype=torch.float32)
    half = RimeForEmbedding.from_pretrained(path, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.config.dtype == torch.bfloat16
    assert half.get_memory_footprint(return_buffers=False) * 2 == full.get_memory_footprint(return_buffers=False)
    encoder = RimeEncoder.from_pretrained(path, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in encoder.model.parameters()} == {torch.bfloat16}
    assert encoder.encode(["a red car"]).shape == (1, 64)


def test_loading_options_reach_the_backbone_and_rime_options_the_config(tmp_path):
    path = write_published_checkpoint(tmp_path)
    model = RimeForEmbedding.from_pretrained(
        path, attn_implementation="eager", device_map="cpu", max_new_tokens=7, query_instruction="Find:"
    )
    assert model.vlm.model.language_model.config._attn_implementation == "eager"
    assert model.vlm.model.visual.config._attn_implementation == "eager"
    assert (model.config.max_new_tokens, model.config.query_instruction) == (7, "Find:")
    assert model.device.type == "cpu"
    encoder = RimeEncoder.from_pretrained(path, device_map="cpu", attn_implementation="eager")
    assert encoder.model.vlm.model.language_model.config._attn_implementation == "eager"
    assert encoder.encode(["a red car"]).shape == (1, 64)
    with pytest.raises(ValueError, match="either `device` or `device_map`"):
        RimeEncoder.from_pretrained(path, device="cpu", device_map="cpu")
