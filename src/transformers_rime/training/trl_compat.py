"""What `RimeRefineRLTrainer` relies on inside TRL: the tested version range and the private `GRPOTrainer` methods it
overrides or calls, with the parameters it expects of them.

These are TRL internals, free to change in any release. When TRL moves, update this file together with
`trainer_refine_rl.py`; `tests/training/test_trl_compat.py` checks every entry against the installed TRL and names
what changed. Importing this module does not import TRL.
"""

from __future__ import annotations

import inspect

from packaging.version import Version


TRL_RANGE = (Version("1.16.0"), Version("1.17.0"))  # tested: trl>=1.16.0,<1.17.0 (`setup.py`'s `rl` extra)

# GRPOTrainer method -> the parameters (after `self`) the trainer's override or call assumes.
GRPO_TRAINER_METHODS: dict[str, tuple[str, ...]] = {
    # overridden by RimeRefineRLTrainer
    "_get_train_sampler": ("dataset",),  # the paired sampler of symmetric rollouts
    "_get_eval_sampler": ("eval_dataset",),
    "_generate_and_score_completions": ("inputs",),  # rows get their RIME prompt here
    "_tokenize_prompts": ("prompts",),  # prompt ids kept for the embedding forward
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),  # embedding columns added
    # called
    "_log_metric": ("name", "value"),  # rollouts/finished, rollouts/anchor_top1
    # transformers.Trainer's, overridden by RimeCheckpointMixin (through GRPOTrainer)
    "save_model": ("output_dir", "_internal_call"),
    "_load_from_checkpoint": ("resume_from_checkpoint", "model"),
    "_load_best_model": (),
}

# TRL functions the trainer calls: (module, name) -> parameters.
TRL_FUNCTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("trl.models", "prepare_deepspeed"): ("model", "accelerator"),  # places the frozen anchor copy
}

# GRPOTrainer attributes the trainer reads (set in `GRPOTrainer.__init__`).
GRPO_TRAINER_ATTRIBUTES = (
    "num_generations",
    "num_generations_eval",
    "num_iterations",
    "shuffle_dataset",
    "ref_model",
    "eos_token_ids",
)


def check_trl_version(version: str | None = None) -> None:
    """Raise an `ImportError` unless TRL is within the tested range (`setup.py`'s `rl` extra)."""
    if version is None:
        import trl

        version = trl.__version__
    low, high = TRL_RANGE
    if not low <= Version(version) < high:
        raise ImportError(
            f"RimeRefineRLTrainer needs trl>={low},<{high} (found {version}): it builds on GRPOTrainer internals "
            f'that change between TRL releases. Install the tested version with `pip install "transformers_rime[rl]"`.'
        )


def parameter_names(function) -> tuple[str, ...]:
    """The parameter names of `function`, without `self`."""
    names = tuple(inspect.signature(function).parameters)
    return names[1:] if names[:1] == ("self",) else names


def signature_problem(owner: str, name: str, found, expected: tuple[str, ...]) -> str | None:
    """`None` when `found` (a function, or `None` when missing) takes `expected`; else a message saying what changed."""
    import trl

    where = f"{owner}.{name}"
    if found is None:
        return (
            f"trl {trl.__version__} has no {where}, which RimeRefineRLTrainer relies on with parameters "
            f"{expected}; update training/trl_compat.py and training/trainer_refine_rl.py for this TRL release."
        )
    names = parameter_names(found)
    if names != expected:
        return (
            f"trl {trl.__version__}: {where} takes {names}, RimeRefineRLTrainer expects {expected}; update "
            "training/trl_compat.py and training/trainer_refine_rl.py for this TRL release."
        )
    return None


__all__ = [
    "GRPO_TRAINER_ATTRIBUTES",
    "GRPO_TRAINER_METHODS",
    "TRL_FUNCTIONS",
    "TRL_RANGE",
    "check_trl_version",
    "parameter_names",
    "signature_problem",
]
