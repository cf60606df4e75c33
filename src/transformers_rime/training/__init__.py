"""RIME training: stage 1 (contrastive + CMA) and stage 2 (Refine-RL).

Imported lazily from `transformers_rime` (it pulls in `accelerate` through `transformers.Trainer`). The Refine-RL
names need TRL (the `rl` extra) and are imported on first use, so stage 1 never imports TRL.
"""

import importlib

from .collator import RimeContrastiveCollator, append_target_tokens, rewrite_target
from .configuration_contrastive import RimeContrastiveConfig
from .sampler import SourceHomogeneousSampler
from .trainer_contrastive import RimeContrastiveTrainer, freeze_vision_tower, in_batch_accuracy


_REFINE_RL = {
    "RimeRefineRLConfig": ".configuration_refine_rl",
    "RimeRefineRLTrainer": ".trainer_refine_rl",
}


def __getattr__(name: str):
    if name in _REFINE_RL:
        return getattr(importlib.import_module(_REFINE_RL[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RimeContrastiveCollator",
    "RimeContrastiveConfig",
    "RimeContrastiveTrainer",
    "RimeRefineRLConfig",
    "RimeRefineRLTrainer",
    "SourceHomogeneousSampler",
    "append_target_tokens",
    "freeze_vision_tower",
    "in_batch_accuracy",
    "rewrite_target",
]
