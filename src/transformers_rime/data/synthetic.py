"""Synthetic multimodal retrieval data, rendered offline with PIL, with a held-out split of unseen combinations.

Five kinds of query, each with a gold rewrite for both sides (what a rewrite annotation would say):

| kind | query | document |
|---|---|---|
| `text_to_image` | "a red circle on the left" | a rendered scene |
| `image_to_text` | a rendered scene | its caption |
| `image_question_to_answer` | a two-object scene + "what colour is the square?" | "the answer: the red square on the left" |
| `text_to_page` | "the red report with a circle logo" | a rendered document page (header, logo, title text) |
| `text_to_video` | "a red circle moving to the right" | 4 frames of the circle moving |

Scenes hold one to three copies of one object at a position, or two objects side by side or stacked; objects are a
colour and a shape. A quarter of the 32 colour-shape pairs (one per colour, each shape twice) never appear in the
`train` split, and every `heldout` item contains at least one of them, so held-out scores measure composition,
not memory. Renders are jittered (position, size, background), so no two images are the same.

Four more kinds need a step of reasoning (`counting`, `spatial`, `composition`, `negation`; see
`transformers_rime.data.reasoning`) and also carry gold chains of thought. `KINDS` are the five above,
`REASONING_KINDS` the four, `ALL_KINDS` both; every function here takes any of them.

`synthetic_pairs` gives a fixed list of training rows, `SyntheticPairStream` an endless stream of fresh renders
(what the quickstart trains on), and `synthetic_examples` the examples of one kind
(`transformers_rime.evaluation.synthetic_tasks` makes the held-out evaluation tasks from them).

```python
>>> rows = synthetic_pairs("train", per_kind=2, seed=0)
>>> sorted(rows[0]), len(rows)
(['positive', 'positive_rewrite', 'query', 'query_rewrite', 'source'], 10)

```
"""

from __future__ import annotations

import itertools
import random

import torch
from PIL import Image, ImageDraw

from .reasoning import REASONING_KINDS, REASONING_MAKERS
from .scenes import (
    COLORS,
    HELDOUT_PAIRS,
    SHAPES,
    SIZE,
    check_split,
    dark_background,
    draw_shape,
    pick_objects,
    place_center,
    place_phrase,
)


KINDS = ("text_to_image", "image_to_text", "image_question_to_answer", "text_to_page", "text_to_video")
ALL_KINDS = KINDS + REASONING_KINDS
_NUMBERS = {1: "a", 2: "two", 3: "three"}
_ROW_KEYS = ("query", "positive", "query_rewrite", "positive_rewrite", "source")


def synthetic_pairs(
    split: str = "train",
    per_kind: int = 64,
    seed: int = 0,
    negatives: int = 0,
    kinds: tuple[str, ...] = KINDS,
    chains: bool = False,
) -> list[dict]:
    """Training rows for the contrastive and Refine-RL trainers: `query`, `positive`, their gold rewrites and
    `source` (the kind), `per_kind` of each kind, interleaved. Within a kind no query and no document repeats, so
    in-batch negatives are never copies of the positive. With `negatives=k`, each row also gets `negatives`: the
    documents of `k` other rows of its kind (hard negatives, as the held-out tasks rank within a kind).
    `kinds` picks the kinds (any of `ALL_KINDS`); with `chains=True` the rewrites are the gold chains of thought
    (`transformers_rime.data.reasoning`, whose kinds alone have them)."""
    _check_kinds(kinds, chains)
    if negatives < 0 or (negatives and negatives >= per_kind):
        raise ValueError(f"negatives must be in [0, per_kind), got {negatives} with per_kind={per_kind}.")
    examples = [synthetic_examples(kind, split, per_kind, seed) for kind in kinds]
    rng = random.Random(f"negatives-{split}-{seed}")
    rows = []
    for group in itertools.zip_longest(*examples):
        for row in group:
            if row is None:
                continue
            rows.append(_training_row(row, chains))
            if negatives:
                others = [other for other in examples[kinds.index(row["source"])] if other is not row]
                rows[-1]["negatives"] = [other["positive"] for other in rng.sample(others, negatives)]
    return rows


