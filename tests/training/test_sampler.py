"""SourceHomogeneousSampler, alone and behind Accelerate's per-process batch sharding."""

from __future__ import annotations

import pytest
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from transformers_rime.training import SourceHomogeneousSampler


SOURCES = ["a"] * 10 + ["b"] * 7 + ["c"] * 13 + ["tiny"] * 2


def test_blocks_are_single_source_and_cover_full_blocks_once():
    sampler = SourceHomogeneousSampler(SOURCES, block_size=4, seed=3)
    order = list(sampler)
    assert len(order) == len(sampler) == 8 + 4 + 12  # remainders and the too-small source are dropped
    assert len(set(order)) == len(order)
    for start in range(0, len(order), 4):
        assert len({SOURCES[i] for i in order[start : start + 4]}) == 1


def test_every_process_draws_the_same_source_at_every_step():
    world_size, per_device = 2, 3
    sampler = SourceHomogeneousSampler(SOURCES, block_size=world_size * per_device, seed=0)
    shards = [
        list(BatchSamplerShard(BatchSampler(sampler, per_device, drop_last=False), world_size, rank))
        for rank in range(world_size)
    ]
    assert len(shards[0]) == len(shards[1]) > 0
    for step_batches in zip(*shards):
        assert len({SOURCES[i] for batch in step_batches for i in batch}) == 1
    seen = [i for rank in shards for batch in rank for i in batch]
    assert len(set(seen)) == len(seen) == len(sampler)


def test_epochs_reshuffle_deterministically():
    sampler = SourceHomogeneousSampler(SOURCES, block_size=4, seed=0)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and len(second) == len(first)
    assert list(SourceHomogeneousSampler(SOURCES, block_size=4, seed=0)) == first


def test_sources_too_small_are_named_or_refused(caplog):
    from transformers.utils import logging

    logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            SourceHomogeneousSampler(SOURCES, block_size=4)
        assert "tiny" in caplog.text
    finally:
        logging.disable_propagation()
    with pytest.raises(ValueError, match="No source has a full block"):
        SourceHomogeneousSampler(["a", "b"], block_size=2)
    with pytest.raises(ValueError, match="block_size"):
        SourceHomogeneousSampler(SOURCES, block_size=0)
