"""Two CPU processes (torchrun, gloo) x batch 4 train exactly like one process x batch 8."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.utils import logging

from transformers_rime.losses import cross_mode_alignment, info_nce
from transformers_rime.testing import color_object_pairs, tiny_rime_model, tiny_rime_processor
from transformers_rime.training import RimeContrastiveConfig, RimeContrastiveTrainer


WORKER = Path(__file__).with_name("distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
from distributed_worker import loss_inputs  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory, run_two_processes):
    out = tmp_path_factory.mktemp("ddp")
    run_two_processes(WORKER, out)
    return out, json.loads((out / "report.json").read_text())


def test_gathered_losses_and_gradients_equal_one_process(report):
    _, measured = report
    qd, qg, dd, dg, negatives = (t.clone().requires_grad_() for t in loss_inputs(2))
    loss = info_nce(qd, dd, hard_negatives=negatives) + cross_mode_alignment(qd, qg, dd, dg)
    loss.backward()
    # DDP averages over processes: the mean of the per-process losses is the full batch's loss, and the
    # per-process gradients divided by the world size are the full batch's gradients
    assert sum(measured["losses"]) / 2 == pytest.approx(float(loss), abs=1e-5)
    for name, tensor in zip(("qd", "qg", "dd", "dg", "negatives"), (qd, qg, dd, dg, negatives)):
        torch.testing.assert_close(torch.tensor(measured["grads"][name]) / 2, tensor.grad, atol=1e-6, rtol=0)
    assert measured["uneven"] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]] and measured["offset"] == 0


@pytest.mark.parametrize("run", ["ddp", "ddp_cached"])
def test_ddp_training_equals_one_process_with_the_whole_batch(report, run, tmp_path):
    out, _ = report
    logging.set_verbosity_error()
    processor = tiny_rime_processor()
    model = tiny_rime_model(processor=processor)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    args = RimeContrastiveConfig(
        str(tmp_path),
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=8,
        max_steps=2,
        optim="sgd",
        learning_rate=0.5,
        max_grad_norm=0.0,
        temperature=0.05,
        seed=0,
    )
    RimeContrastiveTrainer(
        model, args, train_dataset=color_object_pairs(8, with_images=True), processing_class=processor
    ).train()
    distributed = load_file(str(out / f"{run}.safetensors"))
    moved = 0
    for name, value in model.state_dict().items():
        # float32 sums in another order: differences of ~1e-5 against updates of ~1 (lr 0.5, two SGD steps)
        torch.testing.assert_close(distributed[name], value, atol=1e-4, rtol=1e-4, msg=name)
        moved += bool((value - initial[name]).abs().max() > 1e-2)
    assert moved > 10


def test_homogeneous_batches_give_every_process_the_same_source(report):
    _, measured = report
    per_rank = measured["drawn"]
    assert len(per_rank) == 2 and len(per_rank[0]) == len(per_rank[1]) == 8  # 32 rows / (2 x 2)
    for step in zip(*per_rank):
        assert len({source for batch in step for source in batch}) == 1
