"""Small pure helpers of Refine-RL: rollout sequences, pixel slicing, evaluation mode and the paired sampler."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def gen_embedding_ids(
    prompt_ids: Sequence[int], completion_ids: Sequence[int], gen_emb_id: int, end_ids: Sequence[int]
) -> tuple[list[int], bool]:
    """The sequence a rollout's gen embedding is read from, and whether the model wrote `<gen_emb>` itself.

    A finished rollout ends with `<gen_emb>` and is used as is. An unfinished one (it ended its turn or ran out of
    tokens) gets `<gen_emb>` appended after its text, end-of-turn tokens dropped, as `generate_embeddings` does at
    inference, so its embedding is still read at a `<gen_emb>`, never at an arbitrary position.

    ```python
    >>> gen_embedding_ids([1, 2], [5, 6, 9], gen_emb_id=9, end_ids=[0])
    ([1, 2, 5, 6, 9], True)
    >>> gen_embedding_ids([1, 2], [5, 6, 0], gen_emb_id=9, end_ids=[0])
    ([1, 2, 5, 6, 9], False)

    ```
    """
    completion = list(completion_ids)
    if completion and completion[-1] == gen_emb_id:
        return [*prompt_ids, *completion], True
    while completion and completion[-1] in end_ids:
        completion.pop()
    return [*prompt_ids, *completion, gen_emb_id], False


def patch_offsets(image_grid_thw: torch.LongTensor, images_per_row: Sequence[int]) -> tuple[list[int], list[int]]:
    """Where each row's images start in `image_grid_thw` and its patches in `pixel_values` (cumulative, length B+1).

    ```python
    >>> patch_offsets(torch.tensor([[1, 2, 2], [1, 4, 4]]), [0, 1, 1])
    ([0, 0, 1, 2], [0, 0, 4, 20])

    ```
    """
    patches = image_grid_thw.prod(dim=-1).tolist() if len(image_grid_thw) else []
    image_starts, patch_starts = [0], [0]
    for count in images_per_row:
        first = image_starts[-1]
        image_starts.append(first + count)
        patch_starts.append(patch_starts[-1] + sum(patches[first : first + count]))
    return image_starts, patch_starts


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Evaluate without dropout (LoRA dropout included), then restore each submodule's mode.

    ```python
    >>> layer = torch.nn.Dropout().train()
    >>> with eval_mode(layer):
    ...     layer.training
    False
    >>> layer.training
    True

    ```
    """
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


class PairedRepeatSampler(Sampler[int]):
    """TRL's `RepeatSampler` order over pairs whose two rollout rows (query `2p`, document `2p + 1`) stay together.

    Each pair yields `num_generations` copies of its query row then as many of its document row, so a generation
    batch always holds both sides of its pairs (UME-R1's reward compares them). Pairs are shuffled with `seed`, cut
    into chunks of `pairs_per_batch` and each chunk is repeated `repeat_count` times, like `RepeatSampler`.

    ```python
    >>> list(PairedRepeatSampler(num_pairs=2, num_generations=2, pairs_per_batch=2, shuffle=False))
    [0, 0, 1, 1, 2, 2, 3, 3]

    ```
    """

    def __init__(
        self,
        num_pairs: int,
        num_generations: int,
        pairs_per_batch: int,
        repeat_count: int = 1,
        shuffle: bool = True,
        seed: int = 0,
    ):
        self.num_pairs = num_pairs
        self.num_generations = num_generations
        self.pairs_per_batch = pairs_per_batch
        self.repeat_count = repeat_count
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        order = (
            torch.randperm(self.num_pairs, generator=self.generator) if self.shuffle else torch.arange(self.num_pairs)
        )
        chunks = [order[i : i + self.pairs_per_batch].tolist() for i in range(0, self.num_pairs, self.pairs_per_batch)]
        for chunk in (c for c in chunks if len(c) == self.pairs_per_batch):  # drop a ragged last chunk, as TRL does
            for _ in range(self.repeat_count):
                for pair in chunk:
                    for row in (2 * pair, 2 * pair + 1):
                        yield from [row] * self.num_generations

    def __len__(self) -> int:
        full_chunks = self.num_pairs // self.pairs_per_batch
        return full_chunks * self.pairs_per_batch * 2 * self.num_generations * self.repeat_count


__all__ = ["PairedRepeatSampler", "eval_mode", "gen_embedding_ids", "patch_offsets"]
