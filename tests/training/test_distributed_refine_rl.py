"""Refine-RL on two CPU processes (torchrun, gloo): candidates and partner rollouts are pooled across processes."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from transformers_rime import RimeEncoder
from transformers_rime.testing import tiny_rime_model, tiny_rime_processor


pytest.importorskip("trl")

WORKER = Path(__file__).with_name("distributed_rl_worker.py")
sys.path.insert(0, str(WORKER.parent))
from distributed_rl_worker import rows  # noqa: E402


ROLLOUTS_PER_STEP = 8  # per process: per_device_train_batch_size in the worker


@pytest.fixture(scope="module")
def out(tmp_path_factory, run_two_processes):
    out = tmp_path_factory.mktemp("ddp_rl")
    run_two_processes(WORKER, out)
    return out


@pytest.fixture(scope="module")
def initial_disc_embeddings():
    """Disc embeddings of every pair's query and positive by the initial model, in one process."""
    processor = tiny_rime_processor()
    encoder = RimeEncoder(tiny_rime_model(processor=processor), processor)
    pairs = rows()
    queries = encoder.encode([r["query"] for r in pairs], mode="disc", role="query", show_progress_bar=False)
    documents = encoder.encode([r["positive"] for r in pairs], mode="disc", role="document", show_progress_bar=False)
    return torch.as_tensor(queries), torch.as_tensor(documents)


def _steps(per_rank: list[list[dict]]) -> list[list[dict]]:
    """Both processes' probes, grouped by training step."""
    assert [len(probes) for probes in per_rank] == [2 * ROLLOUTS_PER_STEP] * 2
    return [
        [p for probes in per_rank for p in probes[step * ROLLOUTS_PER_STEP : (step + 1) * ROLLOUTS_PER_STEP]]
        for step in range(2)
    ]


@pytest.mark.parametrize("name", ["beta0", "beta"])
def test_rewards_see_the_candidates_and_rollouts_of_every_process(out, initial_disc_embeddings, name):
    queries, documents = initial_disc_embeddings
    for step in _steps(json.loads((out / f"{name}.json").read_text())):
        sides = Counter(p["side"] for p in step)
        for side in ("query", "document"):
            rollouts = [p for p in step if p["side"] == side]
            # frozen anchors: the other side of each pair, embedded by the initial model, and the whole pool of
            # both processes (one candidate per pair of the generation batch) is the same for every rollout
            expected_pool = {p["pair"] for p in rollouts}
            pools = {json.dumps(p["anchors"]) for p in rollouts}
            assert len(pools) == 1
            pool = torch.tensor(rollouts[0]["anchors"])
            assert pool.shape[0] == len(expected_pool) == 4  # 2 pairs per process
            for p in rollouts:
                other_side = documents if side == "query" else queries
                torch.testing.assert_close(torch.tensor(p["target"]), other_side[p["pair"]], atol=1e-5, rtol=0)
                partner = "document" if side == "query" else "query"
                assert p["partners"] == sides[partner]  # every other-side rollout of both processes
        # each pair is rolled out on both sides within the step (the paired sampler)
        assert Counter(p["pair"] for p in step if p["side"] == "query") == Counter(
            p["pair"] for p in step if p["side"] == "document"
        )


@pytest.mark.parametrize("name", ["beta0", "beta"])
def test_both_processes_end_with_the_same_trained_weights(out, name):
    first, second = (load_file(str(out / f"{name}-rank{rank}.safetensors")) for rank in (0, 1))
    initial = tiny_rime_model(processor=tiny_rime_processor()).state_dict()
    moved = 0
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, atol=0, rtol=0, msg=key)
        moved += bool((value - initial[key]).abs().max() > 1e-4)
    assert moved > 10


def test_beta_saves_the_reference_backbone_once(out):
    assert (out / "beta" / "reference_model" / "config.json").is_file()
    assert not (out / "beta0" / "reference_model").exists()
