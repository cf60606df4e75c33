"""The Refine-RL candidate pool on its own: no TRL, no model, no trainer (embeddings are made-up tensors)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from PIL import Image

from transformers_rime.training.candidates import CandidatePool, candidate_positions, single_process
from transformers_rime.training.rows import parse_row


def pairs(*rows: dict):
    return [parse_row(row, f"row {i}", i) for i, row in enumerate(rows)]


def query_rows(*indices):
    return [{"pair_index": i, "side": "query"} for i in indices]


def with_other_process(objects: list, tensor: torch.Tensor):
    """A `Gather` as on the first of two processes, the second holding `objects` and `tensor`."""

    def gather(mine: list, rows: torch.Tensor):
        return list(mine) + list(objects), torch.cat([rows, tensor])

    return gather


def test_importing_the_pool_does_not_import_trl():
    code = "import sys, transformers_rime.training.candidates; print('trl' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_candidates_are_deduplicated_by_content():
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    pool = CandidatePool(
        pairs(
            {"query": "q0", "positive": {"text": "a car", "image": red}},
            {"query": "q1", "positive": {"text": "a car", "image": red.copy()}},  # another object, same pixels
            {"query": "q2", "positive": "a car"},
            {"query": "q3", "positive": "a car", "positive_instruction": "Find the car."},
        )
    )
    candidates = pool.batch_candidates(query_rows(0, 1, 2, 3))
    assert [(c.pair_index, c.slot) for c in candidates] == [(0, "positive"), (2, "positive"), (3, "positive")]
    assert [c.where for c in candidates] == ["pair 0 (positive)", "pair 2 (positive)", "pair 3 (positive)"]
    assert pool.key(0, "positive") == pool.key(1, "positive") != pool.key(2, "positive")
    assert pool.key(0, "positive")[0] == "document" and pool.key(0, "query")[0] == "query"


def test_the_instruction_the_item_is_embedded_with_is_part_of_its_content():
    rows = pairs({"query": "q0", "positive": "a car"}, {"query": "q1", "positive": "a car"})
    seen = []

    def instruction_for(role, instruction):
        seen.append(role)
        return f"default {role}" if instruction is None else instruction

    pool = CandidatePool(rows, instruction_for=instruction_for)
    assert len(pool.batch_candidates(query_rows(0, 1))) == 1
    assert pool.key(0, "positive") != CandidatePool(rows).key(0, "positive")  # another instruction, another key
    assert seen == ["document", "document"]  # each key is computed once, then cached
    pool.key(0, "positive")
    assert len(seen) == 2


def test_query_rollouts_bring_targets_and_negatives_document_rollouts_bring_queries():
    pool = CandidatePool(
        pairs(
            {"query": "q0", "positive": "p0", "negatives": ["n0", "shared"]},
            {"query": "q1", "positive": "p1", "negative": "shared"},  # one `negative`, shared with pair 0
        )
    )
    slots = [(c.pair_index, c.slot) for c in pool.batch_candidates(query_rows(0, 1))]
    assert slots == [(0, "positive"), (0, "negative 0"), (0, "negative 1"), (1, "positive")]
    without = pool.batch_candidates(query_rows(0, 1), use_negatives=False)
    assert [(c.pair_index, c.slot) for c in without] == [(0, "positive"), (1, "positive")]
    documents = [{"pair_index": 1, "side": "document"}, {"pair_index": 0, "side": "document"}]
    assert [(c.pair_index, c.slot) for c in pool.batch_candidates(documents)] == [(1, "query"), (0, "query")]
    assert pool.rollout_item(documents[0]).item.text == "p1" and pool.rollout_item(query_rows(1)[0]).item.text == "q1"
    assert pool.target_key(documents[0]) == pool.key(1, "query")
    assert pool.candidate(0, "negative 1").where == "row 0, column 'negatives[1]'"


def test_merging_keeps_the_first_copy_of_each_candidate_across_processes():
    keys = [("document", "a"), ("document", "b")]
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    other_keys = [("document", "b"), ("document", "c")]  # "b" is on both processes
    other = torch.tensor([[9.0, 9.0], [0.5, 0.5]])
    pool = CandidatePool(gather=with_other_process(other_keys, other))
    merged_keys, merged = pool.merge(keys, anchors)
    assert merged_keys == [("document", "a"), ("document", "b"), ("document", "c")]
    torch.testing.assert_close(merged, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
    local_keys, local = pool.merge(keys, anchors, across_processes=False)  # gather_candidates_across_devices=False
    assert local_keys == keys and local is anchors
    assert CandidatePool().merge(keys, anchors)[0] == keys  # one process: the default gather is the identity
    assert single_process(keys, anchors) == (keys, anchors)


def test_lists_from_a_gather_are_compared_as_keys():
    pool = CandidatePool(gather=lambda objects, tensor: ([list(k) for k in objects * 2], torch.cat([tensor, tensor])))
    keys, anchors = pool.merge([("document", "a")], torch.ones(1, 2))
    assert keys == [("document", "a")] and anchors.shape == (1, 2)


def test_each_rollout_is_scored_against_the_candidates_of_its_targets_role():
    pool = CandidatePool(pairs(*({"query": f"q{i}", "positive": f"p{i}", "negative": "n"} for i in range(2))))
    rows = [*query_rows(0, 1), {"pair_index": 1, "side": "document"}]
    candidates = pool.batch_candidates(rows)
    keys = [c.key for c in candidates]
    assert [(c.pair_index, c.slot) for c in candidates] == [
        (0, "positive"),
        (0, "negative 0"),
        (1, "positive"),
        (1, "query"),
    ]
    anchors = torch.eye(4)  # one direction per candidate
    gen = torch.stack([anchors[0], anchors[1], anchors[3]])  # rollout 1 retrieves the negative, not its target
    columns, top1 = pool.score(rows, gen, keys, anchors)
    assert columns["positive_index"] == [0, 2, 0]
    torch.testing.assert_close(columns["anchor_embeddings"][0], anchors[:3])  # documents: p0, n, p1
    torch.testing.assert_close(columns["anchor_embeddings"][2], anchors[3:])  # queries: q1
    assert top1 == pytest.approx(2 / 3)


def test_a_single_candidate_pool_is_warned_about_once(caplog):
    pool = CandidatePool(pairs({"query": "q0", "positive": "p0"}))
    rows = query_rows(0)
    keys = [c.key for c in pool.batch_candidates(rows)]
    with caplog.at_level(logging.WARNING, logger="transformers_rime.training.candidates"):
        for _ in range(2):
            columns, top1 = pool.score(rows, torch.ones(1, 2), keys, torch.ones(1, 2))
    assert columns["positive_index"] == [0] and top1 == 1.0
    assert sum("single candidate" in record.getMessage() for record in caplog.records) == 1


def test_a_target_missing_from_the_pool_is_an_error():
    pool = CandidatePool(pairs({"query": "q0", "positive": "p0"}, {"query": "q1", "positive": "p1"}))
    keys = [pool.key(0, "positive")]
    with pytest.raises(KeyError, match="missing from the candidate pool"):
        pool.score(query_rows(0, 1), torch.ones(2, 2), keys, torch.ones(1, 2))
    assert candidate_positions([("d", 1)], [("d", 1), ("d", 1)]) == [0]  # the first copy


def test_partners_are_the_other_side_rollouts_of_every_process():
    rows = [{"pair_index": 0, "side": "query"}, {"pair_index": 0, "side": "document"}]
    gen = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    other = [(1, True), (1, False), (0, False)]  # the second process: pair 1 both sides, pair 0's document again
    pool = CandidatePool(gather=with_other_process(other, torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 3.0]])))
    columns = pool.partners(rows, gen)
    torch.testing.assert_close(columns["partner_embeddings"][0], torch.tensor([[0.0, 1.0], [0.0, 2.0], [3.0, 3.0]]))
    assert columns["partner_is_positive"][0].tolist() == [True, False, True]
    torch.testing.assert_close(columns["partner_embeddings"][1], torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
    assert columns["partner_is_positive"][1].tolist() == [True, False]
    alone = CandidatePool().partners(rows, gen)  # one process
    assert [len(p) for p in alone["partner_embeddings"]] == [1, 1]
