# Copyright 2026 The transformers_rime authors. Licensed under the Apache License, Version 2.0.
"""sentence-transformers module for RIME: what `SentenceTransformer(path, trust_remote_code=True)` runs.

This file ships to the Hub next to the weights. `modules.json` names it as the model's only module; it loads the
model and processor through `AutoModel` / `AutoProcessor` (so the sibling RIME files do the work) and builds every
prompt with `parse_input`, `RimeProcessor.prepare_item` and `RimeProcessor.collate`, the path `RimeEncoder` (and
`RimeProcessor.process_inputs`) take, so all render identical prompts.

How sentence-transformers' switches map onto RIME:

- `encode_query` / `encode_document` pass `task="query"` / `"document"` (the role) and the prompts
  `"query"` / `"document"` from `config_sentence_transformers.json`, which hold the model's instructions. The
  prompt becomes RIME's instruction, inside the user turn before the item's text (not a system message), exactly
  where `RimeEncoder` puts it. Plain `encode` embeds as a query with the query instruction, like `RimeEncoder.encode`.
- `mode="gen"` (an extra keyword of `encode*`) switches to the generative embedding: the model writes its rewrite,
  then the embedding is read at `<gen_emb>`. `max_new_tokens=` bounds the rewrite. The default mode is `"disc"`.
- Errors name the caller's own index (`"input 2"` is the third item passed to `encode`), although
  sentence-transformers sorts the items by length before batching: see `RimeSentenceTransformerModule.preprocess`.
- `max_seq_length` is the backbone's context length unless set: prompts longer than it are refused, never truncated.
- `output_value="token_embeddings"` gives each item's own last-layer states (disc mode only: gen mode keeps none).
- `sentence_bert_config.json` holds the module's settings and declares its modalities (`modality_config`: text,
  image, video), which is where mteb reads a model's modalities.
- After training, `SentenceTransformer.save` writes the model's own card (the `README.md` it was loaded with), with
  sentence-transformers' training details appended, instead of a generic card.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import weakref
from dataclasses import dataclass

import sentence_transformers
import torch
from packaging.version import Version
from sentence_transformers.base.modules.input_module import InputModule
from transformers import AutoModel, AutoProcessor

from .configuration_rime import MODES, ROLES, SUPPORTED_SENTENCE_TRANSFORMERS
from .inputs_rime import RimeInput, parse_input
from .processing_rime import check_choice


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

# The module's settings. The file is named as sentence-transformers' own Transformer module names its settings, since
# tools read a model's modalities from it (mteb reads the keys of `modality_config`).
CONFIG_FILE_NAME = "sentence_bert_config.json"
# where exports written before the rename keep the same settings
LEGACY_CONFIG_FILE_NAME = "rime_sentence_transformers_config.json"
# what an item may hold; a dict item may combine them (`{"text": ..., "image": ...}`)
MODALITIES = ("text", "image", "video")
# in sentence-transformers' `modality_config` shape: every modality goes through the one model forward
MODALITY_CONFIG = {modality: {"method": "forward", "method_output_name": "embeddings"} for modality in MODALITIES}
# per-token outputs that `forward` aligns like `attention_mask`
TOKEN_FEATURES = ("input_ids", "attention_mask", "mm_token_type_ids", "token_embeddings")


@dataclass
class _Owner:
    """The `SentenceTransformer` that holds a module (set by `on_model_ready`), for the model card at save."""

    model: weakref.ref
    default_template: str | None  # sentence-transformers' own card template
    # ours, written at the first save; the folder goes with this entry, that is with the module
    folder: tempfile.TemporaryDirectory | None = None


_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


@dataclass
class _EncodeCall:
    """What `preprocess` learns from the sentence-transformers inference loop that called it."""

    # the caller's index of every batch row (`None` where it cannot be known: a chunk in a multi-process worker)
    indices: list[int] | None
    # the caller's whole list, on the first batch of a call (`None` otherwise)
    inputs: list | None
    output_value: str | None


def _encode_call(batch) -> _EncodeCall | None:
    """The `SentenceTransformer.encode` call that is preprocessing `batch`, or `None` outside `encode`.

    sentence-transformers sorts the inputs by length and hands `preprocess` one sorted batch at a time, with no
    argument that says where its rows came from. Its batching loop holds that order (`length_sorted_idx`,
    `start_index`; in `_inference` since 6.2, in `encode` before), so this reads it there, read-only, and trusts it
    only when every row is the very object the caller passed at that index. Any other layout (a release that renames
    these, a chunk in a multi-process worker) gives no indices, never wrong ones.
    """
    frame = inspect.currentframe().f_back
    try:
        for _ in range(8):  # the batching loop -> SentenceTransformer.preprocess -> our preprocess -> here
            frame = frame.f_back
            if frame is None:
                return None
            scope = frame.f_locals if _is_sentence_transformers(frame) else {}
            if not {"length_sorted_idx", "start_index", "inputs_batch", "inputs"} <= scope.keys():
                continue
            call = _EncodeCall(None, None, scope.get("output_value"))
            inputs, order, start = scope["inputs"], scope["length_sorted_idx"], scope["start_index"]
            # the caller of the loop: `encode` for the caller's own list; a multi-process or distributed worker
            # runs the loop on a chunk, whose indices are not the caller's
            caller = _sentence_transformers_caller(frame)
            if frame.f_code.co_name == "encode":
                direct = caller not in ("_multi_process_worker", "_infer_and_gather")
            else:
                direct = caller == "encode"
            if not direct or scope["inputs_batch"] is not batch or not isinstance(inputs, list):
                return call
            try:
                indices = [int(order[start + row]) for row in range(len(batch))]
            except (TypeError, IndexError, ValueError):
                return call
            if all(0 <= index < len(inputs) and inputs[index] is item for index, item in zip(indices, batch)):
                call.indices = indices
                call.inputs = inputs if start == 0 else None
            return call
        return None
    finally:
        del frame


def _is_sentence_transformers(frame) -> bool:
    return str(frame.f_globals.get("__name__")).startswith("sentence_transformers.")


def _sentence_transformers_caller(frame) -> str | None:
    """The name of the nearest sentence-transformers function that called `frame` (decorators skipped)."""
    caller = frame.f_back
    try:
        for _ in range(4):
            if caller is None or _is_sentence_transformers(caller):
                break
            caller = caller.f_back
        return caller.f_code.co_name if caller is not None and _is_sentence_transformers(caller) else None
    finally:
        del caller


def context_length(model) -> int | None:
    """The backbone's context length (`max_position_embeddings` of the text config), `None` if it has none."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def _tokens_first(features: dict) -> dict:
    """A copy of `features` whose per-token tensors hold each row's own tokens first, padding last.

    RIME pads on the left; sentence-transformers' `output_value="token_embeddings"` keeps a row up to its last
    attended token, which assumes right padding. The model's inputs are left as they were (a loss may run the
    forward again on them).
    """
    mask = features.get("attention_mask")
    if mask is None or bool(mask.all()):
        return features
    order = torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)  # attended positions first, in order
    out = dict(features)
    for name in TOKEN_FEATURES:
        value = features.get(name)
        if isinstance(value, torch.Tensor) and value.shape[:2] == mask.shape:
            index = order.to(value.device).view(*order.shape, *([1] * (value.dim() - 2))).expand_as(value)
            out[name] = value.gather(1, index)
    return out


