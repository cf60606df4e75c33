"""Shared fixtures: one torch thread, tiny offline processors and models, a two-process (torchrun) launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

# Saved model directories checked in as test data (their .py files are an old export's remote code, not tests).
collect_ignore_glob = ["fixtures/*"]


class ForceTokens:
    """A logits processor that forces `token_id` for row `row` at generation step `step`.

    Used to steer a random tiny model into each ending of the rewrite (a generated `<gen_emb>`, an early
    end of turn), identically in our path and in the reference path.
    """

    def __init__(self, prompt_length: int, plan: dict[int, tuple[int, int]]):
        self.prompt_length = prompt_length
        self.plan = plan  # row -> (step, token_id)

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        scores = scores.clone()
        for row, (at_step, token_id) in self.plan.items():
            if row < scores.shape[0] and step == at_step:
                scores[row] = float("-inf")
                scores[row, token_id] = 0.0
        return scores


@pytest.fixture
def processor():
    from transformers_rime.testing import tiny_rime_processor

    return tiny_rime_processor()


@pytest.fixture
def model(processor):
    from transformers_rime.testing import tiny_rime_model

    return tiny_rime_model("qwen2_vl", processor=processor)


@pytest.fixture
def image():
    from transformers_rime.testing import random_image

    return random_image(64, 48, seed=1)


def _run_two_processes(*program) -> None:
    """Run `program` (a worker script and its arguments, or `"-m", module, ...`) under `torchrun --nproc_per_node 2`
    (CPU, gloo) and fail with its stderr if it fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1"]
    command += [f"--master_port={port}", *map(str, program)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="session")
def run_two_processes():
    """`run_two_processes(worker, out)`: a torchrun launch of a test worker script (or of `"-m", module, ...`) on
    two CPU processes."""
    return _run_two_processes
