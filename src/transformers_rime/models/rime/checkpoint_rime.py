# Copyright 2026 The transformers_rime authors. Licensed under the Apache License, Version 2.0.
"""What RIME checks of a checkpoint, and reads of the published RIME-2B / UME-R1 layout, before any model is built.

`check_checkpoint` runs first in `RimeForEmbedding.from_pretrained`: safetensors only, never a directory's own code,
a supported `model_type`, a token-embedding shape that matches `config.json` (read from the safetensors headers). A
published (plain backbone) checkpoint gets its RIME token ids from its tokenizer (`published_token_ids`), and a
loaded model with a missing, unexpected or mismatched weight is refused (`raise_on_random_weights`).

This file ships to the Hub next to the weights (``trust_remote_code``): it imports only ``transformers``,
``safetensors`` (a transformers dependency, to read weight headers), the standard library and its sibling
configuration file.
"""

from __future__ import annotations

import json
import os

from safetensors import safe_open
from transformers import AutoConfig

from .configuration_rime import (
    DISC_EMB_TOKEN,
    END_OF_TURN_TOKENS,
    GEN_EMB_TOKEN,
    SUPPORTED_BACKBONES,
    PreTrainedConfig,
    RimeConfig,
    select_hub_kwargs,
)


# Weight files that `torch.load` would unpickle (which can run code): refused.
PICKLED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_checkpoint(path, kwargs: dict):
    """Check a checkpoint before anything is built, and set the safe loading options in `kwargs` (in place).

    - `trust_remote_code` is dropped and `use_safetensors=True` set (`use_safetensors=False` is an error);
    - a local path (see `local_model_dir`) must be a directory (`FileNotFoundError` otherwise) and must hold
      safetensors weights, not only pickled ones (`*.bin`, `*.pt`, ...), and must be a model, not a PEFT adapter
      alone (`RimeEncoder.from_pretrained` loads one, merged into its base);
    - `config.json` must be valid JSON with `model_type` `rime` (with a `vlm_config`) or a supported backbone;
    - for a local directory, the token-embedding shape in the safetensors headers must be the config's text
      `vocab_size` x `hidden_size` (only the headers are read).

    Returns the path (with `~` expanded) and the checkpoint's `model_type`. Every error is a `ValueError` naming
    the file, except the missing directory.
    """
    kwargs.pop("trust_remote_code", None)  # never run a directory's own code: every supported type is built in
    if kwargs.get("use_safetensors") is False:
        raise ValueError("RIME loads safetensors only; `use_safetensors=False` is not supported.")
    kwargs["use_safetensors"] = True
    subfolder = kwargs.get("subfolder") or ""
    directory = local_model_dir(path, subfolder)
    if directory is not None:
        if os.fspath(path).startswith("~"):
            path = os.path.expanduser(os.fspath(path))
        refuse_adapter_dir(directory)
        refuse_pickled_weights(directory)
    config = kwargs.get("config")
    if isinstance(config, PreTrainedConfig):
        config_file = "the `config` argument"
        model_type = config.model_type
        check_model_type(model_type, config.to_dict(), config_file)
    else:
        source = config if config is not None else path
        config_dict, config_file = read_config_dict(source, subfolder, kwargs)
        model_type = config_dict.get("model_type")
        check_model_type(model_type, config_dict, config_file)
        config = None
        if directory is not None:
            rest = {k: v for k, v in config_dict.items() if k != "model_type"}
            if model_type == RimeConfig.model_type:
                config = RimeConfig.from_dict(rest)
            else:
                config = AutoConfig.for_model(model_type, **rest)
    if directory is not None:
        check_embedding_shape(directory, config, config_file)
    return path, model_type


def local_model_dir(path, subfolder: str = "") -> str | None:
    """The local model directory `path` (joined with `subfolder`) names, or `None` for a Hub repository id.

    A path is local when it exists, is a `PathLike`, is absolute, starts with `.` or `~`, or holds more than one
    separator (a Hub id holds one: `org/name`). A local path that is not a directory is a `FileNotFoundError`,
    rather than a confusing Hub error.
    """
    name = os.fspath(path)
    local = (
        isinstance(path, os.PathLike)
        or os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count(os.sep) > 1
        or os.path.exists(name)
    )
    if not local:
        return None
    directory = os.path.join(os.path.expanduser(name), subfolder) if subfolder else os.path.expanduser(name)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"model directory not found: {directory}")
    return directory