class SyntheticPairStream(torch.utils.data.IterableDataset):
    """Endless training rows (as `synthetic_pairs` gives), rendered as they are drawn, so no image is seen twice.

    Within every block of `batch_size` consecutive rows no query and no document repeats (across kinds too: a
    caption is never both a query and another row's document), so in-batch negatives are never copies of a
    positive. Give the trainer the same `batch_size`, and `max_steps`: the stream has no end.

    Args:
        split (`str`, defaults to `"train"`): `"train"` or `"heldout"` (see `synthetic_pairs`).
        batch_size (`int`, defaults to 32): the block within which rows are distinct.
        seed (`int`, defaults to 0): the same seed gives the same rows.
        kinds (`tuple[str, ...]`, defaults to `KINDS`): the kinds to draw, any of `ALL_KINDS`.
        homogeneous (`bool`, defaults to `False`): one kind per block (kinds take turns between blocks) instead of
            kinds taking turns within each block.
        chains (`bool`, defaults to `False`): train on the gold chains of thought instead of the gold rewrites (the
            reasoning kinds only).

    ```python
    >>> stream = SyntheticPairStream(batch_size=8, seed=0)
    >>> rows = list(itertools.islice(stream, 8))
    >>> [row["source"] for row in rows[:5]] == list(KINDS), len({str(row["query_rewrite"]) for row in rows})
    (True, 8)

    ```
    """

    def __init__(
        self,
        split: str = "train",
        batch_size: int = 32,
        seed: int = 0,
        kinds: tuple[str, ...] = KINDS,
        homogeneous: bool = False,
        chains: bool = False,
    ):
        check_split(split)
        _check_kinds(kinds, chains)
        self.split, self.batch_size, self.seed, self.kinds = split, batch_size, seed, tuple(kinds)
        self.homogeneous, self.chains = homogeneous, chains

    def __iter__(self):
        rng = random.Random(f"stream-{self.split}-{self.seed}")
        for block in itertools.count():
            seen = set()
            for index in range(self.batch_size):
                kind = self.kinds[(block if self.homogeneous else index) % len(self.kinds)]
                for _ in range(1000):
                    row = _MAKERS[kind](rng, self.split)
                    if row["query_key"] not in seen and row["positive_key"] not in seen:
                        break
                else:
                    raise ValueError(f"{kind}: batch_size={self.batch_size} is more than it has distinct examples.")
                seen.update((row["query_key"], row["positive_key"]))
                yield _training_row(row | {"source": kind}, self.chains)


def _check_kinds(kinds: tuple[str, ...], chains: bool) -> None:
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {ALL_KINDS}, got {kinds!r}.")
    if chains and set(kinds) - set(REASONING_KINDS):
        raise ValueError(f"chains=True needs kinds with gold chains of thought, {REASONING_KINDS}; got {kinds!r}.")


def _training_row(example: dict, chains: bool) -> dict:
    """The trainer's columns of an example; with `chains`, its chains of thought stand in for the rewrites."""
    row = {key: example[key] for key in _ROW_KEYS}
    if chains:
        row.update(query_rewrite=example["query_chain"], positive_rewrite=example["positive_chain"])
    return row


def synthetic_examples(kind: str, split: str, count: int, seed: int) -> list[dict]:
    """`count` distinct examples of `kind` in `split`: a query, its document, their gold rewrites, the keys that tell
    two scenes apart (`query_key`, `positive_key`) and `source` (the kind); the reasoning kinds add their gold
    chains of thought and the `scene` they were rendered from. The same arguments give the same rows."""
    check_split(split)
    if kind not in _MAKERS:
        raise ValueError(f"Unknown kind {kind!r}; use one of {ALL_KINDS}.")
    rng = random.Random(f"{kind}-{split}-{seed}")
    make = _MAKERS[kind]
    rows, seen, attempts = [], set(), 0
    while len(rows) < count:
        attempts += 1
        if attempts > 100 * count:
            raise ValueError(f"{kind}: cannot make {count} distinct {split} examples; ask for fewer.")
        row = make(rng, split)
        if row["query_key"] in seen or row["positive_key"] in seen:
            continue
        seen.update((row["query_key"], row["positive_key"]))
        rows.append({**row, "source": kind})
    return rows


def _scene(rng: random.Random, split: str) -> dict:
    """A scene description: one object (1-3 copies) at a position, or two objects side by side or stacked."""
    if rng.random() < 0.5:
        (obj,) = pick_objects(rng, split, 1)
        count = rng.choice((1, 1, 2, 3))
        position = rng.choice(("left", "right", "top", "bottom", "center"))
        return {"layout": "single", "objects": [obj], "count": count, "position": position}
    first, second = pick_objects(rng, split, 2)
    return {"layout": rng.choice(("row", "column")), "objects": [first, second], "count": 1}


def _caption(scene: dict) -> tuple[str, str]:
    """(caption, rewrite) of a scene."""
    if scene["layout"] == "single":
        (color, shape), count, where = scene["objects"][0], scene["count"], scene["position"]
        plural = shape + ("s" if count > 1 else "")
        place = place_phrase(where)
        return f"{_NUMBERS[count]} {color} {plural} {place}", f"{count} {color} {plural} {where}"
    (c1, s1), (c2, s2) = scene["objects"]
    a, b = ("left", "right") if scene["layout"] == "row" else ("top", "bottom")
    return f"a {c1} {s1} on the {a} and a {c2} {s2} on the {b}", f"{c1} {s1} {a}, {c2} {s2} {b}"


def _render(scene: dict, rng: random.Random) -> Image.Image:
    background = dark_background(rng)
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    half, quarter = SIZE // 2, SIZE // 4
    if scene["layout"] == "single":
        cx, cy = place_center(scene["position"])
        count, size = scene["count"], rng.randint(7, 9) if scene["count"] > 1 else rng.randint(9, 12)
        vertical = scene["position"] in ("left", "right")
        for i in range(count):
            offset = (i - (count - 1) / 2) * (2 * size + 2)
            x, y = (cx, cy + offset) if vertical else (cx + offset, cy)
            draw_shape(draw, *scene["objects"][0], (x, y), size)
    else:
        spots = (
            [(quarter, half), (3 * quarter, half)]
            if scene["layout"] == "row"
            else [(half, quarter), (half, 3 * quarter)]
        )
        for obj, (x, y) in zip(scene["objects"], spots):
            draw_shape(draw, *obj, (x + rng.randint(-3, 3), y + rng.randint(-3, 3)), rng.randint(9, 12))
    return image


