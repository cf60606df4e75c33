"""The reasoning kinds: gold answers read back from the pixels, held-out compositions, and chains of thought."""

import re

import numpy as np
import pytest

from transformers_rime.data.reasoning import NUMBER_WORDS, PLACES
from transformers_rime.data.scenes import COLORS, HELDOUT_PAIRS, SHAPES, place_center
from transformers_rime.data.synthetic import (
    KINDS,
    REASONING_KINDS,
    SyntheticPairStream,
    synthetic_examples,
    synthetic_pairs,
)
from transformers_rime.evaluation import synthetic_tasks


PAIR = re.compile(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})s?\b")
CHAIN = re.compile(r"^<think>(.+)</think><answer>(.+)</answer>$")


def objects_in(image) -> list[dict]:
    """Every object of a rendered scene, found from the pixels alone: its colour (exact, as renders are not
    anti-aliased), its shape (from how much of its bounding box it fills) and its centre, left to right."""
    pixels = np.asarray(image.convert("RGB")).astype(int)
    found = []
    for color, rgb in COLORS.items():
        mask = (np.abs(pixels - np.array(rgb)).sum(axis=2) == 0).astype(np.uint8)
        for component in _components(mask):
            ys, xs = component
            height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            fill = len(ys) / (height * width)
            bottom_row = (ys == ys.max()).sum() / width
            if fill > 0.9:
                shape = "square"
            elif fill > 0.65:
                shape = "circle"
            else:  # a triangle's base fills its bottom row; a star stands on two points
                shape = "triangle" if bottom_row > 0.8 else "star"
            found.append({"color": color, "shape": shape, "center": (xs.mean(), ys.mean())})
    return sorted(found, key=lambda o: o["center"][0])


def _components(mask: np.ndarray):
    """4-connected components of a binary mask, as `(ys, xs)` arrays."""
    seen = np.zeros_like(mask, dtype=bool)
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, members = [start], []
        seen[start] = True
        while stack:
            y, x = stack.pop()
            members.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        ys, xs = np.array(members).T
        yield ys, xs


def nearest_place(center) -> str:
    return min(PLACES, key=lambda p: np.hypot(center[0] - place_center(p)[0], center[1] - place_center(p)[1]))


def answer_of(row: dict) -> str:
    """The chain's answer, checked to be the chain's format."""
    for chain in (row["query_chain"], row["positive_chain"]):
        match = CHAIN.match(chain)
        assert match, chain
    assert CHAIN.match(row["positive_chain"]).group(2) == CHAIN.match(row["query_chain"]).group(2)
    return CHAIN.match(row["query_chain"]).group(2)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_counting_gold_matches_the_objects_in_the_image(split):
    for row in synthetic_examples("counting", split, 24, seed=5):
        question = row["query"]["text"]
        color, shape = re.match(r"how many (\w+) (\w+)s\?", question).groups()
        objects = objects_in(row["query"]["image"])
        count = sum(o["color"] == color and o["shape"] == shape for o in objects)
        assert 1 <= count <= 4 and all(o["color"] != color for o in objects if o["shape"] != shape)
        noun = shape + ("s" if count > 1 else "")
        assert row["query_rewrite"] == row["positive_rewrite"] == answer_of(row) == f"{count} {color} {noun}"
        assert row["positive"] == f"{NUMBER_WORDS[count]} {color} {noun}"
        steps = CHAIN.match(row["query_chain"]).group(1)
        listed = re.findall(rf"an? ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})", steps.split("the objects: ")[1])
        # the chain lists every object (in reading order, so compare as multisets) and then counts to the answer
        assert sorted(listed) == sorted((o["color"], o["shape"]) for o in objects)
        assert steps.endswith(", ".join(str(n) for n in range(1, count + 1)) + ".")


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_spatial_gold_is_the_neighbour_in_the_image(split):
    for row in synthetic_examples("spatial", split, 24, seed=5):
        direction, reference = re.match(
            r"which shape is (left|right) of the (\w+ \w+)\?", row["query"]["text"]
        ).groups()
        row_objects = [f"{o['color']} {o['shape']}" for o in objects_in(row["query"]["image"])]
        assert len(row_objects) == 3
        at = row_objects.index(reference) + (-1 if direction == "left" else 1)
        assert 0 <= at < 3
        expected = f"{row_objects[at]} {direction} of {reference}"
        assert row["query_rewrite"] == answer_of(row) == expected
        assert row["positive"] == f"the {row_objects[at]}, {direction} of the {reference}"
        assert (
            f"from left to right: {', '.join(f'{a} {o}' for a, o in _with_articles(row_objects))}."
            in (row["query_chain"])
        )


