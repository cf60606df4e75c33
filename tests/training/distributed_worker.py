"""Run under `torchrun --nproc_per_node 2` by test_distributed.py (CPU, gloo); rank 0 writes what it measured.

1. The losses with `gather_across_processes=True` on 2 x 4 rows: loss and embedding gradients.
2. RimeContrastiveTrainer under DDP, 2 processes x 4 pairs, uncached and cached: the final weights.
3. Homogeneous batches under DDP: the sources each process drew at each step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers.utils import logging

from transformers_rime.losses import cross_mode_alignment, gather_with_grad, info_nce
from transformers_rime.testing import color_object_pairs, tiny_rime_model, tiny_rime_processor
from transformers_rime.training import RimeContrastiveConfig, RimeContrastiveTrainer


torch.set_num_threads(1)
logging.set_verbosity_error()
OUT = Path(sys.argv[1]) if __name__ == "__main__" else None  # the module is also imported by the test


def loss_inputs(world_size: int = 2):
    """The full batch both runs start from (the test rebuilds it in one process)."""
    generator = torch.Generator().manual_seed(0)
    rows = 4 * world_size

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)

    return [unit(rows, 16) for _ in range(4)] + [unit(rows, 2, 16)]


def training_args(name: str, **overrides) -> RimeContrastiveConfig:
    settings = {
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
        "disable_tqdm": True,
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "optim": "sgd",
        "learning_rate": 0.5,
        "max_grad_norm": 0.0,
        "temperature": 0.05,
        "seed": 0,
    }
    return RimeContrastiveConfig(str(OUT / name), **{**settings, **overrides})


def train(name: str, **overrides) -> None:
    processor = tiny_rime_processor()
    model = tiny_rime_model(processor=processor)
    rows = color_object_pairs(8, with_images=True)
    trainer = RimeContrastiveTrainer(
        model, training_args(name, **overrides), train_dataset=rows, processing_class=processor
    )
    trainer.train()
    if dist.get_rank() == 0:
        save_file({k: v.clone() for k, v in model.state_dict().items()}, str(OUT / f"{name}.safetensors"))


def main() -> None:
    train("ddp")  # also creates the gloo process group
    train("ddp_cached", cached_batch_size=2)
    rank, world_size = dist.get_rank(), dist.get_world_size()

    # losses on this process's rows, gathered across processes
    qd, qg, dd, dg, negatives = (t[4 * rank : 4 * rank + 4].clone().requires_grad_() for t in loss_inputs(world_size))
    loss = info_nce(qd, dd, hard_negatives=negatives, gather_across_processes=True)
    loss = loss + cross_mode_alignment(qd, qg, dd, dg, gather_across_processes=True)
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world_size)]
    dist.all_gather(losses, loss.detach())
    grads = {}
    for name, tensor in zip(("qd", "qg", "dd", "dg", "negatives"), (qd, qg, dd, dg, negatives)):
        pieces = [torch.zeros_like(tensor) for _ in range(world_size)]
        dist.all_gather(pieces, tensor.grad)
        grads[name] = torch.cat(pieces).tolist()

    # uneven rows: rank 0 holds 1 row, rank 1 holds 3
    uneven, offset = gather_with_grad(torch.full((1 + 2 * rank, 2), float(rank)))

    # homogeneous batches: which source each process draws at each step
    rows = [{"query": str(i), "source": "ab"[i % 2]} for i in range(32)]
    args = training_args("sampler", homogeneous_batches=True, per_device_train_batch_size=2)
    trainer = RimeContrastiveTrainer(
        tiny_rime_model(processor=tiny_rime_processor()),
        args,
        train_dataset=rows,
        processing_class=tiny_rime_processor(),
        data_collator=lambda batch: {"sources": [row["source"] for row in batch]},
    )
    drawn = [batch["sources"] for batch in trainer.get_train_dataloader()]
    all_drawn = [None] * world_size
    dist.all_gather_object(all_drawn, drawn)

    if rank == 0:
        report = {
            "losses": [float(x) for x in losses],
            "grads": grads,
            "uneven": uneven.tolist(),
            "offset": offset,
            "drawn": all_drawn,
        }
        (OUT / "report.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()  # a process left with a live group can abort at exit


if __name__ == "__main__":
    main()
