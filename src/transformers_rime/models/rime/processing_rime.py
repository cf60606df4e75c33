# Copyright 2026 The transformers_rime authors. Licensed under the Apache License, Version 2.0.
"""RIME processor: builds the disc/gen prompts on top of the Qwen-VL processor.

This file ships to the Hub next to the weights (``trust_remote_code``): it imports only ``transformers`` and its
sibling files.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import Qwen2VLProcessor

from .configuration_rime import (
    DEFAULT_DOCUMENT_INSTRUCTION,
    DEFAULT_GEN_INSTRUCTION,
    DEFAULT_QUERY_INSTRUCTION,
    DISC_EMB_TOKEN,
    GEN_EMB_TOKEN,
    REWRITE_END,
    REWRITE_START,
    format_gen_instruction,
    select_hub_kwargs,
)
from .inputs_rime import RimeInput, load_image, parse_input


MODES = ("disc", "gen")
ROLES = ("query", "document")
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")
# the processor attributes that come from the model's RimeConfig (see `adopt_config`)
PROMPT_FIELDS = (
    "query_instruction",
    "document_instruction",
    "gen_instruction",
    "rewrite_start",
    "rewrite_end",
    "disc_emb_token",
    "gen_emb_token",
)
# The pixel budget UME-R1 (and so RIME) embeds with; stock Qwen2-VL configs allow 5x more pixels per image.
PUBLISHED_PIXEL_BUDGET = {"shortest_edge": 3136, "longest_edge": 2359296}
PIXEL_KWARGS = ("size", "min_pixels", "max_pixels")


class RimeProcessor(Qwen2VLProcessor):
    r"""
    Turns texts, images and videos (frame lists) into RIME prompts for a Qwen-VL backbone.

    Called with `mode="disc"` or `mode="gen"`, each item becomes one user turn of the chat template:

    ```
    <media...> {instruction} {text}\n<disc_emb>\n[gen instruction, gen mode only]
    ```

    and in gen mode the assistant turn is opened so the model writes its rewrite and `<gen_emb>`. Everything up to
    `<disc_emb>` is identical in both modes, so an item's discriminative embedding does not depend on the mode.
    Called without `mode`, it is the stock Qwen processor (already-templated text in, tensors out), which is how
    TRL and sentence-transformers drive it.

    Unlike the stock processor it needs no video processor (so no torchvision): a video is a list of frames that
    goes through the image path, one image per frame, at most `max_video_frames` frames sampled uniformly.
    Batches are always left-padded. A prompt longer than `max_length` is an error, never a silent cut of
    `<disc_emb>` or of image tokens. The RIME tokens are added to a tokenizer that lacks them as ordinary added
    tokens (not special tokens, which decoding with `skip_special_tokens=True` would strip).

    Args:
        image_processor ([`Qwen2VLImageProcessorPil`], *optional*):
            The image processor (a Qwen-VL one; the PIL backend keeps CPU and GPU preprocessing identical).
        tokenizer ([`Qwen2Tokenizer`], *optional*):
            The tokenizer.
        chat_template (`str`, *optional*):
            Jinja chat template; defaults to the tokenizer's.
        query_instruction (`str`, *optional*):
            Text placed before a query's text (`role="query"`).
        document_instruction (`str`, *optional*):
            Text placed before a document's text (`role="document"`).
        gen_instruction (`str`, *optional*):
            The rewrite instruction appended after `<disc_emb>` in gen mode (placeholders as in `RimeConfig`).
        disc_emb_token (`str`, *optional*, defaults to `"<disc_emb>"`):
            The discriminative embedding token.
        gen_emb_token (`str`, *optional*, defaults to `"<gen_emb>"`):
            The generative embedding token.
        rewrite_start (`str`, *optional*, defaults to `"<rewrite>"`):
            Opening rewrite tag (used in the gen instruction).
        rewrite_end (`str`, *optional*, defaults to `"</rewrite>"`):
            Closing rewrite tag.
        max_video_frames (`int`, *optional*, defaults to 8):
            Frames kept per video (uniformly sampled).

    Example:

    ```python
    >>> from transformers_rime.testing import tiny_rime_processor, random_image
    >>> processor = tiny_rime_processor()
    >>> batch = processor(text=["a red car", "what is this?"], images=[None, random_image()], mode="gen",
    ...                   role="query", return_tensors="pt")
    >>> sorted(batch.keys())
    ['attention_mask', 'image_grid_thw', 'input_ids', 'mm_token_type_ids', 'pixel_values']

    ```
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        query_instruction: str | None = DEFAULT_QUERY_INSTRUCTION,
        document_instruction: str | None = DEFAULT_DOCUMENT_INSTRUCTION,
        gen_instruction: str = DEFAULT_GEN_INSTRUCTION,
        disc_emb_token: str = DISC_EMB_TOKEN,
        gen_emb_token: str = GEN_EMB_TOKEN,
        rewrite_start: str = REWRITE_START,
        rewrite_end: str = REWRITE_END,
        max_video_frames: int = 8,
        **kwargs,
    ):
        self.query_instruction = query_instruction
        self.document_instruction = document_instruction
        self.gen_instruction = gen_instruction
        self.disc_emb_token = disc_emb_token
        self.gen_emb_token = gen_emb_token
        self.rewrite_start = rewrite_start
        self.rewrite_end = rewrite_end
        self.max_video_frames = max_video_frames
        if tokenizer is not None:
            missing = [t for t in (gen_emb_token, disc_emb_token) if t not in tokenizer.get_vocab()]
            if missing:
                tokenizer.add_tokens(missing)  # ordinary added tokens, as in the published checkpoints
            tokenizer.padding_side = "left"
        if chat_template is None and tokenizer is not None:
            chat_template = getattr(tokenizer, "chat_template", None)
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        # Pin the PIL image backend: the saved config names the torchvision class, which would make CPU and GPU
        # machines preprocess differently (and fail where torchvision is missing).
        kwargs.setdefault("backend", "pil")
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        # A published RIME / UME-R1 checkpoint ships the stock Qwen preprocessor config, whose pixel budget is not
        # the one the model embeds with: use RIME's unless the caller chose one.
        processor_dict, _ = cls.get_processor_dict(pretrained_model_name_or_path, **select_hub_kwargs(kwargs))
        if "gen_instruction" not in processor_dict and not any(k in kwargs for k in PIXEL_KWARGS):
            processor.image_processor.size = dict(PUBLISHED_PIXEL_BUDGET)
        return processor

    # ------------------------------------------------------------------ token ids

    @property
    def disc_emb_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.disc_emb_token)

    @property
    def gen_emb_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.gen_emb_token)

    @property
    def end_of_turn_token_ids(self) -> list[int]:
        vocab = self.tokenizer.get_vocab()
        return [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]

    def apply_token_ids(self, config) -> None:
        """Write this tokenizer's RIME token ids into a `RimeConfig` (in place)."""
        config.disc_emb_token = self.disc_emb_token
        config.gen_emb_token = self.gen_emb_token
        config.disc_emb_token_id = self.disc_emb_token_id
        config.gen_emb_token_id = self.gen_emb_token_id
        config.end_of_turn_token_ids = self.end_of_turn_token_ids

    def adopt_config(self, config) -> None:
        """Take the instructions, tags and RIME tokens of a `RimeConfig`, the single source of truth for prompts.

        Raises a `ValueError` if the config's token ids are not this tokenizer's (a model paired with the wrong
        processor would read its embeddings at the wrong tokens).
        """
        for name in PROMPT_FIELDS:
            setattr(self, name, getattr(config, name))
        for token, token_id in (
            (self.disc_emb_token, config.disc_emb_token_id),
            (self.gen_emb_token, config.gen_emb_token_id),
        ):
            found = self.tokenizer.convert_tokens_to_ids(token)
            if token_id != found:
                raise ValueError(
                    f"Model and processor disagree on {token}: id {token_id} in the config, {found} in the tokenizer."
                )

    # ------------------------------------------------------------------ prompts

    def instruction_for(self, role: str, instruction: str | None = None) -> str | None:
        """The instruction for `role`, unless `instruction` overrides it."""
        check_choice("role", role, ROLES)
        if instruction is not None:
            return instruction
        return self.query_instruction if role == "query" else self.document_instruction

    def build_user_text(self, text: str | None, mode: str, instruction: str | None) -> str:
        """The text part of the user turn: `{instruction} {text}\\n<disc_emb>\\n` (+ gen instruction)."""
        check_choice("mode", mode, MODES)
        body = " ".join(part for part in (instruction, text) if part)
        user_text = f"{body}\n{self.disc_emb_token}\n"
        if mode == "gen":
            user_text += format_gen_instruction(
                self.gen_instruction, self.rewrite_start, self.rewrite_end, self.gen_emb_token
            )
        return user_text

    def build_messages(self, text: str | None, num_images: int, mode: str, instruction: str | None) -> list[dict]:
        """One chat conversation: a user turn with `num_images` image slots, then the RIME text."""
        content = [{"type": "image"} for _ in range(num_images)]
        content.append({"type": "text", "text": self.build_user_text(text, mode, instruction)})
        return [{"role": "user", "content": content}]

    def render_prompt(self, text: str | None, num_images: int, mode: str, instruction: str | None) -> str:
        """The templated prompt string for one item (gen mode opens the assistant turn)."""
        messages = self.build_messages(text, num_images, mode, instruction)
        return self.apply_chat_template(messages, tokenize=False, add_generation_prompt=(mode == "gen"))

    # ------------------------------------------------------------------ call

    def __call__(
        self,
        images=None,
        text=None,
        videos=None,
        mode: str | None = None,
        role: str | None = None,
        instruction: str | None = None,
        **kwargs,
    ):
        """Build a batch.

        Args:
            images (`list`, *optional*):
                With `mode`: one entry per text, each `None`, an image (PIL or path) or a list of images.
                Without `mode`: as the stock processor.
            text (`str` or `list[str]`, *optional*):
                With `mode`: the raw texts (`None` or `""` for media-only items). Without `mode`: templated text.
            videos (`list`, *optional*):
                With `mode`: one entry per text, `None` or a list of frames (PIL or paths).
            mode (`str`, *optional*):
                `"disc"` or `"gen"`; `None` means stock Qwen behaviour.
            role (`str`, *optional*, defaults to `"query"`):
                `"query"` or `"document"`: selects the instruction.
            instruction (`str`, *optional*):
                Overrides the role's instruction.
            max_length (`int`, *optional*):
                With `mode`: longest allowed prompt in tokens; a longer one raises a `ValueError`.
            return_tensors (`str`, *optional*):
                `"pt"` for torch tensors.

        Returns:
            [`BatchFeature`]: `input_ids`, `attention_mask` (left-padded), `mm_token_type_ids` and, with images,
            `pixel_values` and `image_grid_thw`.
        """
        if mode is None:
            if role is not None or instruction is not None:
                raise ValueError("RimeProcessor: `role` and `instruction` only apply with `mode='disc'` or 'gen'.")
            return super().__call__(images=images, text=text, videos=videos, **kwargs)
        return self._rime_call(images, text, videos, mode, role or "query", instruction, **kwargs)

    def process_inputs(
        self,
        inputs,
        mode: str = "disc",
        role: str = "query",
        instruction: str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
    ):
        """Build a batch from the items `RimeEncoder.encode` accepts (str, image path, PIL image, frame list, dict).

        This is the one place where items become prompts: `RimeEncoder` and the sentence-transformers module both
        call it, so the two render identical prompts for the same item.

        Args:
            inputs (`list`): items, raw or already parsed ([`RimeInput`]).
            mode, role, instruction, max_length: as in `__call__`.
            return_tensors (`str`, *optional*, defaults to `"pt"`): as in `__call__`.

        Example:

        ```python
        >>> from transformers_rime.testing import tiny_rime_processor, random_image
        >>> processor = tiny_rime_processor()
        >>> batch = processor.process_inputs(["a red car", {"text": "what is this?", "image": random_image()}])
        >>> batch["input_ids"].shape[0]
        2

        ```
        """
        items = [item if isinstance(item, RimeInput) else parse_input(item, i) for i, item in enumerate(inputs)]
        return self(
            text=[item.text for item in items],
            images=[item.images or None for item in items],
            videos=[item.video for item in items],
            mode=mode,
            role=role,
            instruction=instruction,
            max_length=max_length,
            return_tensors=return_tensors,
        )

    def _rime_call(self, images, text, videos, mode, role, instruction, max_length=None, **kwargs):
        check_choice("mode", mode, MODES)
        instruction = self.instruction_for(role, instruction)
        texts, per_item_images = self._align_inputs(text, images, videos)
        kwargs.pop("truncation", None)  # we never truncate: too long is an error (see max_length)
        kwargs.pop("padding_side", None)
        kwargs.setdefault("padding", True)

        prompts, flat_images = [], []
        for index, (item_text, item_images) in enumerate(zip(texts, per_item_images)):
            prompt, loaded = self.prepare_item(RimeInput(item_text, item_images), mode, instruction, f"item {index}")
            prompts.append(prompt)
            flat_images.extend(loaded)

        batch = super().__call__(images=flat_images or None, text=prompts, padding_side="left", **kwargs)
        if max_length is not None:
            lengths = [int(sum(row)) for row in batch["attention_mask"]]
            too_long = [(i, n) for i, n in enumerate(lengths) if n > max_length]
            if too_long:
                details = ", ".join(f"item {i}: {n} tokens" for i, n in too_long)
                raise ValueError(
                    f"Prompt longer than max_length={max_length} ({details}). RIME never truncates a prompt, "
                    f"since that would cut `{self.disc_emb_token}` or image tokens: shorten the text, lower the "
                    "image pixel budget or raise max_length."
                )
        return batch

    def prepare_item(
        self, item: RimeInput, mode: str, instruction: str | None, where: str = "item"
    ) -> tuple[str, list]:
        """The templated prompt of one parsed item and its images (see [`~RimeProcessor.load_media`]).

        Used for every batch the processor builds, and by the training collator.
        """
        loaded = self.load_media(item, where)
        return self.render_prompt(item.text, len(loaded), mode, instruction), loaded

    def load_media(self, item: RimeInput, where: str = "item") -> list:
        """The images of one parsed item, opened and converted to RGB, after checking it is not empty.

        A video's frames come first (at most `max_video_frames`, sampled uniformly), then the images. `where` names
        the item in errors.
        """
        if item.text is not None and not isinstance(item.text, str):
            raise TypeError(f"{where}: text must be a string or None, got {type(item.text).__name__}.")
        media = sample_frames(list(item.video), self.max_video_frames) if item.video is not None else []
        loaded = [load_image(image, where=where) for image in [*media, *item.images]]
        if not item.text and not loaded:
            raise ValueError(f"{where}: empty input (no text, image or video).")
        return loaded

    def _align_inputs(self, text, images, videos) -> tuple[list, list[list]]:
        """Pair each text with its images and video frames (frames first, then images)."""
        if isinstance(text, str):
            text = [text]
        n = len(text) if text is not None else len(images) if images is not None else len(videos or [])
        if n == 0:
            raise ValueError("RimeProcessor: nothing to process (no text, images or videos).")
        texts = list(text) if text is not None else [None] * n
        images = list(images) if images is not None else [None] * n
        videos = list(videos) if videos is not None else [None] * n
        if not len(texts) == len(images) == len(videos):
            raise ValueError(
                f"RimeProcessor: `images[i]`/`videos[i]` belong to `text[i]`; got {len(texts)} texts, "
                f"{len(images)} image entries and {len(videos)} video entries."
            )
        per_item = []
        for index, (item_images, frames) in enumerate(zip(images, videos)):
            media = []
            if frames is not None:
                if not isinstance(frames, Sequence) or isinstance(frames, str) or len(frames) == 0:
                    raise TypeError(f"Item {index}: a video must be a non-empty list of frames.")
                media.extend(sample_frames(list(frames), self.max_video_frames))
            if item_images is not None:
                media.extend(item_images if isinstance(item_images, (list, tuple)) else [item_images])
            per_item.append(media)
        return texts, per_item


def check_choice(name: str, value, choices: Sequence[str]) -> None:
    """Raise a `ValueError` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}.")


def sample_frames(frames: list, max_frames: int) -> list:
    """Keep at most `max_frames` frames, uniformly spaced, first and last included.

    ```python
    >>> sample_frames(list(range(10)), 4)
    [0, 3, 6, 9]

    ```
    """
    if len(frames) <= max_frames:
        return frames
    if max_frames == 1:
        return [frames[len(frames) // 2]]
    step = (len(frames) - 1) / (max_frames - 1)
    return [frames[round(i * step)] for i in range(max_frames)]


__all__ = ["RimeProcessor"]
