"""PEFT adapters of RIME models: an adapter directory loads merged into its base model, and a PEFT model is merged
into a copy for saving, so that what is loaded or written is always a plain, complete `RimeForEmbedding`.

peft is an optional dependency (the `train` extra): it is imported only when an adapter is met.
"""

from __future__ import annotations

import copy
import json
import os

from .models.rime.configuration_rime import RimeConfig
from .models.rime.modeling_rime import RimeForEmbedding
from .models.rime.processing_rime import RimeProcessor


ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# The key prefix of an adapter trained on a whole `RimeForEmbedding` (the contrastive trainer's); one trained on its
# backbone alone (TRL's policy, in the Refine-RL trainer) has none of `vlm.`.
RIME_ADAPTER_PREFIX = "base_model.model.vlm."


def import_peft():
    """The `peft` module, or an `ImportError` saying how to install it."""
    try:
        import peft
    except ImportError as error:
        raise ImportError(
            "Loading or merging a PEFT (LoRA) adapter needs the `peft` package: pip install 'transformers_rime[train]'."
        ) from error
    return peft


def is_peft_model(model) -> bool:
    """Whether `model` is a PEFT model (an adapter around a base model), without importing peft."""
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def is_adapter_dir(path, subfolder: str | None = None) -> bool:
    """Whether `path` (joined with `subfolder`) is a local directory holding a PEFT adapter rather than a model: an
    `adapter_config.json` next to no `config.json` or no model weights (`model*.safetensors`). RIME's own training
    checkpoints (weights at the top, the adapter in `adapter/`) are models."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    directory = os.path.expanduser(os.fspath(path))
    if subfolder:
        directory = os.path.join(directory, subfolder)
    if not os.path.isfile(os.path.join(directory, ADAPTER_CONFIG_FILE)):
        return False
    has_weights = any(n.startswith("model") and n.endswith(".safetensors") for n in os.listdir(directory))
    return not (os.path.isfile(os.path.join(directory, "config.json")) and has_weights)


def merged_copy(peft_model, config: RimeConfig | None = None) -> RimeForEmbedding:
    """A `RimeForEmbedding` with the active adapter of `peft_model` merged in; `peft_model` itself is left as it is.

    `peft_model` wraps a whole `RimeForEmbedding`, or its backbone alone: then `config` is the RIME configuration to
    wrap the merged backbone in.
    """
    try:
        merged = copy.deepcopy(peft_model).merge_and_unload()
    except (AttributeError, NotImplementedError, TypeError, ValueError) as error:
        raise ValueError(
            f"Cannot merge the {type(peft_model).__name__} adapter into its base model ({error}); only adapters that "
            "merge (LoRA and its variants) make a complete RIME model. Save the adapter with the PEFT model's own "
            "`save_pretrained`, or merge it yourself."
        ) from error
    # TRL replaces the policy's `forward` with a fused-LM-head wrapper that calls the *original* model's forward; a
    # copy keeping it would silently run the training model. Drop it: the class forward is the stock one.
    merged.__dict__.pop("forward", None)
    if isinstance(merged, RimeForEmbedding):
        return merged
    if config is None:
        raise TypeError(
            f"The PEFT model wraps a {type(merged).__name__}, not a RimeForEmbedding: pass the RIME config to wrap it."
        )
    return RimeForEmbedding(config, vlm=merged)


def load_adapter_dir(
    adapter_dir: str | os.PathLike,
    preset: str | None = None,
    model_kwargs: dict | None = None,
    processor_kwargs: dict | None = None,
) -> tuple[RimeForEmbedding, RimeProcessor]:
    """Load the PEFT adapter in `adapter_dir` onto the base model its `adapter_config.json` names
    (`base_model_name_or_path`: a RIME directory, a published checkpoint or a Hub id, loaded as
    `RimeForEmbedding.from_pretrained` loads it), merge it, and return the merged model and its processor.

    The processor is the adapter directory's own when it has one (the trainer saves it there: its tokenizer holds the
    RIME tokens added for training, which a stock backbone's lacks), else the base model's. The adapter must fit the
    base model: a weight of it that the base has no place for is an error, not a silently ignored adapter.
    """
    model_kwargs = dict(model_kwargs or {})
    processor_kwargs = dict(processor_kwargs or {})
    directory = os.path.expanduser(os.fspath(adapter_dir))
    subfolder = model_kwargs.pop("subfolder", None) or ""
    processor_kwargs.pop("subfolder", None)
    for kwargs in (model_kwargs, processor_kwargs):
        kwargs.pop("revision", None)  # the adapter directory's, not the base model's
    directory = os.path.join(directory, subfolder) if subfolder else directory
    peft = import_peft()
    config_file = os.path.join(directory, ADAPTER_CONFIG_FILE)
    weights_file = os.path.join(directory, ADAPTER_WEIGHTS_FILE)
    with open(config_file, encoding="utf-8") as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{config_file}: a PEFT adapter that names no base model (base_model_name_or_path is {base!r}). Load the "
            "base with RimeForEmbedding.from_pretrained, then `peft.PeftModel.from_pretrained(base, adapter_dir)"
            ".merge_and_unload()`."
        )
    if not os.path.isfile(weights_file):
        raise ValueError(
            f"{directory} holds a PEFT adapter without {ADAPTER_WEIGHTS_FILE}; RIME loads safetensors only (pickled "
            "weights can run code when loaded)."
        )
    if os.path.isfile(os.path.join(directory, "processor_config.json")):
        processor = RimeProcessor.from_pretrained(directory, preset=preset, **processor_kwargs)
        model_kwargs["tokenizer"] = processor.tokenizer
        model = RimeForEmbedding.from_pretrained(base, preset=preset, **model_kwargs)
    else:
        model = RimeForEmbedding.from_pretrained(base, preset=preset, **model_kwargs)
        processor = RimeProcessor.from_pretrained(base, preset=preset, **processor_kwargs)

    from safetensors import safe_open

    with safe_open(weights_file, "pt") as f:
        stored = set(f.keys())
    whole = all(key.startswith(RIME_ADAPTER_PREFIX) for key in stored)
    adapted = peft.PeftModel.from_pretrained(model if whole else model.vlm, directory)
    unused = sorted(stored - set(peft.get_peft_model_state_dict(adapted)))
    if unused:
        raise ValueError(
            f"The adapter in {directory} does not fit its base model {base}: it has no place for "
            f"{unused[:5]}{' ...' if len(unused) > 5 else ''}; refusing a partly applied adapter."
        )
    merged = adapted.merge_and_unload()  # merged in place: the base model's own modules
    if not whole:
        model.vlm = merged
        merged = model
    return merged.eval(), processor


__all__ = ["import_peft", "is_adapter_dir", "is_peft_model", "load_adapter_dir", "merged_copy"]
