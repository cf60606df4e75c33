"""The TRL internals RimeRefineRLTrainer builds on (`training/trl_compat.py`) still exist with the expected
parameters in the installed TRL: a TRL upgrade that moves one fails here, naming it, not deep inside a training run."""

from __future__ import annotations

import importlib

import pytest


trl = pytest.importorskip("trl", reason="Refine-RL needs the rl extra")

from transformers_rime.training.trl_compat import (  # noqa: E402
    GRPO_TRAINER_ATTRIBUTES,
    GRPO_TRAINER_METHODS,
    TRL_FUNCTIONS,
    signature_problem,
)


@pytest.mark.parametrize("name", sorted(GRPO_TRAINER_METHODS))
def test_grpo_trainer_method_has_the_expected_parameters(name):
    found = getattr(trl.GRPOTrainer, name, None)
    problem = signature_problem("GRPOTrainer", name, found, GRPO_TRAINER_METHODS[name])
    assert problem is None, problem


@pytest.mark.parametrize(("module", "name"), sorted(TRL_FUNCTIONS))
def test_trl_function_has_the_expected_parameters(module, name):
    found = getattr(importlib.import_module(module), name, None)
    problem = signature_problem(module, name, found, TRL_FUNCTIONS[(module, name)])
    assert problem is None, problem


def test_every_override_of_the_trainer_is_listed():
    """A method the trainer overrides from GRPOTrainer (or above) that is not listed would escape the checks."""
    from transformers_rime.training.trainer_refine_rl import RimeRefineRLTrainer

    overridden = {
        name
        for klass in RimeRefineRLTrainer.__mro__[: RimeRefineRLTrainer.__mro__.index(trl.GRPOTrainer)]
        for name in vars(klass)
        if callable(vars(klass)[name]) and hasattr(trl.GRPOTrainer, name) and not name.startswith("__")
    }
    assert overridden <= set(GRPO_TRAINER_METHODS), sorted(overridden - set(GRPO_TRAINER_METHODS))


def test_a_changed_or_missing_method_is_named_with_both_signatures_and_the_trl_version():
    def moved(self, inputs, prompts):
        pass

    message = signature_problem("GRPOTrainer", "_calculate_rewards", moved, ("inputs", "prompts", "completions"))
    assert "_calculate_rewards" in message and f"trl {trl.__version__}" in message
    assert "('inputs', 'prompts')" in message and "('inputs', 'prompts', 'completions')" in message
    message = signature_problem("GRPOTrainer", "_gone", None, ("inputs",))
    assert "has no GRPOTrainer._gone" in message and f"trl {trl.__version__}" in message


def test_grpo_trainer_sets_the_attributes_the_trainer_reads(tmp_path):
    from training.test_trainer_refine_rl import make_trainer
    from transformers_rime.testing import color_object_pairs, tiny_rime_processor

    trainer = make_trainer(tmp_path, tiny_rime_processor(), rows=color_object_pairs(4), max_steps=1)
    missing = [name for name in GRPO_TRAINER_ATTRIBUTES if not hasattr(trainer, name)]
    assert not missing, f"trl {trl.__version__}: GRPOTrainer no longer sets {missing}; update training/trl_compat.py"
