# Copyright 2026 The transformers_rime authors. Licensed under the Apache License, Version 2.0.
"""RIME processor: builds the disc/gen prompts on top of the Qwen-VL processor.

This file ships to the Hub next to the weights (``trust_remote_code``): it imports only ``transformers`` and its
sibling files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import BatchFeature, PreTrainedConfig, Qwen2VLProcessor
from transformers.utils import logging

from .configuration_rime import (
    DEFAULT_DOCUMENT_INSTRUCTION,
    DEFAULT_GEN_INSTRUCTION,
    DEFAULT_QUERY_INSTRUCTION,
    DISC_EMB_TOKEN,
    END_OF_TURN_TOKENS,
    GEN_EMB_TOKEN,
    MODES,
    REWRITE_END,
    REWRITE_START,
    ROLES,
    TEXT_ONLY_IMAGES,
    format_gen_instruction,
    published_settings,
    select_hub_kwargs,
)
from .inputs_rime import RimeInput, blank_image, load_image, parse_input, sample_frames
from .video_rime import VIDEO_FPS, VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, video_grid, video_patches, visual_token_count


logger = logging.get_logger(__name__)


# the processor attributes that come from the model's RimeConfig (see `adopt_config`)
PROMPT_FIELDS = (
    "query_instruction",
    "document_instruction",
    "gen_instruction",
    "rewrite_start",
    "rewrite_end",
    "disc_emb_token",
    "gen_emb_token",
    "text_only_image",
)
# The pixel budget UME-R1 (and so RIME) embeds with; stock Qwen2-VL configs allow 5x more pixels per image.
PUBLISHED_PIXEL_BUDGET = {"shortest_edge": 3136, "longest_edge": 2359296}
PIXEL_KWARGS = ("size", "min_pixels", "max_pixels")
# `from_pretrained` options that only concern the processor (the model has no use for them)
PROCESSOR_KWARGS = (
    *PIXEL_KWARGS,
    "max_video_frames",
    "video_min_pixels",
    "video_max_pixels",
    "video_fps",
    "video_as_images",
)
# Chat-template tokens a user's text may not contain: they would break the prompt's structure (the media, embedding
# and rewrite tokens are reserved too; see `RimeProcessor.reserved_tokens`).
CHAT_TOKENS = ("<|im_start|>", *END_OF_TURN_TOKENS, "<|vision_start|>", "<|vision_end|>")
# Backbones whose video input this processor reproduces (Qwen3-VL's puts timestamps in the text: not reproduced).
VIDEO_BACKBONES = ("qwen2_vl", "qwen2_5_vl")


@dataclass
class PreparedItem:
    """One item ready for batching: its templated prompt, its images and its video frames (RGB PIL images)."""

    prompt: str
    images: list
    video: list | None = None
    num_tokens: int = 0
    """Length of the prompt in tokens, each image and video placeholder counted as the tokens it becomes."""


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

    An item with no image or video gets a 28x28 white image first when `text_only_image="blank"` (how UME-R1, and
    so very likely RIME-2B, saw text). A video (at most `max_video_frames` frames, sampled evenly) is one Qwen-VL
    video: `<|video_pad|>` tokens, `pixel_values_videos` and `video_grid_thw` (plus `second_per_grid_ts` on
    Qwen2.5-VL), computed with numpy instead of the stock video processor, so no torchvision is needed (see
    `video_rime.py`). The defaults are what UME-R1's evaluation fed: 8 frames (`experiments/public/eval/video.yaml`),
    128 to 768 merged patches of pixels per frame and 2 frames per second (qwen-vl-utils' `VIDEO_MIN_TOKEN_NUM`,
    `VIDEO_MAX_TOKEN_NUM`, `FPS`, which UME-R1's eval collator and `grpo_embed.py` load videos with).
    `video_as_images=True` feeds the frames as separate images instead; Qwen3-VL backbones always do (with a
    warning), since their video prompt carries timestamps this processor does not write.
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
        text_only_image (`str`, *optional*):
            `"blank"` or `None` (see `RimeConfig.text_only_image`).
        max_video_frames (`int`, *optional*, defaults to 8):
            Frames kept per video (evenly sampled, see `sample_frames`).
        video_min_pixels (`int`, *optional*, defaults to `128 * 28 * 28`):
            Fewest pixels per video frame (smaller frames are upscaled).
        video_max_pixels (`int`, *optional*, defaults to `768 * 28 * 28`):
            Most pixels per video frame (long videos get fewer, as in qwen-vl-utils).
        video_fps (`float`, *optional*, defaults to 2.0):
            Frame rate of the frames, for Qwen2.5-VL's time axis (`second_per_grid_ts = temporal_patch_size / fps`).
        video_as_images (`bool`, *optional*, defaults to `False`):
            Feed a video's frames as separate images (the library's behaviour before the video path existed).
        backbone_type (`str`, *optional*):
            The backbone's `model_type`; set from the model's config. Decides the video inputs.

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
        text_only_image: str | None = None,
        max_video_frames: int = 8,
        video_min_pixels: int = VIDEO_MIN_PIXELS,
        video_max_pixels: int = VIDEO_MAX_PIXELS,
        video_fps: float = VIDEO_FPS,
        video_as_images: bool = False,
        backbone_type: str | None = None,
        **kwargs,
    ):
        check_choice("text_only_image", text_only_image, TEXT_ONLY_IMAGES)
        for name, value in (
            ("max_video_frames", max_video_frames),
            ("video_min_pixels", video_min_pixels),
            ("video_max_pixels", video_max_pixels),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RimeProcessor: `{name}` must be a positive integer, got {value!r}.")
        if video_min_pixels > video_max_pixels:
            raise ValueError(f"RimeProcessor: video_min_pixels={video_min_pixels} exceeds video_max_pixels.")
        self.query_instruction = query_instruction
        self.document_instruction = document_instruction
        self.gen_instruction = gen_instruction
        self.disc_emb_token = disc_emb_token
        self.gen_emb_token = gen_emb_token
        self.rewrite_start = rewrite_start
        self.rewrite_end = rewrite_end
        self.text_only_image = text_only_image
        self.max_video_frames = max_video_frames
        self.video_min_pixels = video_min_pixels
        self.video_max_pixels = video_max_pixels
        self.video_fps = video_fps
        self.video_as_images = video_as_images
        self.backbone_type = backbone_type
        if tokenizer is not None:
            missing = [t for t in (gen_emb_token, disc_emb_token) if t not in tokenizer.get_vocab()]
            if missing:
                tokenizer.add_tokens(missing)  # ordinary added tokens, as in the published checkpoints
            tokenizer.padding_side = "left"
        if chat_template is None and tokenizer is not None:
            chat_template = getattr(tokenizer, "chat_template", None)
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, preset: str | None = None, **kwargs):
        """Load a saved RIME processor, or build one for a published RIME-2B / UME-R1 checkpoint.

        A published checkpoint ships the stock Qwen processor files. It is fed as its family was trained: the
        `preset` (`"rime"` or `"ume-r1"`, by default `"ume-r1"` when the name contains `UME-R1`) sets the prompt,
        text-only items get the blank image, and images get the published pixel budget. Keyword arguments you pass
        (`text_only_image=None`, `gen_instruction=...`, `size=...`) win. A saved RIME processor keeps its own
        settings unless `preset` is given.
        """
        # Pin the PIL image backend: the saved config names the torchvision class, which would make CPU and GPU
        # machines preprocess differently (and fail where torchvision is missing).
        kwargs.setdefault("backend", "pil")
        hub_kwargs = select_hub_kwargs(kwargs)
        processor_dict, _ = cls.get_processor_dict(pretrained_model_name_or_path, **hub_kwargs)
        published = "gen_instruction" not in processor_dict
        if published or preset is not None:
            settings = published_settings(pretrained_model_name_or_path, preset)
            if not published:
                settings.pop("text_only_image")
            for name, value in settings.items():
                if name in PROMPT_FIELDS:
                    kwargs.setdefault(name, value)
        if published and "backbone_type" not in kwargs:
            config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
            kwargs["backbone_type"] = config_dict.get("vlm_config", config_dict).get("model_type")
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        # The stock Qwen preprocessor config's pixel budget is not the one the model embeds with: use RIME's unless
        # the caller chose one.
        if published and not any(k in kwargs for k in PIXEL_KWARGS):
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
        self.backbone_type = config.vlm_config.model_type
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

    def build_messages(
        self, text: str | None, num_images: int, mode: str, instruction: str | None, has_video: bool = False
    ) -> list[dict]:
        """One chat conversation: a user turn with `num_images` image slots and a video slot, then the RIME text
        (media first, as UME-R1's eval collator orders them)."""
        content = [{"type": "image"} for _ in range(num_images)]
        if has_video:
            content.append({"type": "video"})
        content.append({"type": "text", "text": self.build_user_text(text, mode, instruction)})
        return [{"role": "user", "content": content}]

    def render_prompt(
        self, text: str | None, num_images: int, mode: str, instruction: str | None, has_video: bool = False
    ) -> str:
        """The templated prompt string for one item (gen mode opens the assistant turn)."""
        messages = self.build_messages(text, num_images, mode, instruction, has_video)
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
                With `mode`: one entry per text, `None`, a list of frames (PIL or paths) or a frame folder.
            mode (`str`, *optional*):
                `"disc"` or `"gen"`; `None` means stock Qwen behaviour (images only: videos need `mode`).
            role (`str`, *optional*, defaults to `"query"`):
                `"query"` or `"document"`: selects the instruction.
            instruction (`str`, *optional*):
                Overrides the role's instruction.
            max_length (`int`, *optional*):
                With `mode`: longest allowed prompt in tokens; a longer one raises a `ValueError`.
            return_tensors (`str`, *optional*, defaults to `"pt"` with `mode`):
                `"pt"` for torch tensors.

        Returns:
            [`BatchFeature`]: `input_ids`, `attention_mask` (left-padded), `mm_token_type_ids`, with images
            `pixel_values` and `image_grid_thw`, with videos `pixel_values_videos` and `video_grid_thw` (and
            `second_per_grid_ts` on Qwen2.5-VL).
        """
        if mode is None:
            if role is not None or instruction is not None:
                raise ValueError("RimeProcessor: `role` and `instruction` only apply with `mode='disc'` or 'gen'.")
            if videos is not None:
                raise ValueError(
                    "RimeProcessor: videos need `mode='disc'` or 'gen' (the stock video processor needs torchvision)."
                )
            return super().__call__(images=images, text=text, **kwargs)
        instruction = self.instruction_for(role or "query", instruction)
        items = [
            RimeInput(item_text, item_images, frames)
            for item_text, item_images, frames in zip(*self._align_inputs(text, images, videos))
        ]
        max_length = kwargs.get("max_length")
        prepared = [
            self.prepare_item(item, mode, instruction, f"item {i}", max_length) for i, item in enumerate(items)
        ]
        return self.collate(prepared, return_tensors=kwargs.get("return_tensors", "pt"))

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

        Every item takes one path: parse, media (images, video frames, the blank image), one prompt
        ([`~RimeProcessor.prepare_item`]), tensors ([`~RimeProcessor.collate`]). `RimeEncoder`, the
        sentence-transformers module, the training collator and the Refine-RL trainer all go through it, so they
        render identical prompts for the same item.

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
        instruction = self.instruction_for(role, instruction)
        prepared = []
        for index, item in enumerate(inputs):
            item = item if isinstance(item, RimeInput) else parse_input(item, index)
            prepared.append(self.prepare_item(item, mode, instruction, f"input {index}", max_length))
        return self.collate(prepared, return_tensors=return_tensors)

    def prepare_item(
        self,
        item: RimeInput,
        mode: str,
        instruction: str | None,
        where: str = "item",
        max_length: int | None = None,
    ) -> PreparedItem:
        """The templated prompt of one parsed item with its media, fully checked: its text and `instruction` hold no
        reserved token, its media decode (see [`~RimeProcessor.load_media`]) and its prompt is at most `max_length`
        tokens. `where` names the item in every error, which is raised before any batch is built.
        """
        check_choice("mode", mode, MODES)  # before any media is decoded
        for what, value in (("text", item.text), ("instruction", instruction)):
            self.check_text(value, f"{where} {what}")
        images, video = self.load_media(item, where)
        text = item.text
        if text and (item.images or item.video is not None):
            text = text.strip()  # beside its own media, an item's text is stripped, as UME-R1's eval collator does
        prompt = self.render_prompt(text, len(images), mode, instruction, has_video=video is not None)
        num_tokens = self.count_tokens(prompt, images, video)
        if max_length is not None and num_tokens > max_length:
            raise ValueError(
                f"{where}: the prompt is {num_tokens} tokens, longer than max_length={max_length}. RIME never "
                f"truncates a prompt, since that would cut `{self.disc_emb_token}` or image tokens: shorten the text, "
                "lower the pixel budget or raise max_length."
            )
        return PreparedItem(prompt, images, video, num_tokens)

    @property
    def reserved_tokens(self) -> tuple[str, ...]:
        """Tokens a user's text or instruction may not contain: the chat template's, the media placeholders and the
        RIME tokens. Typed by a user, each would be read as structure (an image slot, an embedding position)."""
        return (*CHAT_TOKENS, self.image_token, self.video_token, self.disc_emb_token, self.gen_emb_token)

    def check_text(self, text: str | None, where: str) -> None:
        """Raise a `ValueError` naming `where` if `text` holds a reserved token (see `reserved_tokens`)."""
        if not text:
            return
        found = [token for token in self.reserved_tokens if token in text]
        if found:
            raise ValueError(f"{where} contains {', '.join(found)}, which RIME's prompt reserves; remove it.")

    def count_tokens(self, prompt: str, images: list, video: list | None) -> int:
        """The length of a prompt in tokens once each placeholder becomes its image's or video's tokens."""
        merge = self.image_processor.merge_size
        length = len(self.tokenizer(prompt)["input_ids"])
        for image in images:
            width, height = image.size
            length += self.image_processor.get_number_of_image_patches(height, width, {}) // merge**2 - 1
        if video is not None:
            length += visual_token_count(self._video_grid(video), merge) - 1
        return length

    def load_media(self, item: RimeInput, where: str = "item") -> tuple[list, list | None]:
        """The images and video frames of one parsed item, opened and converted to RGB: `(images, frames or None)`.

        A video keeps at most `max_video_frames` frames (`sample_frames`). With `video_as_images` (or a Qwen3-VL
        backbone) its frames come first among the images and no video is returned. An item with no image or video
        gets the blank image under `text_only_image="blank"`. `where` names the item in errors.
        """
        if item.text is not None and not isinstance(item.text, str):
            raise TypeError(f"{where}: text must be a string or None, got {type(item.text).__name__}.")
        images = [load_image(image, where=f"{where} image {i}") for i, image in enumerate(item.images)]
        video = None
        if item.video is not None:
            frames = sample_frames(list(item.video), self.max_video_frames)
            video = [load_image(frame, where=f"{where} frame {i}") for i, frame in enumerate(frames)]
            if self._frames_as_images():
                images, video = [*video, *images], None
        if not images and video is None:
            if not item.text:
                raise ValueError(f"{where}: empty input (no text, image or video).")
            if self.text_only_image == "blank":
                images = [blank_image()]
        return images, video

    def _frames_as_images(self) -> bool:
        if self.video_as_images:
            return True
        if self.backbone_type is not None and self.backbone_type not in VIDEO_BACKBONES:
            logger.warning_once(
                f"RimeProcessor: {self.backbone_type} videos are fed as separate frame images; its own video prompt "
                "(with timestamps) is not reproduced."
            )
            return True
        return False

    # ------------------------------------------------------------------ tensors

    def collate(self, items: list[PreparedItem], return_tensors: str | None = "pt") -> BatchFeature:
        """Tensors for prepared items: each `<|image_pad|>` / `<|video_pad|>` expanded to its patch count, tokens
        left-padded, pixel values for every image and video. The items were checked by `prepare_item`."""
        images = [image for item in items for image in item.images]
        videos = [item.video for item in items if item.video is not None]
        merge = self.image_processor.merge_size
        data = {}
        image_tokens = video_tokens = []
        if images:
            data.update(self.image_processor(images=images, return_tensors="pt"))
            image_tokens = [visual_token_count(tuple(grid), merge) for grid in data["image_grid_thw"].tolist()]
        if videos:
            data.update(self._video_features(videos))
            video_tokens = [visual_token_count(tuple(grid), merge) for grid in data["video_grid_thw"].tolist()]
        texts = expand_placeholders(
            [item.prompt for item in items], {self.image_token: image_tokens, self.video_token: video_tokens}
        )
        encoded = self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
        data.update(encoded)
        data["mm_token_type_ids"] = torch.tensor(self.create_mm_token_type_ids(encoded["input_ids"]))
        return BatchFeature(data, tensor_type=return_tensors)

    def _video_settings(self) -> dict:
        """The patch and pixel settings of this processor's videos (`video_rime.video_patches` keywords)."""
        processor = self.image_processor
        return {
            "patch_size": processor.patch_size,
            "temporal_patch_size": processor.temporal_patch_size,
            "merge_size": processor.merge_size,
            "min_pixels": self.video_min_pixels,
            "max_pixels": self.video_max_pixels,
        }

    def _video_grid(self, frames: list) -> tuple[int, int, int]:
        width, height = frames[0].size
        return video_grid(len(frames), width, height, **self._video_settings())

    def _video_features(self, videos: list[list]) -> dict:
        """`pixel_values_videos`, `video_grid_thw` (and Qwen2.5-VL's `second_per_grid_ts`) of RGB frame lists."""
        processor = self.image_processor
        patches, grids = [], []
        for frames in videos:
            rows, grid = video_patches(
                frames, image_mean=processor.image_mean, image_std=processor.image_std, **self._video_settings()
            )
            patches.append(torch.from_numpy(rows))
            grids.append(grid)
        features = {"pixel_values_videos": torch.cat(patches), "video_grid_thw": torch.tensor(grids)}
        if self.backbone_type == "qwen2_5_vl":
            step = processor.temporal_patch_size / self.video_fps
            features["second_per_grid_ts"] = torch.tensor([step] * len(videos))
        return features

    def _align_inputs(self, text, images, videos) -> tuple[list, list[list], list]:
        """Per item: its text, its images (a list) and its video (frames, a frame folder or `None`)."""
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
        per_item_images = [
            [] if entry is None else list(entry) if isinstance(entry, (list, tuple)) else [entry] for entry in images
        ]
        for index, frames in enumerate(videos):
            if frames is not None and (isinstance(frames, str) or not isinstance(frames, Sequence) or not frames):
                videos[index] = parse_input({"video": frames}, index).video
        return texts, per_item_images, videos


def check_choice(name: str, value, choices: Sequence) -> None:
    """Raise a `ValueError` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}.")


def expand_placeholders(texts: list[str], counts: dict[str, list[int]]) -> list[str]:
    """Repeat each media placeholder as many times as its media takes tokens, media in batch order.

    `counts[token][k]` is the token count of the `k`-th occurrence of `token` over the whole batch; a text with more
    or fewer placeholders than media is an error.

    ```python
    >>> expand_placeholders(["<i> a", "b <i> <v>"], {"<i>": [2, 3], "<v>": [1]})
    ['<i><i> a', 'b <i><i><i> <v>']

    ```
    """
    for token, values in counts.items():
        found = sum(text.count(token) for text in texts)
        if found != len(values):
            raise ValueError(f"The prompts hold {found} {token} placeholders for {len(values)} media items.")
    expanded = []
    remaining = {token: iter(values) for token, values in counts.items()}
    for text in texts:
        for token, values in remaining.items():
            pieces = text.split(token)
            text = pieces[0] + "".join(token * next(values) + piece for piece in pieces[1:])
        expanded.append(text)
    return expanded


__all__ = ["PreparedItem", "RimeProcessor", "expand_placeholders"]
