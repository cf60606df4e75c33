# Copyright 2026 The transformers_rime authors. Licensed under the Apache License, Version 2.0.
"""sentence-transformers module for RIME: what `SentenceTransformer(path, trust_remote_code=True)` runs.

This file ships to the Hub next to the weights. `modules.json` names it as the model's only module; it loads the
model and processor through `AutoModel` / `AutoProcessor` (so the sibling RIME files do the work) and builds every
prompt with `RimeProcessor.process_inputs`, the method `RimeEncoder` uses, so both render identical prompts.

How sentence-transformers' switches map onto RIME:

- `encode_query` / `encode_document` pass `task="query"` / `"document"` (the role) and the prompts
  `"query"` / `"document"` from `config_sentence_transformers.json`, which hold the model's instructions. The
  prompt becomes RIME's instruction, inside the user turn before the item's text (not a system message), exactly
  where `RimeEncoder` puts it. Plain `encode` embeds as a query with the query instruction, like `RimeEncoder.encode`.
- `mode="gen"` (an extra keyword of `encode*`) switches to the generative embedding: the model writes its rewrite,
  then the embedding is read at `<gen_emb>`. `max_new_tokens=` bounds the rewrite. The default mode is `"disc"`.
"""

from __future__ import annotations

import os

import sentence_transformers
import torch
from packaging.version import Version
from sentence_transformers.base.modules.input_module import InputModule
from transformers import AutoModel, AutoProcessor

from .configuration_rime import SUPPORTED_SENTENCE_TRANSFORMERS
from .processing_rime import MODES, ROLES, check_choice


# what the model's forward / generate_embeddings take from a processed batch
MODEL_INPUT_NAMES = (
    "input_ids",
    "attention_mask",
    "mm_token_type_ids",
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
)


def check_sentence_transformers_version(version: str | None = None) -> None:
    """Raise an `ImportError` naming the supported range if `version` (default: installed) is outside it."""
    found = Version(version or sentence_transformers.__version__)
    low, high = SUPPORTED_SENTENCE_TRANSFORMERS
    if not low <= Version(found.base_version) < high:
        raise ImportError(
            f"This RIME model's sentence-transformers module needs sentence-transformers>={low},<{high}, found "
            f"{found}: pip install 'sentence-transformers>={low},<{high}'."
        )


check_sentence_transformers_version()


def _is_message(item) -> bool:
    if isinstance(item, dict):
        return "role" in item and "content" in item
    return isinstance(item, list) and bool(item) and isinstance(item[0], dict) and "role" in item[0]


