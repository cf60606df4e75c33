"""RimeConfig: backbone wrapping, documented fields, validation, round trip."""

from __future__ import annotations

import pytest
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

from transformers_rime import RimeConfig
from transformers_rime.models.rime.configuration_rime import format_gen_instruction
from transformers_rime.testing import tiny_rime_config, tiny_vlm_config


def test_defaults():
    config = RimeConfig()
    assert isinstance(config.vlm_config, Qwen2VLConfig)
    assert (config.disc_emb_token, config.gen_emb_token) == ("<disc_emb>", "<gen_emb>")
    assert (config.rewrite_start, config.rewrite_end) == ("<rewrite>", "</rewrite>")
    assert (config.pooling, config.normalize, config.max_new_tokens) == ("token", True, 128)
    assert "<rewrite> </rewrite>" in format_gen_instruction(
        config.gen_instruction, config.rewrite_start, config.rewrite_end, config.gen_emb_token
    )
    assert config.hidden_size == config.vlm_config.text_config.hidden_size


def test_backbone_from_object_or_dict():
    backbone = tiny_vlm_config("qwen2_5_vl")
    from_object = RimeConfig(vlm_config=backbone)
    from_dict = RimeConfig(vlm_config=backbone.to_dict())
    assert isinstance(from_dict.vlm_config, Qwen2_5_VLConfig)
    assert from_dict.hidden_size == from_object.hidden_size == 64


def test_round_trip(tmp_path):
    config = tiny_rime_config("qwen3_vl", max_new_tokens=32, query_instruction="Q:")
    config.save_pretrained(tmp_path)
    loaded = RimeConfig.from_pretrained(tmp_path)
    for name in (
        "disc_emb_token_id",
        "gen_emb_token_id",
        "end_of_turn_token_ids",
        "max_new_tokens",
        "query_instruction",
        "gen_instruction",
        "pooling",
    ):
        assert getattr(loaded, name) == getattr(config, name)
    assert loaded.vlm_config.model_type == "qwen3_vl"
    assert loaded.vlm_config.text_config.hidden_size == 64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pooling": "mean"}, "pooling"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"gen_emb_token": "<disc_emb>"}, "must differ"),
        ({"vlm_config": {"model_type": "llama"}}, "not supported"),
    ],
)
def test_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RimeConfig(**kwargs)


def test_attention_backend_reaches_the_backbone():
    config = RimeConfig(vlm_config=tiny_vlm_config(), attn_implementation="eager")
    assert config.vlm_config._attn_implementation == "eager"
    assert config.vlm_config.text_config._attn_implementation == "eager"
