"""Shared fixtures: one torch thread, tiny offline processors and models."""

from __future__ import annotations

import os

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


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