def _with_articles(names):
    return [("an" if name[0] in "aeiou" else "a", name) for name in names]


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_composition_gold_takes_the_first_colour_and_the_second_shape_and_place(split):
    for row in synthetic_examples("composition", split, 24, seed=5):
        (first,), (second,) = (objects_in(image) for image in row["query"]["images"])
        place = nearest_place(second["center"])
        assert first["color"] != second["color"] and first["shape"] != second["shape"]  # neither image has it
        assert row["query_rewrite"] == answer_of(row) == f"{first['color']} {second['shape']} {place}"
        assert row["positive"].endswith(f"{first['color']} {second['shape']} " + _phrase(place))


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_negation_gold_is_the_only_shape_not_excluded_and_the_image_shows_it(split):
    for row in synthetic_examples("negation", split, 24, seed=5):
        excluded = re.findall(rf"a ({'|'.join(SHAPES)})", row["query"].split("that is not ")[1])
        (remaining,) = set(SHAPES) - set(excluded)
        (obj,) = objects_in(row["positive"])
        assert obj["shape"] == remaining and row["query"].split()[1] == obj["color"]
        place = nearest_place(obj["center"])
        assert _phrase(place) in row["query"]
        assert row["query_rewrite"] == answer_of(row) == f"{obj['color']} {remaining} {place}"
        assert f"so it is a {remaining}." in row["query_chain"]


def _phrase(place):
    return "in the center" if place == "center" else f"on the {place}"


@pytest.mark.parametrize("kind", REASONING_KINDS)
def test_heldout_answers_are_unseen_pairs_and_training_never_draws_one(kind):
    for row in synthetic_examples(kind, "train", 80, seed=0):
        drawn = {(o["color"], o["shape"]) for image in row["scene"]["images"] for o in image}
        assert not drawn & HELDOUT_PAIRS and tuple(row["scene"]["answer"]) not in HELDOUT_PAIRS
        texts = [row["query_rewrite"], row["query_chain"], row["positive_chain"]]
        texts += [t for t in (row["query"], row["positive"]) if isinstance(t, str)]
        assert not any(set(PAIR.findall(text)) & HELDOUT_PAIRS for text in texts), texts
    heldout = synthetic_examples(kind, "heldout", 32, seed=1)
    assert all(tuple(row["scene"]["answer"]) in HELDOUT_PAIRS for row in heldout)
    assert all(set(PAIR.findall(row["query_rewrite"])) & HELDOUT_PAIRS for row in heldout)


def test_chains_replace_the_rewrites_for_reasoning_kinds_only():
    rows = synthetic_pairs("train", per_kind=3, seed=0, kinds=REASONING_KINDS, chains=True)
    assert [row["source"] for row in rows[:4]] == list(REASONING_KINDS) and len(rows) == 12
    assert all(CHAIN.match(row["query_rewrite"]) and CHAIN.match(row["positive_rewrite"]) for row in rows)
    streamed = next(iter(SyntheticPairStream(batch_size=4, kinds=REASONING_KINDS, chains=True)))
    assert streamed["query_rewrite"].startswith("<think>")
    plain = synthetic_pairs("train", per_kind=3, seed=0, kinds=REASONING_KINDS)
    assert [row["query_rewrite"] for row in plain] == [CHAIN.match(row["query_rewrite"]).group(2) for row in rows]
    with pytest.raises(ValueError, match="chains=True needs kinds"):
        synthetic_pairs(kinds=KINDS, chains=True)
    with pytest.raises(ValueError, match="kinds must be"):
        SyntheticPairStream(kinds=("sorting",))
    with pytest.raises(ValueError, match="Unknown kind"):
        synthetic_examples("sorting", "train", 1, seed=0)


def test_reasoning_tasks_have_distinct_documents():
    tasks = synthetic_tasks("heldout", per_kind=32, seed=1, kinds=REASONING_KINDS)
    assert [task.name for task in tasks] == list(REASONING_KINDS)
    assert all(len(task.corpus) == 32 == len(task.queries) for task in tasks)