# sentence-transformers' template section that describes a training run, appended to the model's own card
TRAINING_SECTION = ("\n## Training Details", "\n## Additional Resources")
TRAINED_NOTE = "This checkpoint was trained further with sentence-transformers after the card above was written:"


def card_template(card: str, sentence_transformers_template: str) -> str:
    """A model-card template that renders `card` verbatim, then sentence-transformers' training details.

    Jinja does not touch `card` (it is a raw block); the training section is sentence-transformers' own template
    text, so it renders from the same variables as its generic card. Without that section, `card` alone.
    """
    start, end = (sentence_transformers_template.find(marker) for marker in TRAINING_SECTION)
    training = sentence_transformers_template[start:end] if 0 <= start < end else ""
    if training:
        heading, _, rest = training.lstrip("\n").partition("\n")
        training = f"\n\n{heading}\n\n{TRAINED_NOTE}\n{rest}"
        previous = card.find(f"\n\n{heading}\n\n{TRAINED_NOTE}")
        card = card[:previous] if previous >= 0 else card  # a card that was trained before: its last run goes
    raw = card.replace("{% endraw %}", "{% endraw %}{{ '{% endraw %}' }}{% raw %}")
    return "{% raw %}" + raw.rstrip("\n") + "{% endraw %}" + training + "\n"


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
        max_seq_length (`int`, *optional*): refuse prompts longer than this (default: the backbone's context length,
            which `max_seq_length` then reports; RIME never truncates).
        model_card (`str`, *optional*): the model's card (`README.md`), kept by `SentenceTransformer.save` after
            training (read by `load`).

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

    config_file_name = CONFIG_FILE_NAME
    config_keys = ["mode", "max_new_tokens", "max_seq_length", "modality_config"]
    forward_kwargs = {"task", "mode", "max_new_tokens"}
    save_in_root = True

    def __init__(
        self,
        model,
        processor,
        mode: str = "disc",
        max_new_tokens: int | None = None,
        max_seq_length: int | None = None,
        model_card: str | None = None,
    ):
        super().__init__()
        self.model = model
        self.processor = processor
        processor.adopt_config(model.config)
        check_choice("mode", mode, MODES)
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.max_seq_length = max_seq_length
        self.model_card = model_card

    @property
    def max_seq_length(self) -> int | None:
        """The longest prompt accepted, in tokens: the value set, else the backbone's context length."""
        if self._max_seq_length is not None:
            return self._max_seq_length
        return context_length(self.model)

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"max_seq_length must be a positive integer or None, got {value!r}.")
        self._max_seq_length = value

    @property
    def modality_config(self) -> dict:
        """The modalities an item may hold, in sentence-transformers' `modality_config` shape (saved, for tools)."""
        return {modality: dict(entry) for modality, entry in MODALITY_CONFIG.items()}

    @property
    def modalities(self) -> list:
        # "message" lets sentence-transformers hand over batches that mix modalities; real chat messages are refused
        # in `preprocess`.
        return [*MODALITIES, ("image", "text"), ("text", "video"), "message"]

    def get_config_dict(self) -> dict:
        # the setting itself: an unset limit stays unset (the backbone's context), as the export writes it
        return {**super().get_config_dict(), "max_seq_length": self._max_seq_length}

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def get_embedding_dimension(self) -> int:
        return self.model.config.hidden_size

    def preprocess(
        self, inputs, prompt: str | None = None, task: str | None = None, mode: str | None = None, **kwargs
    ):
        """Items to a batch: `prompt` is the instruction, `task` the role (`None`: query), `mode` disc or gen.

        Under `SentenceTransformer.encode`, which sorts the items by length and calls this once per batch, errors
        name the caller's index (`"input 2"`: the third item passed to `encode`), and the first batch checks every
        item in the caller's order (parse, file headers) before any model work, so the first bad item is the one
        named. Media are decoded and prompt lengths checked batch by batch, as sentence-transformers batches. Called
        directly, `"input i"` is the row of `inputs`.
        """
        call = _encode_call(inputs)
        everything = call.inputs if call is not None and call.inputs is not None else inputs
        if any(_is_message(item) for item in everything):
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
        if call is not None and call.output_value == "token_embeddings" and mode == "gen":
            raise ValueError(
                "output_value='token_embeddings' needs mode='disc': gen mode keeps only the state at <gen_emb> "
                "(read it with the default output_value='sentence_embedding')."
            )
        if call is None:  # called directly: the rows are the caller's items
            names = [("input", row) for row in range(len(inputs))]
        elif call.indices is None:  # a sorted chunk whose origin is unknown
            names = [("sorted batch item", row) for row in range(len(inputs))]
        else:
            names = [("input", index) for index in call.indices]
        if call is not None and call.inputs is not None:
            for index, item in enumerate(call.inputs):  # every item, in the caller's order, before any model work
                if not isinstance(item, RimeInput):
                    parse_input(item, index)
        instruction = self.processor.instruction_for(role, prompt)
        limit = self.max_seq_length  # bounded by default: the backbone's context
        prepared = [None] * len(inputs)
        for row in sorted(range(len(inputs)), key=lambda row: names[row][1]):  # a batch fails on its first item
            item, (name, index) = inputs[row], names[row]
            parsed = item if isinstance(item, RimeInput) else parse_input(item, index, name)
            prepared[row] = self.processor.prepare_item(parsed, mode, instruction, f"{name} {index}", limit)
        return dict(self.processor.collate(prepared))

    def forward(self, features: dict, task: str | None = None, mode: str | None = None, max_new_tokens=None, **kwargs):
        """Embed a batch from `preprocess` (run with the same `mode`): the features with `sentence_embedding`,
        `(batch, dim)`, and in disc mode `token_embeddings`, the last-layer states, `(batch, seq, dim)`.

        In the returned features each row's own tokens come first and its padding last (RIME pads on the left), as
        sentence-transformers expects when it cuts `token_embeddings` per item; `features` itself is not changed.
        """
        mode = mode or self.mode
        check_choice("mode", mode, MODES)
        # the backbone casts pixel_values to its own dtype, so a bf16 model takes the processor's float32 directly
        inputs = {name: features[name] for name in MODEL_INPUT_NAMES if name in features}
        if mode == "disc":
            output = self.model(**inputs)
            features = _tokens_first({**features, "token_embeddings": output.last_hidden_state})
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

    def on_model_ready(self, model) -> None:
        """Remember the owning `SentenceTransformer` (weakly), whose model card `save` keeps."""
        template = getattr(getattr(model, "model_card_data", None), "template_path", None)
        _OWNERS[self] = _Owner(weakref.ref(model), None if template is None else os.fspath(template))

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        if not safe_serialization:
            raise ValueError("RIME saves safetensors only (safe_serialization=True).")
        self.model.save_pretrained(output_path)
        self.processor.save_pretrained(output_path)
        self.save_config(output_path)
        self._keep_model_card()

    def _keep_model_card(self) -> None:
        """Make the owner's next card the model's own card (plus the training details) rather than a generic one.

        `SentenceTransformer.save` writes `README.md` after the modules: the card it was loaded with when untrained,
        a card from its template after training. Pointing the template at the model's card keeps that card.
        """
        owner = _OWNERS.get(self)
        model = owner.model() if owner is not None else None
        card_data = getattr(model, "model_card_data", None)
        if not self.model_card or card_data is None or owner.default_template is None:
            return
        template = os.path.join(owner.folder.name, "template.md") if owner.folder is not None else None
        if template is None:
            owner.folder = tempfile.TemporaryDirectory(prefix="rime-card-")
            with open(owner.default_template, encoding="utf-8") as f:
                text = card_template(self.model_card, f.read())
            template = os.path.join(owner.folder.name, "template.md")
            with open(template, "w", encoding="utf-8") as f:
                f.write(text)
        card_data.template_path = template

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
        files = {
            "model_name_or_path": model_name_or_path,
            "subfolder": subfolder,
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        config = cls.load_config(**files) or cls.load_config(**files, config_filename=LEGACY_CONFIG_FILE_NAME)
        config.pop("modality_config", None)  # RIME's modalities are fixed; the saved copy is for other tools
        card = None
        try:
            card_path = cls.load_file_path(filename="README.md", **files)
        except Exception:  # no card (or none reachable): sentence-transformers then writes its own
            card_path = None
        if card_path is not None:
            with open(card_path, encoding="utf-8") as f:
                card = f.read()
        return cls(model, processor, **config, model_card=card)

    def __repr__(self) -> str:
        name = os.path.basename(str(getattr(self.model, "name_or_path", ""))) or type(self.model).__name__
        settings = {key: value for key, value in self.get_config_dict().items() if key != "modality_config"}
        return f"RimeSentenceTransformerModule({name}, {settings})"


__all__ = ["RimeSentenceTransformerModule"]
