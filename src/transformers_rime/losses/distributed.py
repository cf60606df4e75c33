"""Gathering embeddings from every process with their gradients, so that in-batch negatives span all devices."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate `tensor` from every process along dim 0, keeping the autograd graph of the local piece.

    The backward pass sums, into each process's own rows, the gradients every process computed for them (an
    all-to-all), so with DDP's gradient averaging the result is exactly the gradient of the mean of all processes'
    losses: 2 processes x batch 4 train like 1 process x batch 8. Processes may hold different numbers of rows (a
    short last batch): rows are padded for the collective and the padding is cut off again.

    Args:
        tensor (`torch.Tensor` of shape `(n, ...)`): this process's rows.

    Returns:
        `(gathered, offset)`: the `(sum of n over processes, ...)` tensor, in process order, and the index of this
        process's first row in it. Without a process group: `(tensor, 0)`.

    ```python
    >>> gathered, offset = gather_with_grad(torch.ones(2, 3))  # a single process returns its input
    >>> tuple(gathered.shape), offset
    ((2, 3), 0)

    ```
    """
    if not is_distributed():
        return tensor, 0
    world_size, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    if tensor.shape[0] < longest:
        padding = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, padding])
    pieces = dist_nn.all_gather(tensor)
    gathered = torch.cat([piece[:n] for piece, n in zip(pieces, sizes)])
    return gathered, sum(sizes[:rank])


__all__ = ["gather_with_grad", "is_distributed"]