class RimeSentenceTransformerModule(InputModule):
    r"""
    The whole RIME model as one sentence-transformers input module: items in, `sentence_embedding` out.

    Inputs are the items `RimeEncoder.encode` takes: texts, image paths, PIL images, `{"text": ..., "image": ...}`
    dicts and `{"video": [frames]}` dicts (a bare list of frames would read as a batch). Chat-message inputs are
    refused: RIME builds its own prompt around `<disc_emb>`.

    Args:
        model (`RimeForEmbedding`): the embedding model.
        processor (`RimeProcessor`): its processor.
        mode (`str`, *optional*, defaults to `"disc"`): default embedding mode, overridden per call by `mode=`.
        max_new_tokens (`int`, *optional*): default rewrite budget in gen mode (`None`: the model config's).
        max_seq_length (`int`, *optional*): refuse prompts longer than this (default: the backbone's context length;
            RIME never truncates).

    Export with `RimeEncoder.save_pretrained`, which writes `modules.json` naming this file. (A `SentenceTransformer`
    built in-process from the installed class saves a `modules.json` that names the installed package instead.)

    Example (with `transformers_rime` installed; the exported directory needs only this file):

    ```python
    >>> from sentence_transformers import SentenceTransformer
    >>> from transformers_rime.testing import tiny_rime_model, tiny_rime_processor
    >>> processor = tiny_rime_processor()
    >>> module = RimeSentenceTransformerModule(tiny_rime_model(processor=processor), processor)
    >>> st = SentenceTransformer(modules=[module], prompts={"query": processor.query_instruction, "document": ""})
    >>> st.encode_query(["a red car"]).shape
    (1, 64)
    >>> st.encode_document(["a blue bike"], mode="gen", max_new_tokens=4).shape
    (1, 64)

    ```
    """

    config_file_name = "rime_sentence_transformers_config.json"
    config_keys = ["mode", "max_new_tokens", "max_seq_length"]
    forward_kwargs = {"task", "mode", "max_new_tokens"}
    save_in_root = True

    def __init__(
        self,
        model,
        processor,
        mode: str = "disc",
        max_new_tokens: int | None = None,
        max_seq_length: int | None = None,
    ):
        super().__init__()
        self.model = model
        self.processor = processor
        processor.adopt_config(model.config)
        check_choice("mode", mode, MODES)
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.max_seq_length = max_seq_length

    @property
    def modalities(self) -> list:
        # "message" lets sentence-transformers hand over batches that mix modalities; real chat messages are refused
        # in `preprocess`.
        return ["text", "image", "video", ("image", "text"), ("text", "video"), "message"]

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def get_embedding_dimension(self) -> int:
        return self.model.config.hidden_size

    def preprocess(
        self, inputs, prompt: str | None = None, task: str | None = None, mode: str | None = None, **kwargs
    ):
        """Items to a batch: `prompt` is the instruction, `task` the role (`None`: query), `mode` disc or gen."""
        if any(_is_message(item) for item in inputs):
            raise ValueError(
                "RIME does not take chat-message inputs: pass texts, image paths, PIL images or dicts with "
                "'text'/'image'/'images'/'video'. The model builds its own prompt around <disc_emb>."
            )
        if kwargs.get("processing_kwargs"):
            raise ValueError(
                "RIME builds its batches itself and takes no `processing_kwargs`; the pixel budget is the processor's "
                "(saved in processor_config.json) and prompts are never truncated (set `max_seq_length` to refuse long "
                "ones)."
            )
        role, mode = task or "query", mode or self.mode
        check_choice("task", role, ROLES)
        check_choice("mode", mode, MODES)
        # bounded by default: the backbone's context, unless `max_seq_length` is set
        limit = self.max_seq_length
        if limit is None:
            limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return dict(self.processor.process_inputs(list(inputs), mode, role, prompt, limit))

    def forward(self, features: dict, task: str | None = None, mode: str | None = None, max_new_tokens=None, **kwargs):
        """Embed a batch from `preprocess` (run with the same `mode`); adds `sentence_embedding`, `(batch, dim)`."""
        mode = mode or self.mode
        check_choice("mode", mode, MODES)
        # the backbone casts pixel_values to its own dtype, so a bf16 model takes the processor's float32 directly
        inputs = {name: features[name] for name in MODEL_INPUT_NAMES if name in features}
        if mode == "disc":
            output = self.model(**inputs)
            features["token_embeddings"] = output.last_hidden_state
        else:
            if torch.is_grad_enabled() and self.training:
                raise ValueError(
                    "Gen mode generates, which has no gradient: train gen mode with transformers_rime's contrastive "
                    "trainer (teacher-forced rewrites), or train this module in disc mode."
                )
            budget = max_new_tokens if max_new_tokens is not None else self.max_new_tokens  # 0 is a budget
            output = self.model.generate_embeddings(**inputs, max_new_tokens=budget)
        bad = (~torch.isfinite(output.embeddings).all(dim=1)).nonzero().flatten().tolist()
        if bad:
            raise FloatingPointError(
                f"Non-finite embeddings for batch row(s) {bad}: the model produced NaN or inf (check the weights and "
                "the dtype; fp16 overflows where bf16 does not)."
            )
        features["sentence_embedding"] = output.embeddings
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        if not safe_serialization:
            raise ValueError("RIME saves safetensors only (safe_serialization=True).")
        self.model.save_pretrained(output_path)
        self.processor.save_pretrained(output_path)
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        model_kwargs: dict | None = None,
        processor_kwargs: dict | None = None,
        config_kwargs: dict | None = None,
        backend: str = "torch",
        **kwargs,
    ) -> RimeSentenceTransformerModule:
        if backend != "torch":
            raise ValueError(f"RIME runs on the torch backend only, got backend={backend!r}.")
        hub_kwargs = {
            "subfolder": subfolder,
            "token": token,
            "cache_dir": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
            "trust_remote_code": trust_remote_code,
        }
        processor = AutoProcessor.from_pretrained(model_name_or_path, **hub_kwargs, **(processor_kwargs or {}))
        model_kwargs = {**(config_kwargs or {}), **(model_kwargs or {})}
        model = AutoModel.from_pretrained(model_name_or_path, **hub_kwargs, **model_kwargs).eval()
        config = cls.load_config(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        return cls(model, processor, **config)

    def __repr__(self) -> str:
        name = os.path.basename(str(getattr(self.model, "name_or_path", ""))) or type(self.model).__name__
        return f"RimeSentenceTransformerModule({name}, {self.get_config_dict()})"


__all__ = ["RimeSentenceTransformerModule"]
