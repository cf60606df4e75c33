# Copyright 2026 The transformers_rime authors. Licensed under the Apache License, Version 2.0.
"""What RIME accepts as an item to embed, and how images are opened and cleaned.

Accepted items: a `str` (text; or an image path when it is a single token, without whitespace, ending in an image
extension: see `names_image_file`), a `pathlib.Path` (an image, or a folder of frames: a video), an image (a
`PIL.Image.Image`, an `(H, W[, C])` uint8 numpy array, encoded `bytes` or a `BytesIO`), a list of frames (a video: any
of those images, or paths), or a dict with any of `text`, `image`, `images`, `video` (a frame list or a frame folder).
Text given as `{"text": ...}` is always text. Parsing fails on the first bad item with an error that names it, before any model work.

This file ships to the Hub next to the weights (``trust_remote_code``), so that the processor and the
sentence-transformers module read inputs exactly as `RimeEncoder` does: it imports only PIL and numpy.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DICT_KEYS = ("text", "image", "images", "video")
# Qwen's smart_resize refuses aspect ratios above 200; we refuse them earlier, naming the item.
MAX_ASPECT_RATIO = 200
# The most pixels an image or video frame may have (8192x8192): checked from the header, before anything is decoded,
# so a huge image or a decompression bomb is refused instead of filling memory. Change it here for larger inputs.
MAX_IMAGE_PIXELS = 8192 * 8192
# UME-R1's image for text-only items: 28x28, white, RGB (its eval collator and `grpo_embed.py`; `blank.jpg` in SFT).
BLANK_IMAGE_SIZE = (28, 28)


def blank_image() -> Image.Image:
    """The image a text-only item is fed with under `text_only_image="blank"`: 28x28 white RGB."""
    return Image.new("RGB", BLANK_IMAGE_SIZE, (255, 255, 255))


def frame_files(directory: str | os.PathLike) -> list[str]:
    """The image files of a frame folder, in natural order (`frame_2.jpg` before `frame_10.jpg`); `[]` if none."""

    def natural_key(name: str):
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]

    names = [entry.name for entry in os.scandir(directory) if entry.is_file() and is_image_path(entry.name)]
    return [os.path.join(os.fspath(directory), name) for name in sorted(names, key=natural_key)]


def sample_frames(frames: list, max_frames: int) -> list:
    """Keep at most `max_frames` frames, evenly spaced: indices `linspace(0, n - 1, max_frames)` rounded down, as
    VLM2Vec's (and so UME-R1's) video loader picks them. The library's only frame sampler.

    ```python
    >>> sample_frames(list(range(12)), 8)
    [0, 1, 3, 4, 6, 7, 9, 11]
    >>> sample_frames(list(range(3)), 8)
    [0, 1, 2]

    ```
    """
    if len(frames) <= max_frames:
        return list(frames)
    return [frames[i] for i in np.linspace(0, len(frames) - 1, max_frames, dtype=int)]


@dataclass
class RimeInput:
    """One item to embed: optional text, images (PIL or paths) and video frames (PIL or paths)."""

    text: str | None = None
    images: list = field(default_factory=list)
    video: list | None = None
    # (width, height) of every image and frame, read from their headers when the item was parsed
    sizes: list[tuple[int, int]] = field(default_factory=list)


def is_image_path(value: str | os.PathLike) -> bool:
    """Whether a string names an image file (by extension, case-insensitive).

    ```python
    >>> is_image_path("photos/CAT.JPG"), is_image_path("a photo of a cat")
    (True, False)

    ```
    """
    return os.fspath(value).lower().endswith(IMAGE_EXTENSIONS)


def names_image_file(text: str) -> bool:
    """Whether a string item is an image path rather than text: a single token (no whitespace) ending in an image
    extension. "The chart is saved as figure.png" is text; "figure.png" and "/data/My_Photos/cat.JPG" are paths. A
    path with spaces must be given as a `pathlib.Path` or `{"image": path}`.

    ```python
    >>> names_image_file("photos/cat.jpg"), names_image_file("The chart is saved as figure.png")
    (True, False)

    ```
    """
    return is_image_path(text) and not any(character.isspace() for character in text)


# Images held in memory in other forms than PIL: decoded arrays and encoded bytes
IN_MEMORY_IMAGES = (np.ndarray, bytes, bytearray, io.BytesIO)


def as_pil_image(value, where: str) -> Image.Image:
    """A PIL image for an `(H, W)` / `(H, W, 1|3|4)` uint8 array or encoded image bytes (`bytes`, `BytesIO`).

    Bytes are opened lazily (the header only); the pixels are decoded, and checked, by `load_image`.
    """
    if isinstance(value, np.ndarray):
        if (
            value.dtype != np.uint8
            or value.ndim not in (2, 3)
            or (value.ndim == 3 and value.shape[2] not in (1, 3, 4))
        ):
            raise ValueError(
                f"{where}: an image array must be uint8 of shape (H, W) or (H, W, C) with C in 1, 3, 4; got "
                f"{value.dtype} {value.shape}."
            )
        return Image.fromarray(value[:, :, 0] if value.ndim == 3 and value.shape[2] == 1 else value)
    data = value.getvalue() if isinstance(value, io.BytesIO) else bytes(value)
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{where}: the bytes are not an image PIL can read: {error}") from None


def _check_image(value, where: str) -> tuple[int, int]:
    """Check an image or image path without decoding it fully; return its (width, height)."""
    if isinstance(value, Image.Image):
        return check_pixels(value.size, where)
    if isinstance(value, (str, os.PathLike)):
        return open_image_file(value, where, decode=False)
    raise TypeError(f"{where}: expected a PIL image or an image path, got {type(value).__name__}.")


class ImageTooLargeError(ValueError):
    """An image or frame over `MAX_IMAGE_PIXELS`."""


def check_pixels(size: tuple[int, int], where: str) -> tuple[int, int]:
    """Return `size` (width, height), or raise a `ValueError` naming `where` if it exceeds `MAX_IMAGE_PIXELS`."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(
            f"{where}: a {width}x{height} image has {width * height} pixels, over the limit of {MAX_IMAGE_PIXELS} "
            "(inputs_rime.MAX_IMAGE_PIXELS); downscale it first."
        )
    return size


