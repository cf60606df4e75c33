# Copyright 2026 The transformers_rime authors. Licensed under the Apache License, Version 2.0.
"""RIME model configuration.

This file ships to the Hub next to the weights (``trust_remote_code``): it imports only ``transformers`` (and
``packaging``, a transformers dependency) and stays self-contained. It checks the transformers version first.
"""

from __future__ import annotations

import os

import transformers
from packaging.version import Version


# The transformers releases this file is tested with. Checked before anything else runs, so that an unsupported
# version fails here with a clear message instead of deep inside a model class.
SUPPORTED_TRANSFORMERS = (Version("5.17.0"), Version("6.0.0"))  # [min, max)
# The sentence-transformers releases the exported sentence-transformers module is tested with (checked there).
SUPPORTED_SENTENCE_TRANSFORMERS = (Version("6.0.1"), Version("7.0.0"))  # [min, max)
SKIP_VERSION_CHECK_ENV = "RIME_SKIP_VERSION_CHECK"


def check_transformers_version(version: str | None = None) -> None:
    """Raise an `ImportError` naming the supported range if `version` (default: the installed one) is outside it.

    Setting the environment variable `RIME_SKIP_VERSION_CHECK=1` turns the error into a warning, for trying a newer
    release at your own risk.

    ```python
    >>> check_transformers_version("5.24.0")
    >>> check_transformers_version("4.57.1")
    Traceback (most recent call last):
    ...
    ImportError: RIME needs transformers>=5.17.0,<6.0.0, found 4.57.1. ...

    ```
    """
    found = Version(version or transformers.__version__)
    low, high = SUPPORTED_TRANSFORMERS
    if low <= Version(found.base_version) < high:
        return
    message = (
        f"RIME needs transformers>={low},<{high}, found {found}. Install a supported release "
        f"(pip install 'transformers>={low},<{high}'), or a newer transformers_rime or model revision that supports "
        f"yours. Set {SKIP_VERSION_CHECK_ENV}=1 to try anyway."
    )
    if os.environ.get(SKIP_VERSION_CHECK_ENV) == "1":
        transformers.logging.get_logger(__name__).warning(message)
        return
    raise ImportError(message)


check_transformers_version()

from transformers import AutoConfig  # noqa: E402  (after the version check, on purpose)


try:  # transformers >= 5 spells it PreTrainedConfig; the old alias is kept for older releases
    from transformers import PreTrainedConfig
except ImportError:  # pragma: no cover
    from transformers import PretrainedConfig as PreTrainedConfig


# The two embedding modes, the two sides of a retrieval pair and the tokens that close an assistant turn: declared
# here once (this file ships with every export) and imported everywhere else.
MODES = ("disc", "gen")
ROLES = ("query", "document")
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")
DISC_EMB_TOKEN = "<disc_emb>"
GEN_EMB_TOKEN = "<gen_emb>"
REWRITE_START = "<rewrite>"
REWRITE_END = "</rewrite>"
DEFAULT_QUERY_INSTRUCTION = "Represent the given query for retrieval:"
DEFAULT_DOCUMENT_INSTRUCTION = "Represent the given content:"
DEFAULT_GEN_INSTRUCTION = (
    "Represent the above input text, images, videos, or any combination of the three as embeddings. "
    "First rewrite the input into a concise, retrieval-friendly description in {rewrite_start} {rewrite_end} "
    "tags, then use the {gen_emb_token} tag to represent the entire input."
)
# UME-R1's generation prompt, verbatim (UME-R1 code: its eval collator and `grpo_embed.py`; mteb's
# `UME_R1_EMBED_PROMPT`). Its SFT targets are `<think>...</think><answer>...</answer><gen_emb>`.
UME_R1_GEN_INSTRUCTION = (
    "Represent the above input text, images, videos, or any combination of the three as embeddings. "
    "First output the thinking process in <think> </think> tags and then summarize the entire input in a word or "
    "sentence. Finally, use the <gen_emb> tag to represent the entire input."
)
# How a published checkpoint is fed, by family. `from_pretrained(..., preset=...)` applies one; a field the caller
# passes wins. "rime" keeps RimeConfig's defaults: RIME's own instruction and tags are not public (recover them from
# RIME-Train with `transformers_rime.data.infer_prompt`). "ume-r1": the task instruction is part of each item's text
# (VLM2Vec style), so no role instruction is added; 8192 new tokens is UME-R1's evaluation budget.
PRESETS = {
    "rime": {},
    "ume-r1": {
        "gen_instruction": UME_R1_GEN_INSTRUCTION,
        "rewrite_start": "<think>",
        "rewrite_end": "</answer>",
        "query_instruction": None,
        "document_instruction": None,
        "max_new_tokens": 8192,
    },
}
# What a text-only item is fed with: "blank" is UME-R1's 28x28 white RGB image, put where an item's image would go
# (its eval collator, `grpo_embed.py`, and `blank.jpg` in its SFT data); None feeds text alone.
TEXT_ONLY_IMAGES = ("blank", None)
SUPPORTED_BACKBONES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
POOLING_MODES = ("token", "last")
# from_pretrained keyword arguments that locate files (passed on when we read a config or tokenizer ourselves)
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def select_hub_kwargs(kwargs: dict) -> dict:
    """The file-locating subset of `from_pretrained` keyword arguments (see `HUB_KWARGS`)."""
    return {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}