def refuse_adapter_dir(directory: str) -> None:
    """Raise a `ValueError` pointing to `RimeEncoder.from_pretrained` when `directory` holds a PEFT adapter (an
    `adapter_config.json`) and no model (no `config.json` or no `model*.safetensors` weights)."""
    names = os.listdir(directory)
    if "adapter_config.json" not in names:
        return
    if "config.json" in names and any(n.startswith("model") and n.endswith(".safetensors") for n in names):
        return
    raise ValueError(
        f"{directory} holds a PEFT adapter (adapter_config.json), not a complete model. Load it with "
        "`transformers_rime.RimeEncoder.from_pretrained`, which loads the base model the adapter names and merges "
        "the adapter in (it needs peft: pip install 'transformers_rime[train]'); `rime export` turns it into a "
        "complete model directory."
    )


def refuse_pickled_weights(directory: str) -> None:
    """Raise a `ValueError` naming the files when `directory` holds pickled weights and no safetensors ones."""
    names = sorted(os.listdir(directory))
    if any(name.endswith(".safetensors") for name in names):
        return
    pickled = [os.path.join(directory, name) for name in names if name.endswith(PICKLED_WEIGHT_SUFFIXES)]
    if pickled:
        raise ValueError(
            f"RIME loads safetensors only, and {directory} holds pickled weights ({', '.join(pickled)}), which can "
            "run code when loaded. Convert them to safetensors (e.g. load them yourself in a trusted environment and "
            "`save_pretrained(..., safe_serialization=True)`)."
        )


def read_config_dict(source, subfolder: str, kwargs: dict) -> tuple[dict, str]:
    """`config.json` of `source` (a local directory or file, or a Hub id) as a dict, and the file's name.

    A local file that is missing is a `FileNotFoundError` and one that is not a JSON object a `ValueError`, each
    naming the file.
    """
    name = os.fspath(source)
    if os.path.isfile(os.path.expanduser(name)):
        config_file = os.path.expanduser(name)
    else:
        directory = local_model_dir(source, subfolder)
        if directory is None:  # a Hub id: transformers fetches (and checks) the file
            config_dict, _ = PreTrainedConfig.get_config_dict(source, **select_hub_kwargs(kwargs))
            return config_dict, f"config.json of {source}"
        config_file = os.path.join(directory, "config.json")
    try:
        with open(config_file, encoding="utf-8") as f:
            config_dict = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{config_file} not found: a model directory needs a config.json.") from None
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{config_file} is not valid JSON: {error}") from error
    if not isinstance(config_dict, dict):
        raise ValueError(f"{config_file} is not a JSON object.")
    return config_dict, config_file


def check_model_type(model_type, config_dict: dict, config_file: str) -> None:
    """Raise a `ValueError` naming `config_file` unless its `model_type` is one RIME builds itself, consistently
    with its content (a RIME config edited to a backbone `model_type` would build a default-size backbone)."""
    supported = (RimeConfig.model_type, *SUPPORTED_BACKBONES)
    if model_type not in supported:
        raise ValueError(
            f"{config_file}: model_type {model_type!r} is not supported; RIME loads {', '.join(supported)} "
            "(it never runs a checkpoint's own code)."
        )
    has_vlm_config = isinstance(config_dict.get("vlm_config"), dict)
    if model_type != RimeConfig.model_type and "vlm_config" in config_dict:
        raise ValueError(
            f"{config_file}: model_type {model_type!r} does not match its content, a RIME configuration (it has a "
            f"`vlm_config`). Set its model_type back to {RimeConfig.model_type!r}."
        )
    if model_type == RimeConfig.model_type and not has_vlm_config:
        raise ValueError(
            f"{config_file}: a {RimeConfig.model_type!r} configuration needs its backbone's `vlm_config`."
        )


