"""Training checkpoints in RIME's own layout (both trainers): written like `save_model()`, read back to resume.

TRL saves the policy it trains, a bare backbone, which reloads with default RIME settings (instructions, rewrite
budget, token ids); `transformers.Trainer` saves a LoRA model as a bare adapter and no sentence-transformers files.
A RIME checkpoint is the directory `RimeEncoder.save_pretrained` writes (`config.json` of
`model_type` `"rime"`, weights under `vlm.`, the processor, the sentence-transformers files), so the model it
reloads embeds exactly as the trained one did. With LoRA the weights are the merged model; the unmerged adapter is
kept in `adapter/` so that training resumes from it.
"""

from __future__ import annotations

import json
import os
import tempfile

from transformers.utils import logging

from ..adapters import merged_copy
from ..encoder import RimeEncoder
from ..models.rime.configuration_rime import RIME_FIELDS, RimeConfig
from ..models.rime.modeling_rime import RimeForEmbedding
from ..models.rime.processing_rime import RimeProcessor


logger = logging.get_logger(__name__)

ADAPTER_FOLDER = "adapter"
NEEDS_PROCESSOR = "Pass processing_class=RimeProcessor(...) (or give `model` as a checkpoint path)."


def load_model_to_train(
    path: str | os.PathLike, processing_class: RimeProcessor | None = None, share_tokenizer: bool = False
) -> tuple[RimeForEmbedding, RimeProcessor]:
    """The model a trainer starts from when given a checkpoint path (RIME or published backbone layout), and the
    processor, loaded from `path` unless given. With `share_tokenizer`, the RIME token ids of a published checkpoint
    are read from the processor's tokenizer instead of loading the checkpoint's again."""
    if processing_class is None:
        processing_class = RimeProcessor.from_pretrained(path)
    kwargs = {"tokenizer": processing_class.tokenizer} if share_tokenizer else {}
    return RimeForEmbedding.from_pretrained(path, **kwargs), processing_class


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


class RimeCheckpointMixin:
    """Saving and resuming in RIME's layout, for a `transformers.Trainer` subclass (listed before it) that trains
    `self.rime_model`, a `RimeForEmbedding`, in full or through a PEFT adapter (`self.model`: around the whole model,
    or around its backbone alone).

    `save_model()` writes what `RimeEncoder.save_pretrained` writes (a LoRA adapter merged in), so the result loads
    everywhere like any other RIME model, with the trained model's settings. The checkpoints written during training
    (`_internal_call`) have the same layout, plus, with LoRA, the unmerged adapter in `adapter/`, which
    `train(resume_from_checkpoint=...)` continues from. Under DeepSpeed or FSDP, whose weights are sharded across
    processes, the trainer's own save gathers them and the first process rewrites its output as a RIME checkpoint (a
    LoRA adapter is then left as the trainer saved it, unmerged). Folders in another layout are left to the trainer.
    """

    rime_model: RimeForEmbedding

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not isinstance(self.rime_model, RimeForEmbedding):
            return super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            # collective (every process takes part in the gather); the push, if any, comes after the rewrite
            super().save_model(output_dir, _internal_call=True)
            self.accelerator.wait_for_everyone()
            if self.args.should_save and self._adapter_model() is None:
                if not rewrite_as_rime_checkpoint(output_dir, self.rime_model.config, self.processing_class):
                    logger.warning(f"{output_dir} holds no gathered weights; it stays in the sharded layout.")
        elif self.args.should_save:
            adapter = self._adapter_model() if _internal_call else None
            save_rime_checkpoint(self.merged_model(), self.processing_class, output_dir, adapter_model=adapter)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub and not _internal_call:  # as Trainer.save_model does
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def merged_model(self) -> RimeForEmbedding:
        """The trained `RimeForEmbedding`: the model itself, or a merged copy when a LoRA adapter is trained."""
        adapter = self._adapter_model()
        if adapter is None:
            return self.rime_model
        return merged_copy(adapter, self.rime_model.config).eval()

    def _adapter_model(self):
        """The PEFT model being trained, or `None` for a full fine-tune."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        return unwrapped if hasattr(unwrapped, "merge_and_unload") else None

    def _reads_rime_checkpoint(self, folder) -> bool:
        return (
            isinstance(self.rime_model, RimeForEmbedding)
            and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
            and folder is not None
            and is_rime_checkpoint(folder)
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not self._reads_rime_checkpoint(resume_from_checkpoint):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)  # the trainer's own layout
        load_training_checkpoint(resume_from_checkpoint, self.rime_model, self._adapter_model(), is_trainable=True)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if not self._reads_rime_checkpoint(best):
            return super()._load_best_model()
        logger.info(f"Loading best model from {best} (score: {self.state.best_metric}).")
        load_training_checkpoint(best, self.rime_model, self._adapter_model(), is_trainable=False)


__all__ = [
    "ADAPTER_FOLDER",
    "NEEDS_PROCESSOR",
    "RimeCheckpointMixin",
    "is_rime_checkpoint",
    "load_model_to_train",
    "load_training_checkpoint",
    "rewrite_as_rime_checkpoint",
    "save_rime_checkpoint",
]
