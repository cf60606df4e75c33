# Copyright 2026 The transformers_rime authors. Licensed under the Apache License, Version 2.0.
"""transformers pipeline for RIME: what `pipeline(task, model=path, trust_remote_code=True)` runs.

This file ships to the Hub next to the weights. `RimeEncoder.save_pretrained` writes a `custom_pipelines` entry into
`config.json` (see `custom_pipelines`) that points both `"feature-extraction"` and `"image-feature-extraction"` here,
so that

```python
from transformers import pipeline

extractor = pipeline("feature-extraction", model="path/to/rime", trust_remote_code=True)
extractor("a red car")  # [[0.012, -0.034, ...]]: one L2-normalised embedding, shape (1, dim)
```

returns the embeddings of `RimeEncoder.encode` for the same items and settings, without `transformers_rime`
installed. Every prompt is built by the processor's `prepare_item` / `collate` (what `process_inputs` runs), the path
`RimeEncoder` and the sentence-transformers module take, so all render identical prompts.

Output shape: like the stock pipelines, each item gives an array with a leading axis of 1, here `(1, dim)` (RIME
pools: there is one embedding per item, no token axis), which is what `image-feature-extraction` returns with
`pool=True`. One item gives `[[floats]]`, a list of items a list of those; with `return_tensors=True`, float32
tensors of shape `(1, dim)` on the CPU (`torch.cat(outputs)` is the `(N, dim)` matrix of `RimeEncoder.encode`).
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .configuration_rime import MODES, ROLES
from .generation_rime import check_decoding
from .inputs_rime import RimeInput, parse_input
from .processing_rime import PreparedItem, check_choice


PIPELINE_TASKS = ("feature-extraction", "image-feature-extraction")
PIPELINE_CLASS = "RimeFeatureExtractionPipeline"
# the keyword arguments a call (or `pipeline(...)`) takes, besides the stock `batch_size` / `num_workers`
CALL_KWARGS = (
    "mode",
    "role",
    "instruction",
    "max_new_tokens",
    "max_length",
    "generate_kwargs",
    "return_tensors",
    "pool",
)


def custom_pipelines(module: str = "pipeline_rime") -> dict:
    """The `custom_pipelines` entry of an exported `config.json`: both tasks run [`RimeFeatureExtractionPipeline`]
    from `module` (this file, copied next to the weights) on the model `AutoModel` loads."""
    return {
        task: {"impl": f"{module}.{PIPELINE_CLASS}", "pt": ["AutoModel"], "type": "multimodal"}
        for task in PIPELINE_TASKS
    }


@dataclass
class _CheckedItem:
    """An item `__call__` has already checked and prepared (prompt rendered, media decoded)."""

    prepared: PreparedItem


@dataclass
class _NumberedItem:
    """A raw item with its position in the caller's inputs, so that errors name it."""

    index: int
    item: object