def check_embedding_shape(directory: str, config: PreTrainedConfig, config_file: str) -> None:
    """Raise a `ValueError` naming both files and both shapes when a token-embedding tensor stored in the
    safetensors files of `directory` is not `config`'s text `vocab_size` x `hidden_size`. Reads headers only."""
    text_config = config.get_text_config()
    expected = (text_config.vocab_size, text_config.hidden_size)
    for weights_file, key, shape in embedding_shapes(directory):
        if shape != expected:
            raise ValueError(
                f"{config_file} does not match the weights in {weights_file}: the config describes a token "
                f"embedding of vocab_size x hidden_size = {expected}, the weights hold {key} of shape {shape}. "
                "Was config.json edited or copied from another model?"
            )


def embedding_shapes(directory: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """`(file, key, shape)` of every tensor whose key ends in `embed_tokens.weight` in the safetensors files of
    `directory` (found through `model.safetensors.index*.json` when sharded). Reads headers only."""
    names = sorted(os.listdir(directory))
    indexes = [n for n in names if n.startswith("model.safetensors.index") and n.endswith(".json")]
    targets: dict[str, list[str] | None] = {}
    for index in indexes:
        index_file = os.path.join(directory, index)
        try:
            with open(index_file, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            found = [(key, file) for key, file in weight_map.items() if key.endswith("embed_tokens.weight")]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{index_file} is not a valid safetensors index: {error!r}") from error
        for key, file in found:
            targets.setdefault(file, []).append(key)
    if not indexes:
        targets = {name: None for name in names if name.endswith(".safetensors")}
    shapes = []
    for file, keys in targets.items():
        weights_file = os.path.join(directory, file)
        if not os.path.isfile(weights_file):
            continue  # a missing shard: transformers names it when loading
        try:
            with safe_open(weights_file, "pt") as f:
                for key in keys if keys is not None else [k for k in f.keys() if k.endswith("embed_tokens.weight")]:
                    shapes.append((weights_file, key, tuple(f.get_slice(key).get_shape())))
        except Exception as error:  # safetensors' own error type is not importable from a stable place
            raise ValueError(f"Cannot read the safetensors header of {weights_file}: {error}") from error
    return shapes


# --------------------------------------------------------------------------- the published layout, after the checks


def published_token_ids(vocab: dict[str, int], path, rime_kwargs: dict) -> dict[str, int]:
    """`{"disc_emb_token_id": ..., "gen_emb_token_id": ...}` from a published checkpoint's tokenizer `vocab`, for
    the tokens `rime_kwargs` names (`disc_emb_token` / `gen_emb_token`, by default `<disc_emb>` / `<gen_emb>`).

    A tokenizer without them (a stock Qwen-VL backbone) is a `ValueError` naming `path` and the way to train from one.
    """
    token_ids = {}
    for name, default in (("disc_emb", DISC_EMB_TOKEN), ("gen_emb", GEN_EMB_TOKEN)):
        token = rime_kwargs.get(f"{name}_token", default)
        if token not in vocab:
            raise ValueError(
                f"The tokenizer of {path} has no {token}; this is not a RIME / UME-R1 checkpoint. To train from a "
                "stock Qwen-VL backbone, pass `tokenizer=processor.tokenizer` of a RimeProcessor (it adds the "
                "RIME tokens) to RimeForEmbedding.from_pretrained."
            )
        token_ids[f"{name}_token_id"] = vocab[token]
    return token_ids


def end_of_turn_token_ids(vocab: dict[str, int]) -> list[int]:
    """The ids of the `END_OF_TURN_TOKENS` that `vocab` holds, in that order."""
    return [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]


def raise_on_random_weights(path, loading_info: dict) -> None:
    """A missing, unexpected or mismatched weight would leave part of the model random: refuse it."""
    problems = {k: sorted(loading_info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        detail = "; ".join(f"{k}: {v[:5]}{' ...' if len(v) > 5 else ''}" for k, v in problems.items())
        raise ValueError(f"Checkpoint {path} does not match the model ({detail}); refusing random weights.")


__all__ = [
    "PICKLED_WEIGHT_SUFFIXES",
    "check_checkpoint",
    "check_embedding_shape",
    "check_model_type",
    "embedding_shapes",
    "end_of_turn_token_ids",
    "local_model_dir",
    "published_token_ids",
    "raise_on_random_weights",
    "read_config_dict",
    "refuse_adapter_dir",
    "refuse_pickled_weights",
]
