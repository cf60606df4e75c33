"""The pieces of cached-gradient (GradCache) training that are not specific to RIME.

GradCache (Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", 2021) trains
with a large contrastive batch at the memory cost of a small one:

1. embed every chunk without gradients (no activations kept), saving the random state each chunk saw;
2. compute the loss on the embeddings as leaves and back-propagate it to them only (cheap);
3. re-run each chunk with gradients under its saved random state (same dropout masks) and back-propagate
   `sum(embeddings * cached_gradient)`, whose gradient with respect to the weights is exactly the full loss's.
"""

from __future__ import annotations

import contextlib

import torch


class RandomState:
    """The CPU and CUDA random state at capture time, to replay a forward pass with identical dropout.

    ```python
    >>> state = RandomState.capture()
    >>> first = torch.rand(2)
    >>> with state.replay():
    ...     replayed = torch.rand(2)
    >>> bool(torch.equal(first, replayed))
    True

    ```
    """

    def __init__(self, cpu: torch.Tensor, cuda: dict[int, torch.Tensor]):
        self.cpu = cpu
        self.cuda = cuda

    @classmethod
    def capture(cls) -> RandomState:
        cuda = {}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = {index: torch.cuda.get_rng_state(index) for index in range(torch.cuda.device_count())}
        return cls(torch.get_rng_state(), cuda)

    @contextlib.contextmanager
    def replay(self):
        """Run the block under the captured state; the caller's random state is restored afterwards."""
        with torch.random.fork_rng(devices=list(self.cuda)):
            torch.set_rng_state(self.cpu)
            for index, state in self.cuda.items():
                torch.cuda.set_rng_state(state, index)
            yield


def leaf(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A detached copy of `tensor` that collects the loss gradient in its `.grad`."""
    return tensor.detach().requires_grad_() if tensor is not None else None


def cached_gradient_surrogate(outputs: list[torch.Tensor], leaves: list[torch.Tensor | None]) -> torch.Tensor:
    """`sum_i <output_i, leaf_i.grad>`: back-propagating it gives the weights the loss's gradient.

    `outputs` are a chunk's embeddings recomputed with gradients, `leaves` the matching slices of the leaves the
    loss was back-propagated to. A leaf the loss did not use (no `.grad`) contributes nothing.

    ```python
    >>> x = leaf(torch.ones(2, 3))
    >>> (3 * x).sum().backward()
    >>> w = torch.ones(2, 3, requires_grad=True)
    >>> cached_gradient_surrogate([2 * w], [x]).backward()  # d/dw of 3 * (2w) summed
    >>> w.grad.unique().tolist()
    [6.0]

    ```
    """
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for output, cached in zip(outputs, leaves):
        if output is not None and cached is not None and cached.grad is not None:
            total = total + (output.float() * cached.grad).sum()
    return total


__all__ = ["RandomState", "cached_gradient_surrogate", "leaf"]
