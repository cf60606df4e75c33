# Copyright 2026 The transformers_rime authors. Licensed under the Apache License, Version 2.0.
"""Qwen-VL's video input, computed with PIL and numpy (no torchvision).

A video is a list of RGB frames. It becomes the tensors the stock `Qwen2VLVideoProcessor` produces: every frame
resized to one size (a multiple of `patch_size * merge_size` inside a per-frame pixel budget), rescaled to [0, 1],
normalised with the CLIP mean and std, the frame count padded to a multiple of the temporal patch by repeating the
last frame, and cut into patches in the same order. `RimeProcessor` uses it for `pixel_values_videos` and
`video_grid_thw`, which the backbone merges two frames at a time and places on the mRoPE time axis.

Defaults are what UME-R1's evaluation fed (sources in `RimeProcessor`'s docstring): 128 to 768 visual tokens'
worth of pixels per frame, and qwen-vl-utils' cap on the whole video's pixels.

This file ships to the Hub next to the weights (``trust_remote_code``): it imports only PIL, numpy and transformers.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize


# qwen-vl-utils' per-frame pixel budget: 128 and 768 merged 28x28 patches (VIDEO_MIN/MAX_TOKEN_NUM)
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
# qwen-vl-utils caps a whole video at 90% of a 128k-token context (MODEL_SEQ_LEN), shared by its frames
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)
# Frames are sampled to this rate by qwen-vl-utils (FPS); Qwen2.5-VL's time axis needs it
VIDEO_FPS = 2.0


def frame_pixel_budget(num_frames: int, min_pixels: int, max_pixels: int, temporal_patch_size: int = 2) -> float:
    """The most pixels one frame may have: `max_pixels`, or less for a long video, so that all frames together
    (their count padded to a multiple of the temporal patch) stay under `VIDEO_TOTAL_PIXELS`, never below
    1.05 x `min_pixels`, as qwen-vl-utils bounds them.

    ```python
    >>> frame_pixel_budget(8, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS) == VIDEO_MAX_PIXELS
    True
    >>> frame_pixel_budget(767, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)  # padded to 768 frames
    235200.0

    ```
    """
    padded = num_frames + -num_frames % temporal_patch_size
    return max(min(max_pixels, VIDEO_TOTAL_PIXELS / padded * temporal_patch_size), int(min_pixels * 1.05))


def video_frame_size(
    width: int,
    height: int,
    num_frames: int,
    *,
    factor: int,
    min_pixels: int,
    max_pixels: int,
    temporal_patch_size: int,
) -> tuple[int, int]:
    """The `(height, width)` every frame of a video is resized to (Qwen's `smart_resize` within the frame budget)."""
    budget = frame_pixel_budget(num_frames, min_pixels, max_pixels, temporal_patch_size)
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=budget)


def video_grid(
    num_frames: int,
    width: int,
    height: int,
    *,
    patch_size: int,
    temporal_patch_size: int,
    merge_size: int,
    min_pixels: int,
    max_pixels: int,
) -> tuple[int, int, int]:
    """The `video_grid_thw` `video_patches` gives a video of `num_frames` frames of `width` x `height`, without
    touching a pixel (to count its tokens before batching).

    ```python
    >>> video_grid(3, 320, 240, patch_size=14, temporal_patch_size=2, merge_size=2,
    ...            min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS)
    (2, 20, 28)

    ```
    """
    resized_height, resized_width = video_frame_size(
        width,
        height,
        num_frames,
        factor=patch_size * merge_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        temporal_patch_size=temporal_patch_size,
    )
    return -(-num_frames // temporal_patch_size), resized_height // patch_size, resized_width // patch_size


def patchify_video(
    frames: np.ndarray, patch_size: int, temporal_patch_size: int, merge_size: int
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Cut normalised frames into Qwen-VL patches.

    Args:
        frames (`np.ndarray` of shape `(num_frames, channels, height, width)`):
            Height and width must be multiples of `patch_size * merge_size`.

    Returns:
        `(patches, (grid_t, grid_h, grid_w))`, patches of shape `(grid_t * grid_h * grid_w, channels *
        temporal_patch_size * patch_size**2)`. The frame count is first padded to a multiple of
        `temporal_patch_size` with copies of the last frame. Rows run over time, then over `merge_size x
        merge_size` blocks in raster order, then over the patches inside a block, which is the order in which the
        vision tower merges neighbours.
    """
    pad = -len(frames) % temporal_patch_size
    if pad:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    num_frames, channels, height, width = frames.shape
    grid_t, grid_h, grid_w = num_frames // temporal_patch_size, height // patch_size, width // patch_size
    blocks = frames.reshape(
        grid_t,
        temporal_patch_size,
        channels,
        grid_h // merge_size,
        merge_size,
        patch_size,
        grid_w // merge_size,
        merge_size,
        patch_size,
    )
    # -> (t, block row, block col, row in block, col in block, channel, frame in patch, pixel row, pixel col)
    blocks = blocks.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    patches = blocks.reshape(grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    return np.ascontiguousarray(patches), (grid_t, grid_h, grid_w)


def video_patches(
    frames: list[Image.Image],
    *,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    image_mean=(0.48145466, 0.4578275, 0.40821073),
    image_std=(0.26862954, 0.26130258, 0.27577711),
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """`pixel_values_videos` rows and the `video_grid_thw` of one video given as RGB PIL frames.

    Every frame is resized (bicubic, as the PIL image backend does) to the size `video_frame_size` computes from the
    first frame, then rescaled by 1/255, normalised and patchified (`patchify_video`).

    Example:

    ```python
    >>> from PIL import Image
    >>> frames = [Image.new("RGB", (320, 240), (i * 40, 0, 0)) for i in range(3)]
    >>> patches, grid = video_patches(frames)
    >>> grid, patches.shape  # 3 frames padded to 4, each upscaled to 280x392 (at least 128 merged patches)
    ((2, 20, 28), (1120, 1176))

    ```
    """
    width, height = frames[0].size
    resized_height, resized_width = video_frame_size(
        width,
        height,
        len(frames),
        factor=patch_size * merge_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        temporal_patch_size=temporal_patch_size,
    )
    arrays = [
        np.asarray(
            frame
            if frame.size == (resized_width, resized_height)
            else frame.resize((resized_width, resized_height), Image.Resampling.BICUBIC),
            dtype=np.float32,
        )
        for frame in frames
    ]
    video = np.stack(arrays).transpose(0, 3, 1, 2) / np.float32(255.0)  # (T, C, H, W) in [0, 1]
    mean = np.asarray(image_mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(image_std, dtype=np.float32)[None, :, None, None]
    return patchify_video((video - mean) / std, patch_size, temporal_patch_size, merge_size)


def visual_token_count(grid: tuple[int, int, int], merge_size: int) -> int:
    """How many placeholder tokens an image or video with this patch grid takes (after the spatial merge)."""
    return math.prod(grid) // (merge_size * merge_size)


__all__ = [
    "VIDEO_FPS",
    "VIDEO_MAX_PIXELS",
    "VIDEO_MIN_PIXELS",
    "frame_pixel_budget",
    "patchify_video",
    "video_grid",
    "video_frame_size",
    "video_patches",
    "visual_token_count",
]