class RimeConfig(PreTrainedConfig):
    r"""
    Configuration of a [`RimeForEmbedding`] model: a Qwen-VL backbone plus every choice RIME makes on top of it.

    RIME reads two embeddings from one set of weights: the *discriminative* one at the `<disc_emb>` token that
    closes the user turn (one forward pass), and the *generative* one at the `<gen_emb>` token the model emits
    after writing a short `<rewrite>...</rewrite>` of its input.

    Args:
        vlm_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the backbone (`qwen2_vl`, `qwen2_5_vl` or `qwen3_vl`). A dict is turned into the
            matching config class through its `model_type`. Defaults to a Qwen2-VL configuration.
        disc_emb_token (`str`, *optional*, defaults to `"<disc_emb>"`):
            Token whose last-layer hidden state is the discriminative embedding.
        gen_emb_token (`str`, *optional*, defaults to `"<gen_emb>"`):
            Token the model generates after its rewrite; its hidden state is the generative embedding.
        disc_emb_token_id (`int`, *optional*):
            Id of `disc_emb_token` in the tokenizer. Filled in by the processor/loader; required to embed.
        gen_emb_token_id (`int`, *optional*):
            Id of `gen_emb_token` in the tokenizer. Required for generative embeddings.
        end_of_turn_token_ids (`list[int]`, *optional*):
            Tokens that end the assistant turn (`<|im_end|>`, `<|endoftext|>`). If the model emits one before
            `<gen_emb>`, it is replaced by `<gen_emb>` (and the item is flagged unfinished).
        rewrite_start (`str`, *optional*, defaults to `"<rewrite>"`):
            Opening tag of the rewrite. Plain text, not an added token.
        rewrite_end (`str`, *optional*, defaults to `"</rewrite>"`):
            Closing tag of the rewrite.
        pooling (`str`, *optional*, defaults to `"token"`):
            Where an embedding is read: `"token"` takes the hidden state at the last occurrence of the embedding
            token in each row (any padding side); `"last"` takes the last non-padding position.
        normalize (`bool`, *optional*, defaults to `True`):
            L2-normalise embeddings, so that a dot product is a cosine similarity.
        max_new_tokens (`int`, *optional*, defaults to 128):
            Default budget for the rewrite in generative mode (`<gen_emb>` excluded).
        query_instruction (`str`, *optional*):
            Text placed before a query's own text (`role="query"`).
        document_instruction (`str`, *optional*):
            Text placed before a document's own text (`role="document"`).
        gen_instruction (`str`, *optional*):
            Instruction that follows `<disc_emb>` in generative mode and asks for the rewrite. `{rewrite_start}`,
            `{rewrite_end}` and `{gen_emb_token}` are filled in from the fields above.
        text_only_image (`str`, *optional*):
            `"blank"` puts a 28x28 white RGB image in front of every item with no image or video, as UME-R1 (and so
            very likely RIME-2B) was trained and evaluated; `None` feeds such items as text alone. Checkpoints in the
            published layout get `"blank"`; a config built from scratch keeps `None`.
        disc_token_offset (`int`, *optional*, defaults to 0):
            Read the disc embedding this many tokens after `<disc_emb>`. A parity option, not a recommendation:
            UME-R1's released evaluation script reads one token late (the newline after `<disc_emb>`; UME-R1 issue
            #8), so `1` reproduces its published disc numbers. UME-R1 trained at `<disc_emb>`: keep 0 for training.

    Example:

    ```python
    >>> from transformers_rime import RimeConfig
    >>> config = RimeConfig(vlm_config={"model_type": "qwen2_vl"})
    >>> config.vlm_config.model_type, config.pooling, config.max_new_tokens
    ('qwen2_vl', 'token', 128)

    ```
    """

    model_type = "rime"
    # A plain dict (not 5.24's SubConfigSpec) so the same file works on every 5.x release; it lets
    # `attn_implementation` and `dtype` reach the backbone.
    sub_configs = {"vlm_config": AutoConfig}

    vlm_config: dict | PreTrainedConfig | None = None
    disc_emb_token: str = DISC_EMB_TOKEN
    gen_emb_token: str = GEN_EMB_TOKEN
    disc_emb_token_id: int | None = None
    gen_emb_token_id: int | None = None
    end_of_turn_token_ids: list[int] | None = None
    rewrite_start: str = REWRITE_START
    rewrite_end: str = REWRITE_END
    pooling: str = "token"
    normalize: bool = True
    max_new_tokens: int = 128
    query_instruction: str | None = DEFAULT_QUERY_INSTRUCTION
    document_instruction: str | None = DEFAULT_DOCUMENT_INSTRUCTION
    gen_instruction: str = DEFAULT_GEN_INSTRUCTION
    text_only_image: str | None = None
    disc_token_offset: int = 0

    def __post_init__(self, **kwargs):
        vlm_config = self.vlm_config if self.vlm_config is not None else {"model_type": "qwen2_vl"}
        if isinstance(vlm_config, dict):
            vlm_config = dict(vlm_config)
            vlm_config = AutoConfig.for_model(vlm_config.pop("model_type", "qwen2_vl"), **vlm_config)
        self.vlm_config = vlm_config
        super().__post_init__(**kwargs)
        self.validate_rime_fields()

    def validate_rime_fields(self) -> None:
        """Raise a `ValueError` naming the field when a RIME setting cannot work."""
        if self.vlm_config.model_type not in SUPPORTED_BACKBONES:
            raise ValueError(
                f"RimeConfig: backbone `{self.vlm_config.model_type}` is not supported; "
                f"use one of {', '.join(SUPPORTED_BACKBONES)}."
            )
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"RimeConfig: `pooling` must be one of {POOLING_MODES}, got {self.pooling!r}.")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"RimeConfig: `max_new_tokens` must be a positive integer, got {self.max_new_tokens!r}.")
        if self.disc_emb_token == self.gen_emb_token:
            raise ValueError("RimeConfig: `disc_emb_token` and `gen_emb_token` must differ.")
        if self.text_only_image not in TEXT_ONLY_IMAGES:
            raise ValueError(
                f"RimeConfig: `text_only_image` must be one of {TEXT_ONLY_IMAGES}, got {self.text_only_image!r}."
            )
        if not isinstance(self.disc_token_offset, int) or self.disc_token_offset < 0:
            raise ValueError(
                f"RimeConfig: `disc_token_offset` must be a non-negative integer, got {self.disc_token_offset!r}."
            )

    @property
    def hidden_size(self) -> int:
        """Embedding dimension: the backbone's text hidden size (no projection head)."""
        return self.vlm_config.get_text_config().hidden_size

    def get_text_config(self, *args, **kwargs) -> PreTrainedConfig:
        return self.vlm_config.get_text_config(*args, **kwargs)