class _NumberedDataset(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        item = self.items[index]
        return item if isinstance(item, _CheckedItem) else _NumberedItem(index, item)


def _numbered(items):
    for index, item in enumerate(items):
        yield _NumberedItem(index, item)


def _merge(batch: list[dict]) -> dict:
    """The DataLoader's collate function: the prepared items of a batch, in order (tensors are built in `_forward`)."""
    return {"prepared": [item for features in batch for item in features["prepared"]]}


def _is_message(item) -> bool:
    if isinstance(item, dict):
        return "role" in item and "content" in item
    return isinstance(item, list) and bool(item) and isinstance(item[0], dict) and "role" in item[0]


class RimeFeatureExtractionPipeline(Pipeline):
    r"""
    RIME embeddings through `pipeline("feature-extraction" | "image-feature-extraction", ...)`.

    Inputs are the items `RimeEncoder.encode` takes, one or a list: texts, image paths, PIL images,
    `{"text": ..., "image": ...}` dicts and `{"video": [frames]}` dicts (a bare list is a list of items, not a video).
    Both tasks take every kind of item. A list (or tuple) is checked in full (parsed, media decoded, prompt rendered
    and bounded) before any model work; the first bad item raises an error naming it (`input 3: ...`). Items of a
    generator or dataset are checked as they come.

    Call (or `pipeline(...)`) keyword arguments:

    - `mode` (`"disc"`, the default, or `"gen"`): one forward pass, or write the rewrite and embed at `<gen_emb>`.
    - `role` (`"query"`, the default, or `"document"`): selects the model's instruction; `instruction=` overrides it.
    - `max_new_tokens`: the rewrite budget in gen mode (default: the model config's).
    - `max_length`: refuse prompts longer than this many tokens (default: the backbone's context; RIME never
      truncates).
    - `generate_kwargs` (`dict`, gen mode only): passed to `generate_embeddings` (e.g. `{"do_sample": True}`).
    - `return_tensors`: return float32 tensors instead of nested lists.
    - `batch_size` / `num_workers`: as in every pipeline (an item's embedding does not depend on its neighbours).
    - `pool`: accepted for `image-feature-extraction` compatibility; RIME always pools, so only `pool=True` is.

    Returns, per item, its L2-normalised embedding with a leading axis of 1, shape `(1, dim)` (see the module
    docstring); a list of items gives a list of those.

    The pipeline is built from an exported directory (`RimeEncoder.save_pretrained`), whose `config.json` names it.
    For a model and processor already in memory, pass the class: `pipeline("feature-extraction", model=model,
    processor=processor, pipeline_class=RimeFeatureExtractionPipeline)`.

    Example (with `transformers_rime` installed; an exported directory needs only `trust_remote_code=True`):

    ```python
    >>> from transformers import pipeline
    >>> from transformers_rime.testing import tiny_rime_model, tiny_rime_processor, random_image
    >>> processor = tiny_rime_processor()
    >>> extractor = pipeline("feature-extraction", model=tiny_rime_model(processor=processor), processor=processor,
    ...                      pipeline_class=RimeFeatureExtractionPipeline, device="cpu")
    >>> len(extractor("a red car")[0])
    64
    >>> outputs = extractor(["a red car", {"text": "what is shown?", "image": random_image()}], mode="gen",
    ...                     max_new_tokens=2, return_tensors=True)
    >>> [tuple(output.shape) for output in outputs]
    [(1, 64), (1, 64)]

    ```
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(
                "The RIME pipeline needs the model's RimeProcessor: load it from the exported directory, or pass "
                "processor=..."
            )
        self.processor.adopt_config(self.model.config)  # the model's config is the single source of prompts

    def _sanitize_parameters(
        self,
        mode: str | None = None,
        role: str | None = None,
        instruction: str | None = None,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        generate_kwargs: dict | None = None,
        return_tensors: bool | None = None,
        pool: bool | None = None,
        **kwargs,
    ):
        kwargs.pop("local_files_only", None)  # `pipeline()` forwards it to the class
        if kwargs:
            raise TypeError(
                f"Unknown argument(s) {sorted(kwargs)} for the RIME pipeline; it takes {', '.join(CALL_KWARGS)}, "
                "batch_size and num_workers. (RIME builds its own prompts and never truncates them: there are no "
                "tokenizer arguments.)"
            )
        if pool is not None and not pool:
            raise ValueError("RIME gives one pooled embedding per item and no token features: pool=False is refused.")
        if mode is not None:
            check_choice("mode", mode, MODES)
        if role is not None:
            check_choice("role", role, ROLES)
        if max_new_tokens is not None and (
            not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0
        ):
            raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}.")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}.")
        if generate_kwargs is not None:
            if not isinstance(generate_kwargs, dict):
                raise TypeError(f"generate_kwargs must be a dict, got {type(generate_kwargs).__name__}.")
            copies = generate_kwargs.get("num_return_sequences")
            if copies not in (None, 1):
                raise ValueError(f"num_return_sequences={copies}: the pipeline returns one embedding per item.")
            check_decoding(generate_kwargs)
        given = {
            "mode": mode,
            "role": role,
            "instruction": instruction,
            "max_length": max_length,
            "max_new_tokens": max_new_tokens,
            "generate_kwargs": generate_kwargs,
            "return_tensors": return_tensors,
        }
        preprocess = {k: given[k] for k in ("mode", "role", "instruction", "max_length") if given[k] is not None}
        forward = {k: given[k] for k in ("mode", "max_new_tokens", "generate_kwargs") if given[k] is not None}
        postprocess = {"return_tensors": return_tensors} if return_tensors is not None else {}
        return preprocess, forward, postprocess

    def __call__(self, inputs, *args, **kwargs):
        """Embed one item or a list of items (see the class docstring); returns `(1, dim)` per item."""
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list):
            if not inputs:
                return []
            # every item checked before any model work, as `RimeEncoder.encode` does
            call_kwargs = {k: v for k, v in kwargs.items() if k not in ("batch_size", "num_workers")}
            params = {**self._preprocess_params, **self._sanitize_parameters(**call_kwargs)[0]}
            inputs = [_CheckedItem(self._prepare(item, index, **params)) for index, item in enumerate(inputs)]
        return super().__call__(inputs, *args, **kwargs)

    def _prepare(
        self,
        item,
        index: int,
        mode: str = "disc",
        role: str = "query",
        instruction: str | None = None,
        max_length: int | None = None,
    ) -> PreparedItem:
        """One item, checked in full and ready for `collate`; errors name it `input {index}`."""
        where = f"input {index}"
        if _is_message(item):
            raise ValueError(
                f"{where}: RIME does not take chat-message inputs: pass a text, image path, PIL image or a dict with "
                "'text'/'image'/'images'/'video'. The model builds its own prompt around <disc_emb>."
            )
        if max_length is None:  # bounded by default: the backbone's context
            max_length = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        parsed = item if isinstance(item, RimeInput) else parse_input(item, index)
        instruction = self.processor.instruction_for(role, instruction)
        return self.processor.prepare_item(parsed, mode, instruction, where, max_length)

    def preprocess(self, item, **params) -> dict:
        if isinstance(item, _CheckedItem):
            return {"prepared": [item.prepared]}
        index, item = (item.index, item.item) if isinstance(item, _NumberedItem) else (0, item)
        return {"prepared": [self._prepare(item, index, **params)]}

    def _forward(self, model_inputs: dict, mode: str = "disc", max_new_tokens=None, generate_kwargs=None) -> dict:
        # the backbone casts pixel_values to its own dtype
        features = self.processor.collate(model_inputs["prepared"]).to(self.device)
        if mode == "disc":
            if generate_kwargs:
                raise TypeError(f"Generation arguments {sorted(generate_kwargs)} only apply with mode='gen'.")
            embeddings = self.model(**features).embeddings
        else:
            output = self.model.generate_embeddings(
                **features, max_new_tokens=max_new_tokens, **(generate_kwargs or {})
            )
            embeddings = output.embeddings
        bad = (~torch.isfinite(embeddings).all(dim=1)).nonzero().flatten().tolist()
        if bad:
            raise FloatingPointError(
                f"Non-finite embeddings for batch row(s) {bad}: the model produced NaN or inf (check the weights and "
                "the dtype; fp16 overflows where bf16 does not)."
            )
        return {"embeddings": embeddings.float()}

    def postprocess(self, model_outputs: dict, return_tensors: bool = False):
        embeddings = model_outputs["embeddings"]  # (1, dim): the stock pipelines keep a leading axis of 1 per item
        return embeddings if return_tensors else embeddings.tolist()

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        # The stock iterator, with RIME's collate function: the stock one pads token ids and stacks pixel values,
        # which Qwen-VL's flattened patches do not allow.
        if isinstance(inputs, Sized):
            dataset = PipelineDataset(_NumberedDataset(inputs), self.preprocess, preprocess_params)
        else:
            num_workers = min(num_workers, 1)  # an iterable cannot be split between workers
            dataset = PipelineIterator(_numbered(inputs), self.preprocess, preprocess_params)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=_merge)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)


__all__ = ["PIPELINE_TASKS", "RimeFeatureExtractionPipeline", "custom_pipelines"]
