"""Loading fails fast and safely: every check runs before a model is built, and every error names the file."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel

from transformers_rime import RimeEncoder, RimeForEmbedding
from transformers_rime.models.rime import modeling_rime
from transformers_rime.models.rime.configuration_rime import SUPPORTED_BACKBONES
from transformers_rime.testing import write_published_checkpoint


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return write_published_checkpoint(tmp_path_factory.mktemp("published"))


@pytest.fixture(scope="module")
def rime_export(tmp_path_factory, published):
    path = tmp_path_factory.mktemp("rime")
    RimeEncoder.from_pretrained(published, device="cpu").save_pretrained(path, model_card=False)
    return path


@pytest.fixture
def no_model_building(monkeypatch):
    """Fail the test if anything gets as far as building a model (the backbone, or a RIME one)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built")

    class Refuse:
        from_pretrained = from_config = staticmethod(refuse)

    monkeypatch.setattr(modeling_rime, "AutoModelForImageTextToText", Refuse)
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))


def _copy(src, dst, skip=()):
    dst.mkdir()
    for name in os.listdir(src):
        if name not in skip and os.path.isfile(src / name):
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


# ----------------------------------------------------------------------------- 1. config / weights mismatch


def test_rime_config_edited_to_a_backbone_type_fails_before_building(tmp_path, rime_export, no_model_building):
    path = _copy(rime_export, tmp_path / "edited")
    _edit_config(path, model_type="qwen2_vl")
    config_file = re.escape(str(path / "config.json"))
    with pytest.raises(ValueError, match=rf"{config_file}: model_type 'qwen2_vl' does not match .*vlm_config"):
        RimeForEmbedding.from_pretrained(path)
    with pytest.raises(ValueError, match=rf"{config_file}: model_type 'qwen2_vl'"):
        RimeEncoder.from_pretrained(path, device="cpu")


def test_embedding_shape_mismatch_names_both_files_and_shapes(tmp_path, published, no_model_building):
    path = _copy(published, tmp_path / "resized")
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["vocab_size"] = 999
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        RimeForEmbedding.from_pretrained(path)
    message = str(error.value)
    assert str(path / "config.json") in message and str(path / "model.safetensors") in message
    assert "(999, 64)" in message and "(448, 64)" in message


def test_embedding_shape_is_read_through_the_shard_index(tmp_path, rime_export, no_model_building):
    from safetensors import safe_open

    path = _copy(rime_export, tmp_path / "sharded", skip=("model.safetensors",))
    with safe_open(rime_export / "model.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    embed = next(k for k in tensors if k.endswith("embed_tokens.weight"))
    first = {k: v for k, v in tensors.items() if k != embed}
    save_file(first, path / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    save_file({embed: torch.zeros(500, 64)}, path / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first} | {embed: "model-00002-of-00002.safetensors"}
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(ValueError, match=r"model-00002-of-00002\.safetensors.*\(500, 64\)"):
        RimeForEmbedding.from_pretrained(path)


# ----------------------------------------------------------------------------- 2. unknown model_type


@pytest.mark.parametrize("auto_map", [None, {"AutoModelForImageTextToText": "modeling_foo.FooModel"}])
def test_unknown_model_type_is_refused_without_running_code(tmp_path, published, no_model_building, auto_map):
    path = _copy(published, tmp_path / "foo")
    (path / "modeling_foo.py").write_text("raise SystemExit('remote code ran')\n")
    _edit_config(path, model_type="foo", **({"auto_map": auto_map} if auto_map else {}))
    expected = rf"model_type 'foo' is not supported; RIME loads rime, {', '.join(SUPPORTED_BACKBONES)}"
    with pytest.raises(ValueError, match=expected):
        RimeForEmbedding.from_pretrained(path, trust_remote_code=True)
    with pytest.raises(ValueError, match=expected):
        RimeEncoder.from_pretrained(path, device="cpu", trust_remote_code=True)


# ----------------------------------------------------------------------------- 3. pickled weights


def test_pickled_weights_are_refused_before_loading(tmp_path, published, no_model_building):
    path = _copy(published, tmp_path / "pickled", skip=("model.safetensors",))
    torch.save({"x": torch.zeros(1)}, path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=rf"safetensors only.*{re.escape(str(path / 'pytorch_model.bin'))}"):
        RimeForEmbedding.from_pretrained(path)
    with pytest.raises(ValueError, match="safetensors only"):
        RimeForEmbedding.from_pretrained(published, use_safetensors=False)


def test_safetensors_is_asked_of_the_underlying_loaders(published, monkeypatch):
    seen = {}
    original = modeling_rime.AutoModelForImageTextToText.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling_rime.AutoModelForImageTextToText, "from_pretrained", spy)
    RimeForEmbedding.from_pretrained(published, trust_remote_code=True)
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False


# ----------------------------------------------------------------------------- 4. missing local directory


@pytest.mark.parametrize("kind", ["absolute", "relative", "nested", "pathlib"])
def test_missing_local_directory_is_a_file_not_found_error(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    path = {
        "absolute": str(tmp_path / "nope"),
        "relative": "./nope",
        "nested": "models/org/nope",
        "pathlib": tmp_path / "nope",
    }[kind]
    with pytest.raises(FileNotFoundError, match="model directory not found: .*nope"):
        RimeForEmbedding.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        RimeEncoder.from_pretrained(path, device="cpu")


# ----------------------------------------------------------------------------- 5. load errors name the file


def test_invalid_config_json_names_the_file(tmp_path, published, no_model_building):
    path = _copy(published, tmp_path / "broken")
    (path / "config.json").write_text('{"model_type": "qwen2_vl",')
    with pytest.raises(ValueError, match=rf"{re.escape(str(path / 'config.json'))} is not valid JSON"):
        RimeForEmbedding.from_pretrained(path)


# ----------------------------------------------------------------------------- 6. stock backbone in the encoder


def test_encoder_refuses_a_stock_backbone_but_training_can_start_from_it(tmp_path):
    from transformers_rime import RimeProcessor

    backbone = write_published_checkpoint(tmp_path / "stock", with_rime_tokens=False)
    with pytest.raises(ValueError, match="has no <disc_emb>"):
        RimeEncoder.from_pretrained(backbone, device="cpu")
    # the training path: the processor adds the tokens and the model reads their ids from its tokenizer
    processor = RimeProcessor.from_pretrained(backbone)
    model = RimeForEmbedding.from_pretrained(backbone, tokenizer=processor.tokenizer)
    assert model.config.disc_emb_token_id == processor.disc_emb_token_id


def test_encoder_still_loads_both_layouts(published, rime_export):
    for path in (published, rime_export):
        encoder = RimeEncoder.from_pretrained(path, device="cpu")
        assert encoder.model.config.gen_emb_token_id == encoder.processor.gen_emb_token_id
        assert encoder.encode(["a red car"]).shape == (1, 64)