# RIME's own settings: the fields RimeConfig declares on top of the base config (`dtype`, `return_dict`, ... are the
# base's). `from_pretrained` keyword arguments with these names configure RIME; every other one is a loading option.
RIME_FIELDS = tuple(
    name for name in RimeConfig.__dataclass_fields__ if name not in PreTrainedConfig.__dataclass_fields__
)


def preset_for(name_or_path, preset: str | None = None) -> str:
    """The preset of a checkpoint: `preset` if given, else `"ume-r1"` when its name or path contains `UME-R1` (any
    case), else `"rime"`.

    ```python
    >>> preset_for("zhibinlan/UME-R1-2B"), preset_for("/models/ume-r1-7b"), preset_for("leafyseay/RIME-2B")
    ('ume-r1', 'ume-r1', 'rime')
    >>> preset_for("zhibinlan/UME-R1-2B", preset="rime")
    'rime'

    ```
    """
    if preset is None:
        preset = "ume-r1" if "ume-r1" in os.fspath(name_or_path).lower() else "rime"
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; expected one of {', '.join(map(repr, PRESETS))}.")
    return preset


def published_settings(name_or_path, preset: str | None = None, **chosen) -> dict:
    """The RIME settings a published-layout checkpoint is fed with: `text_only_image="blank"` and its preset's
    fields (see `PRESETS`), under the settings the caller `chosen` (which win).

    ```python
    >>> published_settings("zhibinlan/UME-R1-2B", max_new_tokens=512)["max_new_tokens"]
    512
    >>> published_settings("leafyseay/RIME-2B", text_only_image=None)
    {'text_only_image': None}

    ```
    """
    return {"text_only_image": "blank", **PRESETS[preset_for(name_or_path, preset)], **chosen}


def format_gen_instruction(template: str, rewrite_start: str, rewrite_end: str, gen_emb_token: str) -> str:
    """Fill `{rewrite_start}`, `{rewrite_end}` and `{gen_emb_token}` in a generation instruction.

    Example:

    ```python
    >>> format_gen_instruction("Write {rewrite_start}...{rewrite_end} then {gen_emb_token}.", "<r>", "</r>", "<g>")
    'Write <r>...</r> then <g>.'

    ```
    """
    return (
        template.replace("{rewrite_start}", rewrite_start)
        .replace("{rewrite_end}", rewrite_end)
        .replace("{gen_emb_token}", gen_emb_token)
    )


__all__ = ["RimeConfig"]
