"""Dataset-homogeneous batches: every global batch comes from one source, for harder in-batch negatives."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler
from transformers.utils import logging


logger = logging.get_logger(__name__)


class SourceHomogeneousSampler(Sampler[int]):
    r"""Orders dataset indices in blocks of `block_size` consecutive indices that share one source.

    Set `block_size` to the *global* batch size (`per_device_train_batch_size x world_size`). Under DDP, Accelerate
    cuts the index stream into per-device batches and deals batch `k` to process `k % world_size`, so the
    `world_size` batches of one step come from one block: every process draws from the same source, and the
    negatives gathered across processes are as hard as within one. (A per-process sampler, like torch's
    `DistributedSampler`, would mix sources across processes.)

    Each epoch (see `set_epoch`) reshuffles the rows within each source and the order of the blocks. A source's
    last incomplete block is dropped, a different remainder each epoch; a source smaller than one block is never
    drawn (a warning names it).

    Args:
        sources (`Sequence[str]`): the source of each dataset row.
        block_size (`int`): rows per block (the global batch size).
        seed (`int`, defaults to 0): base seed; the epoch is added to it.

    Example:

    ```python
    >>> sampler = SourceHomogeneousSampler(["a", "a", "b", "b", "a", "b"], block_size=2)
    >>> order = list(sampler)
    >>> sources = ["a", "a", "b", "b", "a", "b"]
    >>> all(sources[order[i]] == sources[order[i + 1]] for i in range(0, len(order), 2))
    True

    ```
    """

    def __init__(self, sources: Sequence[str], block_size: int, seed: int = 0):
        if block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size}.")
        self.block_size = block_size
        self.seed = seed
        self.epoch = 0
        by_source: dict[str, list[int]] = {}
        for index, source in enumerate(sources):
            by_source.setdefault(source, []).append(index)
        self.by_source = {name: torch.tensor(rows) for name, rows in sorted(by_source.items())}
        too_small = [name for name, rows in self.by_source.items() if len(rows) < block_size]
        if len(too_small) == len(self.by_source):
            raise ValueError(f"No source has a full block of {block_size} rows; lower the batch size.")
        if too_small:
            logger.warning(f"Sources with fewer rows than one batch ({block_size}) are never drawn: {too_small}.")

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through Accelerate) at the start of each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(len(rows) // self.block_size * self.block_size for rows in self.by_source.values())

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        blocks = []
        for rows in self.by_source.values():
            shuffled = rows[torch.randperm(len(rows), generator=generator)]
            full = len(rows) // self.block_size * self.block_size
            blocks.extend(shuffled[:full].split(self.block_size))
        for block in torch.randperm(len(blocks), generator=generator).tolist():
            yield from blocks[block].tolist()


__all__ = ["SourceHomogeneousSampler"]
