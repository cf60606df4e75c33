"""Bad data names its file and line: malformed JSON / JSON lines, non-UTF-8 files, and training rows that the
readers let through but the collator refuses (each row carries its `origin`)."""

from __future__ import annotations

import json
import os
import re

import pytest

from transformers_rime.data import read_pairs, read_rime_rl, read_rime_sft
from transformers_rime.evaluation.mmeb_files import read_rows
from transformers_rime.testing import random_image, tiny_rime_processor
from transformers_rime.training import RimeContrastiveCollator


GOOD = {"query": "a red car", "positive": "a car, red"}


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def pairs_with_bad_line_7(tmp_path):
    """Five good rows, a blank line 6, then a truncated object on line 7."""
    lines = [json.dumps(GOOD)] * 5 + ["", '{"query": "q" "positive": "p"}']
    return write_lines(tmp_path / "data.jsonl", lines)


def test_malformed_jsonl_line_names_file_and_editor_line(tmp_path):
    path = pairs_with_bad_line_7(tmp_path)
    with pytest.raises(ValueError, match=r"data\.jsonl line 7: invalid JSON \(Expecting ',' delimiter at column 15\)"):
        read_pairs(path)
    with pytest.raises(ValueError, match=r"data\.jsonl line 7: invalid JSON"):
        read_rime_sft(path)
    with pytest.raises(ValueError, match=r"data\.jsonl line 7: invalid JSON"):
        read_rime_rl(path)
    with pytest.raises(ValueError, match=r"data\.jsonl line 7: invalid JSON"):
        read_rows(path)


def test_non_utf8_file_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(
        (json.dumps(GOOD) + "\n" + json.dumps({"query": "café", "positive": "p"}, ensure_ascii=False)).encode(
            "latin-1"
        )
    )
    offset = path.read_bytes().index(b"\xe9")
    message = rf"latin\.jsonl line 2: not UTF-8 text \(byte offset {offset}: invalid continuation byte\)"
    with pytest.raises(ValueError, match=message):
        read_pairs(path)
    with pytest.raises(ValueError, match=message):
        read_rows(path)


def test_invalid_json_list_names_file_line_and_column(tmp_path):
    path = tmp_path / "records.json"
    path.write_text('[\n  {"query": "q", "positive": "p"},\n  {"query": "q",, "positive": "p"}\n]\n')
    message = r"records\.json line 3 column 17: invalid JSON \(Expecting property name"
    with pytest.raises(ValueError, match=message):
        read_pairs(path)
    with pytest.raises(ValueError, match=message):
        read_rows(path)
    # A pretty-printed single object is neither a JSON list nor JSON lines, and says so.
    path.write_text(json.dumps(GOOD, indent=2))
    with pytest.raises(ValueError, match=r"records\.json line 1: invalid JSON .* one JSON value: give a JSON list"):
        read_pairs(path)
    with pytest.raises(ValueError, match=r"records\.json: expected a JSON list of records, got dict"):
        read_rows(path)


def test_rows_carry_their_origin(tmp_path):
    lines = [json.dumps(GOOD), "", "   ", json.dumps(GOOD)]
    path = write_lines(tmp_path / "data.jsonl", lines)
    assert read_pairs(path)["origin"] == [f"{os.path.abspath(path)}:1", f"{os.path.abspath(path)}:4"]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([GOOD, GOOD]))
    assert read_pairs(listed)["origin"] == [f"{listed}[0]", f"{listed}[1]"]
    assert read_pairs([GOOD, GOOD])["origin"] == ["dataset row 0", "dataset row 1"]
    side = {"conversations": [{"from": "human", "value": "q"}]}
    assert read_rime_sft(write_lines(tmp_path / "sft.jsonl", ["", json.dumps({"qry": side, "pos": side})]))[
        "origin"
    ] == [f"{tmp_path / 'sft.jsonl'}:2"]
    rl = tmp_path / "rl.json"
    rl.write_text(json.dumps([{"qry_text": "q", "pos_text": "p", "dataset": "d"}]))
    assert read_rime_rl(rl)["origin"] == [f"{rl}[0]"]
    # Re-reading a reader's output keeps the rows' origins, and errors then name them.
    assert read_pairs(read_pairs(path))["origin"] == read_pairs(path)["origin"]
    with pytest.raises(ValueError, match=r"^/.*data\.jsonl:4 \(positive\): unknown key"):
        read_pairs([{**GOOD, "origin": f"{path}:4", "positive": {"txt": "p"}}])


def test_collator_error_names_the_rows_file_and_line(tmp_path):
    random_image(8, 8, seed=0).save(tmp_path / "cat.jpg")
    rows = [
        {**GOOD, "query_rewrite": "car", "positive_rewrite": "car"},
        {"query": "cat.jpg", "positive": "a cat", "query_rewrite": "cat", "positive_rewrite": "cat"},
        {"query": "gone.jpg", "positive": "a dog", "query_rewrite": "dog", "positive_rewrite": "dog"},
    ]
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(rows[0]), "", json.dumps(rows[1]), json.dumps(rows[2])])
    dataset = read_pairs(path, check_files=False)  # the missing image passes the reader
    collator = RimeContrastiveCollator(tiny_rime_processor())
    assert sorted(collator([dataset[0], dataset[1]])) == ["positive", "query"]
    where = re.escape(f"{os.path.abspath(path)}:4 (query)")
    with pytest.raises(FileNotFoundError, match=rf"^{where} image 0: image file not found: .*gone\.jpg"):
        collator([dataset[0], dataset[2]])
    # A rewrite the reader drops (only the <gen_emb> token) fails as a missing rewrite, naming the same place.
    dataset = read_pairs([{**rows[0], "positive_rewrite": "<gen_emb>", "origin": f"{path}:1"}])
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}:1 (positive): no rewrite")):
        collator(dataset)
    # Rows without an origin keep the batch position in their errors.
    with pytest.raises(FileNotFoundError, match=r"^batch row 0, column 'query': image file not found"):
        collator([{**rows[2], "query": str(tmp_path / "gone.jpg")}])


def test_refine_rl_pair_errors_name_the_origin(tmp_path):
    from transformers_rime.training.refine_rl_setup import parse_pair

    row = {"query": "q", "positive": {"txt": "p"}, "origin": "/data/rl.jsonl:9"}
    with pytest.raises(ValueError, match=r"train_dataset row 0 \(/data/rl\.jsonl:9\), column 'positive': "):
        parse_pair(row, "train_dataset row 0")
