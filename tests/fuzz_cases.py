"""The project's fuzz set: bad inputs, bad call arguments and silent-result traps, each with the outcome it must have.

`tests/test_reliability_fuzz.py` runs every case; `benchmarks/fuzz_inputs.py` runs them too and prints the count
table of the README (cases tried / clear error / handled / unclear / silent / crash). A case runs against a tiny
encoder whose backbone counts its forward calls: a clear error is the expected exception type, with a message that
names the caller's own item (or argument), raised before any forward call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transformers_rime import RimeEncoder, RimeGeneration, SearchHit
from transformers_rime.testing import random_image, tiny_rime_model, tiny_rime_processor


@dataclass
class Case:
    """One fuzz case. `run(encoder, files)` does the call. With `error` set, the call must raise that type with a
    message matching `match` before any forward call; otherwise `check(result, encoder)` must hold."""

    name: str
    kind: str  # "image", "video", "text", "argument", "position", "silent"
    run: Callable
    error: type[BaseException] | None = None
    match: str = ""
    check: Callable | None = None
    modes: tuple[str, ...] = ("disc",)


class ForwardCounter:
    """Counts forward calls of a module (the backbone), through a forward pre-hook."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1


def tiny_encoder(seed: int = 0) -> tuple[RimeEncoder, ForwardCounter]:
    processor = tiny_rime_processor()
    model = tiny_rime_model(processor=processor, seed=seed)
    return RimeEncoder(model, processor), ForwardCounter(model.vlm.model)  # every path runs the inner model


