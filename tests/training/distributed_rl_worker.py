"""Run under `torchrun --nproc_per_node 2` by test_distributed_refine_rl.py (CPU, gloo); rank 0 writes a report.

Two GRPO steps of RimeRefineRLTrainer with symmetric rollouts, for full fine-tuning with beta 0 (the frozen anchors
are the trainer's own copy) and with beta > 0 (the reference model is saved once and loaded by every process). A
probe reward function records, per rollout, what the trainer handed the rewards: the pair, the side, the candidate
pool and where the target sits in it, and how many partner rollouts it saw. Rank 0 also saves the final weights of
both processes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers.utils import logging

from transformers_rime.testing import color_object_pairs, tiny_rime_model, tiny_rime_processor
from transformers_rime.training import RimeRefineRLConfig, RimeRefineRLTrainer


torch.set_num_threads(1)
logging.set_verbosity_error()
OUT = Path(sys.argv[1]) if __name__ == "__main__" else None  # the module is also imported by the test

NUM_PAIRS = 8


def rows() -> list[dict]:
    return color_object_pairs(NUM_PAIRS, with_images=True)


def run(name: str, beta: float) -> None:
    probes: list[dict] = []

    def probe(completions, pair_index, side, anchor_embeddings, positive_index, partner_embeddings, **kwargs):
        for pair, row_side, anchors, position, partners in zip(
            pair_index, side, anchor_embeddings, positive_index, partner_embeddings
        ):
            probes.append(
                {
                    "pair": int(pair),
                    "side": row_side,
                    "anchors": anchors.tolist(),
                    "target": anchors[position].tolist(),
                    "partners": len(partners),
                }
            )
        return [0.0] * len(completions)

    processor = tiny_rime_processor()
    args = RimeRefineRLConfig(
        str(OUT / name),
        max_steps=2,
        per_device_train_batch_size=8,  # rollouts per process: 4 prompts (2 pairs, both sides) x 2
        num_generations=2,
        max_completion_length=6,
        learning_rate=1e-2,
        beta=beta,
        symmetric_rollouts=True,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    model = tiny_rime_model(processor=processor)
    trainer = RimeRefineRLTrainer(
        model, args=args, train_dataset=rows(), processing_class=processor, reward_funcs=[probe]
    )
    trainer.train()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    per_rank = [None] * world_size
    dist.all_gather_object(per_rank, probes)
    weights = [None] * world_size
    dist.all_gather_object(weights, {k: v.clone() for k, v in model.state_dict().items()})
    if rank == 0:
        (OUT / f"{name}.json").write_text(json.dumps(per_rank))
        for index, state in enumerate(weights):
            save_file(state, str(OUT / f"{name}-rank{index}.safetensors"))
    dist.barrier()


def main() -> None:
    run("beta0", beta=0.0)
    run("beta", beta=0.04)
    dist.destroy_process_group()  # a process left with a live group can abort at exit


if __name__ == "__main__":
    main()
