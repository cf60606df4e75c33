"""The one training-row parser (`training/rows.py`) both trainers use: items, roles, rewrites and named errors."""

from __future__ import annotations

import pytest

from transformers_rime.training.refine_rl_setup import parse_pair
from transformers_rime.training.rows import drop_empty, parse_row


def test_a_row_becomes_its_items_with_roles_rewrites_and_instructions():
    row = {
        "query": {"text": "find the cat", "images": [], "video": None},  # a reader's dict: empty fields dropped
        "positive": "a cat",
        "negatives": ["a dog", "a bird"],
        "query_rewrite": "cat",
        "negative_rewrites": ["dog", None],
        "positive_instruction": "",
    }
    parsed = parse_row(row, "batch row 0")
    assert [(group, item.item.text, item.role, item.rewrite) for group, item in parsed.groups()] == [
        ("query", "find the cat", "query", "cat"),
        ("positive", "a cat", "document", None),
        ("negative", "a dog", "document", "dog"),
        ("negative", "a bird", "document", None),
    ]
    assert [n.instruction for n in parsed.negatives] == ["", ""]  # negatives take the positive's instruction
    assert parse_row(row, "batch row 0", rewrites=False).query.rewrite is None
    single = parse_row({"query": "q", "positive": "p", "negative": "n", "negative_rewrite": "m"}, "row")
    assert [(n.item.text, n.rewrite) for n in single.negatives] == [("n", "m")]
    assert drop_empty({"text": "x", "images": [], "video": None}) == {"text": "x"}


def test_errors_name_the_row_and_column_or_the_origin():
    with pytest.raises(ValueError, match="^batch row 2: missing `positive`"):
        parse_row({"query": "q"}, "batch row 2", 2)
    with pytest.raises(ValueError, match=r"^batch row 2, column 'negatives\[1\]': unknown key"):
        parse_row({"query": "q", "positive": "p", "negatives": ["n", {"txt": 1}]}, "batch row 2", 2)
    origin = "/data/pairs.jsonl:7"
    with pytest.raises(TypeError, match=r"^/data/pairs\.jsonl:7 \(query\): unsupported input type"):  # type kept
        parse_row({"query": 3.5, "positive": "p", "origin": origin}, origin, 4)
    with pytest.raises(FileNotFoundError, match=r"^row 0, column 'positive': image file not found"):
        parse_row({"query": "q", "positive": "/no/such/photo.png"}, "row 0")
    with pytest.raises(ValueError, match="^row 0: 2 negatives but 1 negative rewrites"):
        parse_row({"query": "q", "positive": "p", "negatives": ["a", "b"], "negative_rewrites": ["a"]}, "row 0")


def test_refine_rl_pairs_name_the_dataset_row_and_its_origin():
    row = {"query": "q", "positive": {"txt": "p"}, "origin": "/data/rl.jsonl:9"}
    with pytest.raises(ValueError, match=r"^train_dataset row 3 \(/data/rl\.jsonl:9\), column 'positive': unknown"):
        parse_pair(row, "train_dataset row 3", 3)
    pair = parse_pair({"query": "q", "positive": "p", "negatives": ["a"], "negative_rewrites": []}, "row 0")
    assert [n.item.text for n in pair.negatives] == ["a"]  # rewrites are not read, so not checked