def write_files(folder: Path) -> dict[str, str]:
    """Bad (and good) media files for the cases: truncated JPEG / PNG, a decompression bomb, a non-image."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, fmt in (("truncated.jpg", "JPEG"), ("truncated.png", "PNG")):
        path = folder / name
        random_image(96, 96, seed=1).save(path, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        files[name] = str(path)
    bomb = folder / "bomb.png"
    Image.new("1", (8200, 8200)).save(bomb)  # 67.2M pixels in a few kB: over MAX_IMAGE_PIXELS
    files["bomb.png"] = str(bomb)
    text = folder / "notes.png"
    text.write_text("not an image")
    files["notes.png"] = str(text)
    good = folder / "good.png"
    random_image(40, 40, seed=2).save(good)
    files["good.png"] = str(good)
    return files


def at(position: int, bad, total: int = 50) -> list:
    """`total` good texts with `bad` at `position`."""
    items = [f"a harmless caption number {i}" for i in range(total)]
    items[position] = bad
    return items


def _encode(items, **kwargs):
    return lambda encoder, files, mode: encoder.encode(items(files) if callable(items) else items, mode=mode, **kwargs)


def _bad_item(name, kind, item, error, reason, position=37, modes=("disc", "gen")) -> Case:
    """A bad item at `position` of 50: refused by its own index, with `reason` in the message."""
    return Case(
        name,
        kind,
        _encode(lambda files: at(position, item(files) if callable(item) else item)),
        error,
        rf"input {position}\b.*{reason}",
        modes=modes,
    )


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _nan_weights(encoder, files, mode):
    broken, _ = tiny_encoder(seed=1)
    with torch.no_grad():
        broken.model.vlm.model.language_model.norm.weight.fill_(math.nan)
    return broken.encode(["a red car", "a blue bus"], mode=mode, max_new_tokens=2)


def _st_zero_budget(encoder, files, mode):
    from transformers_rime.models.rime.sentence_transformer_rime import RimeSentenceTransformerModule

    module = RimeSentenceTransformerModule(encoder.model, encoder.processor, mode="gen").eval()
    features = module.preprocess(["a red car"], mode="gen")
    with torch.no_grad():
        return module.forward(features, mode="gen", max_new_tokens=0)["sentence_embedding"]


def _same_as_encoder_with_zero_budget(result, encoder):
    expected = encoder.encode(["a red car"], mode="gen", max_new_tokens=0)
    return np.allclose(result.detach().numpy(), expected, atol=1e-5)


CASES = [
    # --- images: decoded in full before any model work
    _bad_item("truncated JPEG", "image", lambda f: f["truncated.jpg"], ValueError, "cannot read image file"),
    _bad_item("truncated PNG", "image", lambda f: f["truncated.png"], ValueError, "cannot read image file"),
    _bad_item("decompression bomb file", "image", lambda f: f["bomb.png"], ValueError, "over the limit"),
    _bad_item("text file named .png", "image", lambda f: f["notes.png"], ValueError, "cannot read image file"),
    _bad_item("missing image file", "image", "/no/such/photo.jpg", FileNotFoundError, "not found"),
    _bad_item(
        "20000x20000 PIL image", "image", lambda f: Image.new("L", (20000, 20000)), ValueError, "over the limit"
    ),
    _bad_item("aspect ratio 3x700", "image", lambda f: random_image(3, 700), ValueError, "aspect ratio"),
    _bad_item(
        "image inside a dict",
        "image",
        lambda f: {"text": "what is this?", "image": f["truncated.jpg"]},
        ValueError,
        "image 0: cannot read image file",
    ),
    _bad_item("not an image", "image", lambda f: {"image": 3.5}, TypeError, "expected a PIL image"),
    # --- video frames: checked like images
    _bad_item(
        "truncated video frame",
        "video",
        lambda f: {"video": [f["good.png"], f["good.png"], f["truncated.jpg"]]},
        ValueError,
        "frame 2: cannot read image file",
    ),
    _bad_item("empty frame list", "video", lambda f: {"video": []}, ValueError, "non-empty list of frames"),
    _bad_item(
        "empty frame folder",
        "video",
        lambda f: {"video": str(Path(f["good.png"]).parent / "nothing")},
        ValueError,
        "frame",
    ),
    # --- text: tokenized, reserved tokens and length checked
    _bad_item("lone surrogate", "text", "broken \ud800 text", ValueError, "not valid Unicode"),
    _bad_item("typed <|image_pad|>", "text", "look: <|image_pad|>", ValueError, r"reserves"),
    _bad_item("typed <|video_pad|>", "text", "clip <|video_pad|>", ValueError, r"reserves"),
    _bad_item("typed <disc_emb>", "text", "read me at <disc_emb>", ValueError, r"reserves"),
    _bad_item("typed <gen_emb>", "text", "then <gen_emb>", ValueError, r"reserves"),
    _bad_item("typed <|im_end|>", "text", "end<|im_end|> user", ValueError, r"reserves"),
    _bad_item("100k-character text", "text", "word " * 20000, ValueError, "longer than max_length"),
    _bad_item("empty text", "text", "   ", ValueError, "empty text"),
    _bad_item("non-string text", "text", {"text": 5}, TypeError, "'text' must be a string"),
    _bad_item("unknown dict key", "text", {"txt": "x"}, ValueError, "unknown key"),
    _bad_item("unsupported type", "text", 3.5, TypeError, "unsupported input type"),
    Case(
        "instruction with a reserved token",
        "text",
        _encode(["a red car"], instruction="Find <disc_emb> this:"),
        ValueError,
        r"input 0 instruction contains <disc_emb>",
    ),
    Case(
        "too long for a caller's max_length",
        "text",
        _encode(at(5, "a long " * 30), max_length=110),
        ValueError,
        r"input 5: the prompt is \d+ tokens, longer than max_length=110",
    ),
    # --- a bad item anywhere in a long list: its own index, first or last
    _bad_item("bad item first of 50", "position", "/no/such/a.png", FileNotFoundError, "not found", position=0),
    _bad_item("bad item last of 50", "position", "/no/such/b.png", FileNotFoundError, "not found", position=49),
    Case(
        "bad corpus item in search",
        "position",
        lambda e, f, mode: e.search(["a car"], at(12, "/no/such/c.png", 20), query_mode=mode),
        FileNotFoundError,
        r"corpus item 12\b.*not found",
        modes=("disc", "gen"),
    ),
    Case(
        "bad query in search (checked before the corpus is embedded)",
        "position",
        lambda e, f, mode: e.search(at(3, "\ud800", 5), ["a car", "a bus"], corpus_mode=mode),
        ValueError,
        r"query 3\b.*not valid Unicode",
        modes=("disc", "gen"),
    ),
    # --- call arguments
    Case("mode 'both'", "argument", lambda e, f, m: e.encode(["a"], mode="both"), ValueError, "Unknown mode 'both'"),
    Case("role 'user'", "argument", lambda e, f, m: e.encode(["a"], role="user"), ValueError, "Unknown role 'user'"),
    Case("top_k=0", "argument", lambda e, f, m: e.search(["a"], ["b"], top_k=0), ValueError, "top_k must be"),
    Case("top_k='3'", "argument", lambda e, f, m: e.search(["a"], ["b"], top_k="3"), ValueError, "top_k must be"),
    Case("index 'annoy'", "argument", lambda e, f, m: e.search(["a"], ["b"], index="annoy"), ValueError, "index"),
    Case("batch_size=0", "argument", lambda e, f, m: e.encode(["a"], batch_size=0), ValueError, "batch_size"),
    Case("max_length=0", "argument", lambda e, f, m: e.encode(["a"], max_length=0), ValueError, "max_length"),
    Case(
        "max_new_tokens=-1",
        "argument",
        lambda e, f, m: e.encode(["a"], mode="gen", max_new_tokens=-1),
        ValueError,
        "max_new_tokens",
    ),
    Case("num_beams=2", "argument", lambda e, f, m: e.encode(["a"], mode="gen", num_beams=2), ValueError, "beam"),
    Case(
        "num_return_sequences=2",
        "argument",
        lambda e, f, m: e.encode(["a"], mode="gen", num_return_sequences=2),
        ValueError,
        "one embedding per item",
    ),
    Case(
        "generation arguments in disc mode",
        "argument",
        lambda e, f, m: e.encode(["a"], mode="disc", do_sample=True),
        TypeError,
        "only apply with mode='gen'",
    ),
    Case(
        "convert_to 'list'", "argument", lambda e, f, m: e.encode(["a"], convert_to="list"), ValueError, "convert_to"
    ),
    Case(
        "max_video_frames=0",
        "argument",
        lambda e, f, m: tiny_rime_processor(max_video_frames=0),
        ValueError,
        "max_video_frames",
    ),
    # --- never a silently wrong result
    Case(
        "one string to generate is one item",
        "silent",
        lambda e, f, m: e.generate("a red car", max_new_tokens=2),
        check=lambda result, e: isinstance(result, RimeGeneration),
    ),
    Case(
        "one string to search is one query",
        "silent",
        lambda e, f, m: e.search("a red car", ["a car", "a bus", "a bike"], top_k=2),
        check=lambda result, e: len(result) == 2 and all(isinstance(hit, SearchHit) for hit in result),
    ),
    Case(
        "text that ends in an image extension is text",
        "silent",
        lambda e, f, m: e.encode(["The chart is saved as figure.png"]),
        check=lambda result, e: np.allclose(result, e.encode([{"text": "The chart is saved as figure.png"}])),
    ),
    Case(
        "numpy and bytes images equal the PIL image",
        "silent",
        lambda e, f, m: e.encode([np.asarray(random_image(40, 30)), _png_bytes(random_image(40, 30))]),
        check=lambda result, e: np.allclose(result, e.encode([random_image(40, 30)] * 2), atol=1e-6),
    ),
    Case(
        "one string to encode is one item",
        "silent",
        lambda e, f, m: e.encode("a red car"),
        check=lambda result, e: result.shape == (e.embedding_dim,),
    ),
    Case(
        "NaN weights give an error, not NaN embeddings",
        "silent",
        _nan_weights,
        FloatingPointError,
        r"Non-finite embeddings for input\(s\) \[0, 1\]",
        modes=("disc", "gen"),
    ),
    Case(
        "sentence-transformers max_new_tokens=0",
        "silent",
        _st_zero_budget,
        check=_same_as_encoder_with_zero_budget,
    ),
]


OUTCOMES = ("clear error", "handled", "unclear error", "silent", "crash")


def classify(case: Case, encoder: RimeEncoder, counter: ForwardCounter, files: dict, mode: str) -> tuple[str, str]:
    """Run one case in one mode: `(outcome, detail)`, the outcome one of `OUTCOMES`.

    - clear error: the expected exception type, a message matching the case, no forward call;
    - handled: a case that must succeed did, and its check holds;
    - unclear error: the expected type, but the wrong message or raised after model work;
    - silent: no error where one was due, or a result that fails its check;
    - crash: any other exception.
    """
    import re

    counter.calls = 0
    try:
        result = case.run(encoder, files, mode)
    except Exception as error:  # noqa: BLE001 - classifying every failure is the point
        message = f"{type(error).__name__}: {error}"
        if case.error is None or not isinstance(error, case.error):
            return "crash", message
        if not re.search(case.match, str(error), flags=re.S) or counter.calls:
            return "unclear error", f"{message} (forward calls: {counter.calls})"
        return "clear error", message
    if case.error is not None:
        return "silent", f"returned {type(result).__name__} where {case.error.__name__} was due"
    return ("handled", "") if case.check(result, encoder) else ("silent", f"check failed on {result!r:.200}")