def check_text(text: str, where: str) -> str:
    """Return `text`, or raise a `ValueError` naming `where` if it cannot be encoded (a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{where}: the text is not valid Unicode ({error.reason} at character {error.start})."
        ) from None
    return text


def parse_input(item, index: int, name: str = "input") -> RimeInput:
    """Normalise one user item (see the module docstring); raise a clear error naming it `"{name} {index}"`."""
    where = f"{name} {index}"
    if isinstance(item, IN_MEMORY_IMAGES) and not (isinstance(item, np.ndarray) and item.ndim == 4):
        item = as_pil_image(item, where)
    if isinstance(item, np.ndarray):  # (T, H, W, C): a video
        return _video_input(None, list(item), where)
    if isinstance(item, str):
        if names_image_file(item):
            return RimeInput(images=[item], sizes=[_check_image(item, where)])
        if not item.strip():
            raise ValueError(f"{where}: empty text.")
        return RimeInput(text=check_text(item, where))
    if isinstance(item, Path) and item.is_dir():
        return _video_input(None, item, where)
    if isinstance(item, (Path, Image.Image)):
        return RimeInput(images=[item], sizes=[_check_image(item, where)])
    if isinstance(item, (list, tuple)):
        return _video_input(None, item, where)
    if isinstance(item, dict):
        unknown = set(item) - set(DICT_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; use {', '.join(DICT_KEYS)}.")
        text = item.get("text")
        if text is not None and not isinstance(text, str):
            raise TypeError(f"{where}: 'text' must be a string, got {type(text).__name__}.")
        if text is not None:
            check_text(text, where)
        images = []
        if item.get("image") is not None:
            images.append(item["image"])
        if item.get("images") is not None:
            if not isinstance(item["images"], (list, tuple)):
                raise TypeError(f"{where}: 'images' must be a list of images or paths.")
            images.extend(item["images"])
        parsed = _video_input(text, item["video"], where) if item.get("video") is not None else RimeInput(text)
        if text is not None and not text.strip() and not images and item.get("video") is None:
            raise ValueError(f"{where}: empty text.")
        parsed.images = [_in_memory_to_pil(image, f"{where} image {i}") for i, image in enumerate(images)]
        parsed.sizes += [_check_image(image, f"{where} image {i}") for i, image in enumerate(parsed.images)]
        if not parsed.text and not parsed.images and parsed.video is None:
            raise ValueError(f"{where}: empty input dict (no text, image or video).")
        return parsed
    raise TypeError(
        f"{where}: unsupported input type {type(item).__name__}; expected str, image path, image (PIL, uint8 "
        "array, bytes), list of frames (video) or dict with text/image/images/video."
    )


def _in_memory_to_pil(value, where: str):
    return as_pil_image(value, where) if isinstance(value, IN_MEMORY_IMAGES) else value


def _video_input(text: str | None, frames, where: str) -> RimeInput:
    if isinstance(frames, np.ndarray) and frames.ndim == 4:  # (T, H, W, C)
        frames = list(frames)
    if isinstance(frames, (str, os.PathLike)) and os.path.isdir(frames):
        folder = frames
        frames = frame_files(folder)
        if not frames:
            raise ValueError(f"{where}: the frame folder {os.fspath(folder)} holds no image files.")
    if not isinstance(frames, (list, tuple)) or len(frames) == 0:
        raise ValueError(
            f"{where}: a video must be a non-empty list of frames (PIL images or paths) or a frame folder."
        )
    frames = [_in_memory_to_pil(frame, f"{where} frame {i}") for i, frame in enumerate(frames)]
    sizes = [_check_image(frame, f"{where} frame {i}") for i, frame in enumerate(frames)]
    return RimeInput(text=text, video=frames, sizes=sizes)


def parse_inputs(items) -> list[RimeInput]:
    """Normalise a list of items, failing on the first bad one (before any model work)."""
    return [parse_input(item, index) for index, item in enumerate(items)]


def load_image(image, where: str = "image") -> Image.Image:
    """Open (if a path), EXIF-orient and convert an image to RGB, with errors that name `where`.

    Transparent images are composited on white; 16-bit and float images are rescaled to 8 bits; CMYK, palette
    and grayscale images are converted. Aspect ratios above 200 are refused (the backbone cannot resize them).
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        image = open_image_file(path, where)
        where = f"{where} ({path})"
    elif not isinstance(image, Image.Image):
        raise TypeError(f"{where}: expected a PIL image or an image path, got {type(image).__name__}.")
    else:
        check_pixels(image.size, where)
        try:  # an image opened from bytes is decoded here, in full
            image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"{where}: cannot decode the image: {error}") from None
    image = ImageOps.exif_transpose(image) or image
    image = to_rgb(image)
    width, height = image.size
    if min(width, height) < 1:
        raise ValueError(f"{where}: empty image of size {width}x{height}.")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"{where}: aspect ratio {width}x{height} exceeds {MAX_ASPECT_RATIO}:1, which Qwen-VL cannot resize; "
            "crop or pad the image first."
        )
    return image


def open_image_file(path: str | os.PathLike, where: str = "image", decode: bool = True):
    """Open an image file, with errors that name `where` and the path.

    With `decode=True`, return the fully decoded image (a truncated file is an error; PIL's global
    `LOAD_TRUNCATED_IMAGES` is never touched). With `decode=False`, only check the file (`PIL.Image.verify`, no
    pixel decoding) and return its `(width, height)`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: image file not found: {path}")
    try:
        with Image.open(path) as image:
            size = check_pixels(image.size, f"{where} ({path})")  # from the header: nothing decoded yet
            if not decode:
                image.verify()
                return size
            image.load()
            return image.copy()
    except ImageTooLargeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{where}: cannot read image file {path}: {error}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: alpha over white, high bit depths rescaled to 0..255."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if math.isfinite(high - low) and high > low else 0.0
        array = ((array - low) * scale).clip(0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


__all__ = [
    "BLANK_IMAGE_SIZE",
    "DICT_KEYS",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "RimeInput",
    "blank_image",
    "check_pixels",
    "check_text",
    "frame_files",
    "as_pil_image",
    "is_image_path",
    "names_image_file",
    "load_image",
    "open_image_file",
    "parse_input",
    "parse_inputs",
    "sample_frames",
    "to_rgb",
]
