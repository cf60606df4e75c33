"""Refine-RL checkpoints in RIME's own layout: written like `save_model()`, read back to resume training.

TRL saves the policy it trains, a bare backbone, which reloads with default RIME settings (instructions, rewrite
budget, token ids). A RIME checkpoint is the directory `RimeEncoder.save_pretrained` writes (`config.json` of
`model_type` `"rime"`, weights under `vlm.`, the processor, the sentence-transformers files), so the model it
reloads embeds exactly as the trained one did. With LoRA the weights are the merged model; the unmerged adapter is
kept in `adapter/` so that training resumes from it.
"""

from __future__ import annotations

import json
import os
import tempfile

from ..encoder import RimeEncoder
from ..models.rime.configuration_rime import RIME_FIELDS, RimeConfig
from ..models.rime.modeling_rime import RimeForEmbedding


ADAPTER_FOLDER = "adapter"


def is_rime_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a RIME model (`config.json` of `model_type` `"rime"`), not a bare backbone."""
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        return False
    with open(config_file, encoding="utf-8") as f:
        return json.load(f).get("model_type") == RimeConfig.model_type


def save_rime_checkpoint(model: RimeForEmbedding, processor, folder: str | os.PathLike, adapter_model=None) -> None:
    """Write `model` and `processor` as `RimeEncoder.save_pretrained` does, and `adapter_model` (a PEFT model whose
    merged weights `model` holds) unmerged in `folder/adapter`."""
    RimeEncoder(model, processor).save_pretrained(folder)
    if adapter_model is not None:
        adapter_model.save_pretrained(os.path.join(folder, ADAPTER_FOLDER))


def rewrite_as_rime_checkpoint(folder: str | os.PathLike, config: RimeConfig, processor) -> bool:
    """Turn the backbone checkpoint TRL's save wrote in `folder` (DeepSpeed, FSDP: the weights gathered from every
    process) into a RIME checkpoint, in place, with `config`'s RIME settings. Returns `False`, leaving the folder as
    it is, when it holds no weights file (DeepSpeed ZeRO-3 without `stage3_gather_16bit_weights_on_model_save`)."""
    weights = [name for name in os.listdir(folder) if name.startswith("model") and name.endswith(".safetensors")]
    if not weights:
        return False
    settings = {name: getattr(config, name) for name in RIME_FIELDS if name != "vlm_config"}
    model = RimeForEmbedding.from_pretrained(folder, tokenizer=processor.tokenizer, **settings)
    # Written whole next to the old files first, so a failed write (a full disk) never loses the gathered weights.
    with tempfile.TemporaryDirectory(dir=folder) as staging:
        RimeEncoder(model, processor).save_pretrained(staging)
        for name in [*weights, "model.safetensors.index.json"]:  # the RIME shards may be named and split otherwise
            if os.path.isfile(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
    return True


def load_training_checkpoint(
    folder: str | os.PathLike, model: RimeForEmbedding, adapter_model=None, is_trainable: bool = True
) -> None:
    """Put the trained weights of the RIME checkpoint in `folder` back into the model being trained, in place.

    With LoRA (`adapter_model`, the PEFT model being trained) the adapter in `folder/adapter` is loaded. Otherwise
    every weight of `model` is copied from the checkpoint, read with `RimeForEmbedding.from_pretrained` (so stored
    names are mapped as transformers maps them and a missing or unexpected weight is an error); its devices and dtype
    are kept.
    """
    if adapter_model is None:
        saved = RimeForEmbedding.from_pretrained(folder, dtype=model.dtype)
        model.load_state_dict(saved.state_dict())
        return
    adapter_folder = os.path.join(folder, ADAPTER_FOLDER)
    if not os.path.isfile(os.path.join(adapter_folder, "adapter_config.json")):
        raise ValueError(
            f"{folder} holds a merged model but no LoRA adapter in {ADAPTER_FOLDER}/, so LoRA training cannot resume "
            "from it (it was not written as a training checkpoint)."
        )
    adapter_model.load_adapter(adapter_folder, adapter_model.active_adapter, is_trainable=is_trainable)


__all__ = [
    "ADAPTER_FOLDER",
    "is_rime_checkpoint",
    "load_training_checkpoint",
    "rewrite_as_rime_checkpoint",
    "save_rime_checkpoint",
]
