"""Four synthetic kinds of query whose answer takes a step of reasoning, each with a gold rewrite and a gold chain of
thought.

| kind | query | document | gold rewrite |
|---|---|---|---|
| `counting` | a scene + "how many red stars?" | "three red stars" | "3 red stars" |
| `spatial` | a row of three objects + "which shape is left of the red circle?" | "the blue square, left of the red circle" | "blue square left of red circle" |
| `composition` | two images + "the colour of the first image, the shape and place of the second" | "a red star on the left" | "red star left" |
| `negation` | "a green shape on the left that is not a square, a star or a circle" | the rendered scene | "green triangle left" |

In each, the answer is not in the query's words: the count, the neighbour, the combined object or the remaining
shape has to be read off the image or worked out, and the rewrite states it. The chain of thought
(`query_chain`, `positive_chain`) is what UME-R1 trains on instead: `<think>` steps `</think><answer>` the rewrite
`</answer>`.

Held-out compositions: the object each answer is about (the counted object, the neighbour, the combined object,
the remaining shape with its colour) is one of `HELDOUT_PAIRS` in the `heldout` split, and no held-out pair is drawn
anywhere in the `train` split. Each example also carries `scene`, the layout it was rendered from, so that tests can
check the gold answers against the pixels.

```python
>>> from transformers_rime.data.synthetic import synthetic_examples
>>> row = synthetic_examples("negation", "heldout", 1, seed=0)[0]
>>> row["query"].startswith("a "), row["query_rewrite"] in row["positive_chain"]
(True, True)

```
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from .scenes import (
    COLORS,
    HELDOUT_PAIRS,
    SHAPES,
    SIZE,
    dark_background,
    draw_shape,
    pick_pair,
    place_center,
    place_phrase,
)


REASONING_KINDS = ("counting", "spatial", "composition", "negation")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
PLACES = ("left", "right", "top", "bottom", "center")
CELL = 28  # counting and spatial scenes are grids of 28-pixel cells: 3 wide, 2 high
GRID = (3, 2)


def article(color: str) -> str:
    return "an" if color[0] in "aeiou" else "a"


def plural(shape: str, count: int) -> str:
    return shape + ("s" if count != 1 else "")


def chain(steps: str, answer: str) -> str:
    """A UME-R1-style target: `<think>` the steps `</think><answer>` the answer `</answer>`."""
    return f"<think>{steps}</think><answer>{answer}</answer>"


def _answer_pair(rng: random.Random, split: str) -> tuple[str, str]:
    """The pair an answer is about: held out in `heldout`, allowed in `train`."""
    return rng.choice(sorted(HELDOUT_PAIRS)) if split == "heldout" else pick_pair(rng, "train")


def _other_pair(rng: random.Random, used_colors: set[str]) -> tuple[str, str]:
    """A train pair in a colour not yet used (every object in a scene has its own colour, so none is mistaken)."""
    while True:
        pair = pick_pair(rng, "train")
        if pair[0] not in used_colors:
            return pair


def _grid_image(objects: list[dict], rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (GRID[0] * CELL, GRID[1] * CELL), dark_background(rng))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_shape(draw, obj["color"], obj["shape"], obj["center"], obj["size"])
    return image


def _cell_center(cell: int, rng: random.Random, jitter: int = 2) -> tuple[int, int]:
    column, row = cell % GRID[0], cell // GRID[0]
    return (
        CELL * column + CELL // 2 + rng.randint(-jitter, jitter),
        CELL * row + CELL // 2 + rng.randint(-jitter, jitter),
    )


def _row_center(index: int, rng: random.Random) -> tuple[int, int]:
    """The centre of the `index`-th object of a row of three, across the middle of the grid."""
    return CELL * index + CELL // 2 + rng.randint(-2, 2), CELL + rng.randint(-6, 6)


def _counting(rng: random.Random, split: str) -> dict:
    color, shape = _answer_pair(rng, split)
    count = rng.randint(1, 4)
    distractors = rng.randint(0, min(2, GRID[0] * GRID[1] - count))
    pairs = [(color, shape)] * count + [_other_pair(rng, {color}) for _ in range(distractors)]
    cells = sorted(rng.sample(range(GRID[0] * GRID[1]), len(pairs)))
    rng.shuffle(pairs)
    objects = [
        {"color": c, "shape": s, "center": _cell_center(cell, rng), "size": rng.randint(7, 9)}
        for (c, s), cell in zip(pairs, cells)
    ]
    seen = ", ".join(f"{article(o['color'])} {o['color']} {o['shape']}" for o in objects)
    tally = ", ".join(str(n) for n in range(1, count + 1))
    rewrite = f"{count} {color} {plural(shape, count)}"
    document = f"{NUMBER_WORDS[count]} {color} {plural(shape, count)}"
    return {
        "query": {"text": f"how many {color} {shape}s?", "image": _grid_image(objects, rng)},
        "positive": document,
        "query_rewrite": rewrite,
        "positive_rewrite": rewrite,
        "query_chain": chain(
            f"count the {color} {shape}s. the objects: {seen}. the {color} {shape}s: {tally}.", rewrite
        ),
        "positive_chain": chain(f"the text says {document}.", rewrite),
        "query_key": tuple((o["color"], o["shape"], cell) for o, cell in zip(objects, cells)),
        "positive_key": document,
        "scene": {"images": [objects], "answer": (color, shape), "count": count},
    }


def _spatial(rng: random.Random, split: str) -> dict:
    answer = _answer_pair(rng, split)
    direction = rng.choice(("left", "right"))
    # the answer is immediately `direction` of the reference, in a row of three
    answer_at = rng.choice((0, 1)) if direction == "left" else rng.choice((1, 2))
    reference_at = answer_at + 1 if direction == "left" else answer_at - 1
    row = [answer if i == answer_at else None for i in range(3)]
    for i in range(3):
        if row[i] is None:
            row[i] = _other_pair(rng, {p[0] for p in row if p is not None})
    objects = [
        {"color": c, "shape": s, "center": _row_center(i, rng), "size": rng.randint(8, 10)}
        for i, (c, s) in enumerate(row)
    ]
    reference = row[reference_at]
    answer_text, reference_text = " ".join(answer), " ".join(reference)
    rewrite = f"{answer_text} {direction} of {reference_text}"
    document = f"the {answer_text}, {direction} of the {reference_text}"
    order = ", ".join(f"{article(c)} {c} {s}" for c, s in row)
    steps = f"from left to right: {order}. {direction} of the {reference_text} is the {answer_text}."
    return {
        "query": {"text": f"which shape is {direction} of the {reference_text}?", "image": _grid_image(objects, rng)},
        "positive": document,
        "query_rewrite": rewrite,
        "positive_rewrite": rewrite,
        "query_chain": chain(steps, rewrite),
        "positive_chain": chain(f"the text names {document}.", rewrite),
        "query_key": (tuple(row), direction, reference),
        "positive_key": document,
        "scene": {"images": [objects], "answer": answer, "reference": reference, "direction": direction},
    }


def _single_object_image(color: str, shape: str, place: str, rng: random.Random) -> tuple[Image.Image, dict]:
    x, y = place_center(place)
    obj = {"color": color, "shape": shape, "center": (x + rng.randint(-2, 2), y + rng.randint(-2, 2))}
    obj["size"] = rng.randint(9, 12)
    image = Image.new("RGB", (SIZE, SIZE), dark_background(rng))
    draw_shape(ImageDraw.Draw(image), obj["color"], obj["shape"], obj["center"], obj["size"])
    return image, obj


def _composition(rng: random.Random, split: str) -> dict:
    color, shape = _answer_pair(rng, split)
    # the first image gives only the colour, the second only the shape and the place: both are train pairs
    first = (color, rng.choice([s for s in SHAPES if s != shape and (color, s) not in HELDOUT_PAIRS]))
    second = (rng.choice([c for c in COLORS if c != color and (c, shape) not in HELDOUT_PAIRS]), shape)
    first_place, place = rng.choice(PLACES), rng.choice(PLACES)
    first_image, first_object = _single_object_image(*first, first_place, rng)
    second_image, second_object = _single_object_image(*second, place, rng)
    rewrite = f"{color} {shape} {place}"
    document = f"{article(color)} {color} {shape} {place_phrase(place)}"
    steps = (
        f"the first image shows {article(first[0])} {first[0]} {first[1]}: the colour is {color}. the second image shows "
        f"{article(second[0])} {second[0]} {second[1]} {place_phrase(place)}: the shape is {shape}, the place is {place}."
    )
    return {
        "query": {
            "text": "the colour of the first image, the shape and place of the second",
            "images": [first_image, second_image],
        },
        "positive": document,
        "query_rewrite": rewrite,
        "positive_rewrite": rewrite,
        "query_chain": chain(steps, rewrite),
        "positive_chain": chain(f"the text names {document}.", rewrite),
        "query_key": (first, first_place, second, place),
        "positive_key": document,
        "scene": {"images": [[first_object], [second_object]], "answer": (color, shape), "place": place},
    }


def _negation(rng: random.Random, split: str) -> dict:
    color, shape = _answer_pair(rng, split)
    place = rng.choice(PLACES)
    excluded = [s for s in SHAPES if s != shape]
    rng.shuffle(excluded)
    image, obj = _single_object_image(color, shape, place, rng)
    query = f"{article(color)} {color} shape {place_phrase(place)} that is not a {excluded[0]}, a {excluded[1]} or a {excluded[2]}"
    rewrite = f"{color} {shape} {place}"
    steps = (
        f"the shapes are {', '.join(SHAPES[:-1])} and {SHAPES[-1]}. it is not a {excluded[0]}, not a {excluded[1]} "
        f"and not a {excluded[2]}, so it is a {shape}."
    )
    return {
        "query": query,
        "positive": image,
        "query_rewrite": rewrite,
        "positive_rewrite": rewrite,
        "query_chain": chain(steps, rewrite),
        "positive_chain": chain(f"the image shows {article(color)} {color} {shape} {place_phrase(place)}.", rewrite),
        "query_key": query,
        "positive_key": (color, shape, place),
        "scene": {"images": [[obj]], "answer": (color, shape), "place": place},
    }


REASONING_MAKERS = {"counting": _counting, "spatial": _spatial, "composition": _composition, "negation": _negation}


def reasoning_vocabulary_texts() -> list[str]:
    """Phrases with every word the reasoning kinds use (queries, documents, rewrites and chains), for a tokenizer."""
    rng = random.Random("vocabulary")
    texts = []
    for make in REASONING_MAKERS.values():
        for split in ("train", "heldout"):
            for _ in range(4):
                row = make(rng, split)
                query = row["query"] if isinstance(row["query"], str) else row["query"]["text"]
                texts += [query, row["query_chain"], row["positive_chain"]]
                texts += [row["positive"]] if isinstance(row["positive"], str) else []
    return texts + [" ".join(NUMBER_WORDS.values())]
