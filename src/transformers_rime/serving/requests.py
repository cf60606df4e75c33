"""Parse and check an embedding request before any model work: the OpenAI `/v1/embeddings` body, RIME's switches,
multimodal items (data URLs, and local or remote media only where the server allows them) and the server's limits.

Everything here is plain Python: a bad request raises a [`RequestError`] with the HTTP status and a message that
names the item (`"input 3.image: ..."`, as `RimeEncoder` names items); the server turns it into the response.

```python
>>> request = parse_request({"input": ["a red car", {"text": "a cat"}], "extra": 1}, ServeLimits(), "rime")
Traceback (most recent call last):
...
transformers_rime.serving.requests.RequestError: unknown field(s) ['extra']; ...
>>> request = parse_request({"input": ["a red car", {"text": "a cat"}], "mode": "gen"}, ServeLimits(), "rime")
>>> request.mode, request.role, [item["text"] for item in request.items]
('gen', 'query', ['a red car', 'a cat'])

```
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.request
import warnings
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from ..models.rime.configuration_rime import MODES, ROLES


ENCODING_FORMATS = ("float", "base64")
# the body fields OpenAI's embeddings API defines, vLLM's chat-style embedding request adds, and RIME's switches
OPENAI_FIELDS = ("input", "model", "encoding_format", "dimensions", "user")
VLLM_FIELDS = ("messages",)
RIME_FIELDS = ("mode", "role", "instruction", "max_new_tokens", "return_rewrite")
ITEM_FIELDS = ("text", "image", "images", "video")


class RequestError(ValueError):
    """A request the server refuses, with the HTTP status to answer (400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the server; every field is a `rime serve` flag.

    Args:
        max_items: items per request.
        max_text_chars: characters of one item's text (the tokenised prompt is also bounded by `max_length`).
        max_image_pixels: pixels of one image or frame, read from its header before it is decoded (decompression
            bombs are refused without decoding them).
        max_image_bytes: bytes of one encoded image (a data URL once decoded, a file, a download).
        max_frames: frames of one video.
        max_new_tokens: the largest rewrite budget a gen request may ask for.
        allow_remote_media: fetch `http(s)://` image URLs (off by default: server-side request forgery).
        media_root: local image paths are read only inside this folder (`None`: local paths are refused).
        remote_timeout: seconds to wait for a remote image.
    """

    max_items: int = 64
    max_text_chars: int = 32_000
    max_image_pixels: int = 4096 * 4096
    max_image_bytes: int = 20 * 1024 * 1024
    max_frames: int = 64
    max_new_tokens: int = 1024
    allow_remote_media: bool = False
    media_root: str | None = None
    remote_timeout: float = 10.0


@dataclass
class EmbeddingRequest:
    """A checked request: items as `RimeEncoder.encode` takes them (images decoded to PIL), and RIME's switches."""

    items: list[dict]
    mode: str = "disc"
    role: str = "query"
    instruction: str | None = None
    max_new_tokens: int | None = None
    return_rewrite: bool = False
    encoding_format: str = "float"
    model: str = ""
    names: list[str] = field(default_factory=list)  # how errors name each item: "input 3", "messages"


def parse_request(body, limits: ServeLimits, served_model: str, dimension: int | None = None) -> EmbeddingRequest:
    """Check an embeddings request body and decode its media; raise [`RequestError`] naming the first bad field
    or item.

    Args:
        body: the decoded JSON body.
        limits: the server's [`ServeLimits`].
        served_model: the served model's name (a request's `model` may be anything, as vLLM allows; it is echoed).
        dimension: the embedding size; a request asking other `dimensions` is refused.
    """
    if not isinstance(body, dict):
        raise RequestError(f"the body must be a JSON object, got {type(body).__name__}.")
    known = (*OPENAI_FIELDS, *VLLM_FIELDS, *RIME_FIELDS)
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; the fields are {', '.join(known)}.")
    if ("input" in body) == ("messages" in body):
        raise RequestError("give exactly one of `input` (OpenAI) or `messages` (chat-style, as vLLM takes).")
    request = EmbeddingRequest(items=[], model=str(body.get("model") or served_model))
    request.encoding_format = _choice(body, "encoding_format", ENCODING_FORMATS, "float")
    request.mode = _choice(body, "mode", MODES, "disc")
    request.role = _choice(body, "role", ROLES, "query")
    dimensions = body.get("dimensions")
    if dimensions is not None and dimension is not None and dimensions != dimension:
        raise RequestError(f"dimensions={dimensions!r}: this model's embeddings have {dimension} dimensions only.")
    instruction = body.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise RequestError(f"instruction must be a string, got {type(instruction).__name__}.")
    request.instruction = instruction
    budget = body.get("max_new_tokens")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
        raise RequestError(f"max_new_tokens must be a non-negative integer, got {budget!r}.")
    if budget is not None and budget > limits.max_new_tokens:
        raise RequestError(f"max_new_tokens={budget} is over this server's limit of {limits.max_new_tokens}.")
    request.max_new_tokens = budget
    request.return_rewrite = body.get("return_rewrite", False)
    if not isinstance(request.return_rewrite, bool):
        raise RequestError("return_rewrite must be true or false.")
    if request.return_rewrite and request.mode != "gen":
        raise RequestError("return_rewrite needs mode='gen' (only gen mode writes a rewrite).")
    if "messages" in body:
        request.names = ["messages"]
        request.items = [_messages_item(body["messages"], limits)]
        return request
    inputs = body["input"]
    inputs = inputs if isinstance(inputs, list) else [inputs]
    if not inputs:
        raise RequestError("input is empty.")
    if len(inputs) > limits.max_items:
        raise RequestError(f"{len(inputs)} items in one request; this server takes at most {limits.max_items}.")
    request.names = [f"input {index}" for index in range(len(inputs))]
    request.items = [_item(value, name, limits) for value, name in zip(inputs, request.names)]
    return request


def _choice(body: dict, name: str, choices: tuple, default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if value not in choices:
        raise RequestError(f"{name}={value!r}; choose one of {', '.join(choices)}.")
    return value


def _item(value, name: str, limits: ServeLimits) -> dict:
    """One item of `input`: a string is text (never a path), an object has `text` / `image` / `images` / `video`."""
    if isinstance(value, str):
        return {"text": _text(value, name, limits)}
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        raise RequestError(f"{name}: token-id inputs are not supported; send the text.")
    if not isinstance(value, dict):
        raise RequestError(f"{name}: expected a string or an object with {', '.join(ITEM_FIELDS)}.")
    unknown = sorted(set(value) - set(ITEM_FIELDS))
    if unknown:
        raise RequestError(f"{name}: unknown key(s) {unknown}; use {', '.join(ITEM_FIELDS)}.")
    item = {}
    if value.get("text") is not None:
        if not isinstance(value["text"], str):
            raise RequestError(f"{name}.text: expected a string, got {type(value['text']).__name__}.")
        item["text"] = _text(value["text"], f"{name}.text", limits)
    images = [] if value.get("image") is None else [value["image"]]
    images += _list(value.get("images"), f"{name}.images")
    if images:
        key = "image" if value.get("image") is not None and len(images) == 1 else "images"
        decoded = [
            _image(url, f"{name}.{key}" + (f"[{i}]" if key == "images" else ""), limits)
            for i, url in enumerate(images)
        ]
        item["images"] = decoded
    if value.get("video") is not None:
        frames = _list(value["video"], f"{name}.video")
        if not frames:
            raise RequestError(f"{name}.video: a video needs at least one frame.")
        if len(frames) > limits.max_frames:
            raise RequestError(f"{name}.video: {len(frames)} frames; this server takes at most {limits.max_frames}.")
        item["video"] = [_image(url, f"{name}.video[{i}]", limits) for i, url in enumerate(frames)]
    if not item:
        raise RequestError(f"{name}: an empty item (no text, image or video).")
    return item


def _list(value, name: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError(f"{name}: expected a list, got {type(value).__name__}.")
    return value


def _text(text: str, name: str, limits: ServeLimits) -> str:
    if len(text) > limits.max_text_chars:
        raise RequestError(f"{name}: {len(text)} characters; this server takes at most {limits.max_text_chars}.")
    return text


def _messages_item(messages, limits: ServeLimits) -> dict:
    """vLLM's chat-style embedding request: the user turns' text parts (joined by a newline) and `image_url`
    parts make one item."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of chat messages.")
    texts, images = [], []
    for m, message in enumerate(messages):
        where = f"messages[{m}]"
        if not isinstance(message, dict) or message.get("role") not in ("user", "system"):
            raise RequestError(f"{where}: expected a user (or system) message; RIME builds its own prompt around it.")
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for p, part in enumerate(_list(content, f"{where}.content")):
            part_where = f"{where}.content[{p}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                images.append(_image(part["image_url"].get("url"), f"{part_where}.image_url", limits))
            else:
                raise RequestError(f"{part_where}: expected a `text` or `image_url` part.")
    item = {"text": _text("\n".join(texts), "messages", limits)} if texts else {}
    if images:
        item["images"] = images
    if not item:
        raise RequestError("messages: no text and no image.")
    return item


def _image(source, name: str, limits: ServeLimits) -> Image.Image:
    """A data URL, a remote URL (only when allowed) or a local path (only inside the media root), opened lazily
    after its size in bytes and pixels (from the header) is checked."""
    if not isinstance(source, str) or not source:
        raise RequestError(f"{name}: expected an image as a data URL (data:image/...;base64,...).")
    if source.startswith("data:"):
        data = _data_url(source, name, limits)
    elif source.startswith(("http://", "https://")):
        data = _download(source, name, limits)
    elif "://" in source:
        raise RequestError(f"{name}: unsupported URL scheme in {source[:40]!r}.")
    else:
        data = _local_file(source, name, limits)
    try:
        with warnings.catch_warnings():  # the size is checked below, against this server's own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise RequestError(f"{name}: {error}") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise RequestError(f"{name}: not an image PIL can read ({error}).") from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise RequestError(
            f"{name}: a {width}x{height} image has {width * height} pixels; this server takes at most "
            f"{limits.max_image_pixels}."
        )
    return image


def _data_url(url: str, name: str, limits: ServeLimits) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise RequestError(f"{name}: expected a base64 image data URL (data:image/<type>;base64,<data>).")
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise RequestError(f"{name}: the image is over this server's limit of {limits.max_image_bytes} bytes.")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{name}: the data URL is not valid base64.") from None


def _download(url: str, name: str, limits: ServeLimits) -> bytes:
    if not limits.allow_remote_media:
        raise RequestError(
            f"{name}: this server does not fetch remote URLs (start it with --allow-remote-media to allow them); "
            "send the image as a data URL."
        )
    try:
        with urllib.request.urlopen(url, timeout=limits.remote_timeout) as response:  # noqa: S310 (allowed by flag)
            data = response.read(limits.max_image_bytes + 1)
    except OSError as error:
        raise RequestError(f"{name}: cannot fetch {url}: {error}.") from None
    if len(data) > limits.max_image_bytes:
        raise RequestError(f"{name}: the image is over this server's limit of {limits.max_image_bytes} bytes.")
    return data


def _local_file(path: str, name: str, limits: ServeLimits) -> bytes:
    if limits.media_root is None:
        raise RequestError(
            f"{name}: this server does not read local paths (start it with --media-root DIR to allow paths inside "
            "DIR); send the image as a data URL."
        )
    root = os.path.realpath(limits.media_root)
    resolved = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, resolved]) != root:
        raise RequestError(f"{name}: {path} is outside the media root.")
    if not os.path.isfile(resolved):
        raise RequestError(f"{name}: no file {path} in the media root.")
    if os.path.getsize(resolved) > limits.max_image_bytes:
        raise RequestError(f"{name}: the image is over this server's limit of {limits.max_image_bytes} bytes.")
    with open(resolved, "rb") as file:
        return file.read()


__all__ = ["EmbeddingRequest", "RequestError", "ServeLimits", "parse_request"]