def _text_to_image(rng, split):
    scene = _scene(rng, split)
    caption, rewrite = _caption(scene)
    return _text_query(caption, _render(scene, rng), rewrite)


def _image_to_text(rng, split):
    row = _text_to_image(rng, split)
    return dict(
        query=row["positive"],
        positive=row["query"],
        query_rewrite=row["query_rewrite"],
        positive_rewrite=row["query_rewrite"],
        query_key=row["query_key"],
        positive_key=row["query_key"],
    )


def _image_question_to_answer(rng, split):
    first, second = pick_objects(rng, split, 2)
    layout = rng.choice(("row", "column"))
    scene = {"layout": layout, "objects": [first, second], "count": 1}
    places = ("left", "right") if layout == "row" else ("top", "bottom")
    target = rng.randrange(2)
    color, shape = scene["objects"][target]
    if rng.random() < 0.5 and first[1] != second[1]:
        question = f"what colour is the {shape}?"
    else:
        question = f"which shape is on the {places[target]}?"
    # the answer names the object it is about, so that no two rows of a batch share an answer document
    answer = f"the answer: the {color} {shape} on the {places[target]}"
    return dict(
        query={"text": question, "image": _render(scene, rng)},
        positive=answer,
        query_rewrite=f"{color} {shape} {places[target]}",
        positive_rewrite=f"{color} {shape} {places[target]}",
        query_key=(question, _caption(scene)[0]),
        positive_key=answer,
    )


def _text_to_page(rng, split):
    ((color, shape),) = pick_objects(rng, split, 1)
    title = rng.choice(("report", "invoice", "memo", "menu", "letter"))
    page = Image.new("RGB", (SIZE, SIZE + 28), (250, 250, 245))
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, SIZE, 14), fill=COLORS[color] if color != "white" else (200, 200, 200))
    draw.text((3, 2), title.upper()[:8], fill=(0, 0, 0))
    draw_shape(draw, "white" if color != "white" else "blue", shape, (SIZE - 12, 7), 5)
    for line in range(5):  # body text: grey lines of random length
        y = 22 + line * 11
        draw.line((4, y, rng.randint(24, SIZE - 4), y), fill=(120, 120, 120), width=2)
    draw_shape(draw, color, shape, (SIZE // 2, SIZE + 12), 9)
    return _text_query(f"the {color} {title} with a {shape} logo", page, f"{color} {title}, {shape} logo")


def _text_to_video(rng, split):
    ((color, shape),) = pick_objects(rng, split, 1)
    direction = rng.choice(("left", "right", "up", "down"))
    background = dark_background(rng)
    frames = []
    for step in range(4):
        frame = Image.new("RGB", (SIZE, SIZE), background)
        travel = 8 + step * 13 if direction in ("right", "down") else SIZE - 8 - step * 13
        center = (travel, SIZE // 2) if direction in ("left", "right") else (SIZE // 2, travel)
        draw_shape(ImageDraw.Draw(frame), color, shape, center, 8)
        frames.append(frame)
    return _text_query(f"a {color} {shape} moving {direction}", frames, f"{color} {shape} moves {direction}")


def _text_query(caption: str, document, rewrite: str) -> dict:
    """An example whose query is `caption` and whose two sides share one gold rewrite; the caption names it."""
    keys = {"query_key": caption, "positive_key": caption}
    return {"query": caption, "positive": document, "query_rewrite": rewrite, "positive_rewrite": rewrite, **keys}


_MAKERS = {
    "text_to_image": _text_to_image,
    "image_to_text": _image_to_text,
    "image_question_to_answer": _image_question_to_answer,
    "text_to_page": _text_to_page,
    "text_to_video": _text_to_video,
    **REASONING_MAKERS,
}


def vocabulary_texts() -> list[str]:
    """Every word and phrase pattern the data uses, for training a tokenizer that covers them."""
    words = [*COLORS, *SHAPES, *(s + "s" for s in SHAPES), *_NUMBERS.values()]
    phrases = [
        "a red circle on the left and a blue square on the right",
        "two green triangles on the top, three yellow stars at the bottom, in the center",
        "what colour is the star? which shape is on the right? the answer: the purple star on the top",
        "the orange report with a circle logo; invoice, memo, menu, letter",
        "a cyan square moving left, right, up, down; white moves",
    ]
    return words + phrases


__all__ = [
    "ALL_KINDS",
    "COLORS",
    "HELDOUT_PAIRS",
    "KINDS",
    "REASONING_KINDS",
    "SHAPES",
    "SyntheticPairStream",
    "synthetic_examples",
    "synthetic_pairs",
    "vocabulary_texts",
]
