"""Content fingerprints: equal inputs, weights or task data hash alike, whatever object holds them.

They key the Refine-RL candidate pools (one entry per distinct candidate), the evaluation cache and corpus indexes (a
changed model, processor or task never reuses old embeddings).
"""

from __future__ import annotations

import hashlib
import os

import torch
from PIL import Image

from .models.rime.inputs_rime import RimeInput


def item_fingerprint(item: RimeInput, instruction: str | None = None) -> str:
    """A content hash of a candidate, so that a pool holds each distinct candidate once.

    Equal text, equal images (same pixels, or files with the same bytes), equal frames and the same instruction give the same
    fingerprint, whichever row the candidate came from. A candidate listed twice (a row's negative that is another
    row's positive, or the same document in two pairs) would otherwise share the softmax with itself: a rollout
    that retrieves it perfectly would score 1/2.

    ```python
    >>> item_fingerprint(RimeInput(text="a cat")) == item_fingerprint(RimeInput(text="a cat"))
    True
    >>> item_fingerprint(RimeInput(text="a cat")) == item_fingerprint(RimeInput(text="a cat"), "Find the image.")
    False

    ```
    """
    digest = hashlib.blake2b(digest_size=16)

    def add(tag: bytes, data: bytes) -> None:  # length-prefixed, so fields cannot run into each other
        digest.update(tag + len(data).to_bytes(8, "little") + data)

    add(b"instruction", repr(instruction).encode())
    add(b"text", repr(item.text).encode())
    for image in item.images:
        add(b"image", _media_bytes(image))
    add(b"video", repr(item.video is not None).encode())
    for frame in item.video or []:
        add(b"frame", _media_bytes(frame))
    return digest.hexdigest()


def _media_bytes(media) -> bytes:
    if isinstance(media, Image.Image):
        return f"{media.mode}{media.size}".encode() + media.tobytes()
    path = os.fspath(media)
    if os.path.isfile(path):  # the file's content: an image replaced under the same name is another item
        with open(path, "rb") as f:
            return b"file:" + hashlib.blake2b(f.read(), digest_size=16).digest()
    return b"path:" + path.encode()


def model_fingerprint(model: torch.nn.Module, *extra: str) -> str:
    """A hash of every parameter and buffer of `model` (names, dtypes, shapes, values) and of `extra` strings (for
    example the processor's configuration): any changed weight gives another fingerprint."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for value in extra:
        digest.update(len(value).to_bytes(8, "little") + value.encode())
    return digest.hexdigest()


def encoder_fingerprint(encoder) -> str:
    """A hash of everything that shapes the encoder's embeddings, whatever mode and budget they are made with.

    That is the weights, the model's configuration (tokens, pooling, normalisation, prompts, default rewrite budget),
    its generation configuration (end-of-sequence ids), and the processor's saved configuration (instructions, tags,
    pixel budget, video settings) with its chat template. The rewrite budget a gen-mode run actually uses is part of
    that side's cache key (see `effective_max_new_tokens`).
    """
    model, processor = encoder.model, encoder.processor
    generation_config = getattr(getattr(model, "vlm", model), "generation_config", None)
    return model_fingerprint(
        model,
        model.config.to_json_string(),
        generation_config.to_json_string() if generation_config is not None else "",
        processor.to_json_string() if hasattr(processor, "to_json_string") else "",
        getattr(processor, "chat_template", None) or "",
    )


__all__ = ["encoder_fingerprint", "item_fingerprint", "model_fingerprint"]
