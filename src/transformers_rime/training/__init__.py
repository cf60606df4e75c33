"""Stage-1 training of RIME: config, trainer, collator, cached-gradient helpers and the homogeneous sampler.

Imported lazily from `transformers_rime` (it pulls in `accelerate` through `transformers.Trainer`).
"""

from .collator import RimeContrastiveCollator, append_target_tokens, rewrite_target
from .configuration_contrastive import RimeContrastiveConfig
from .sampler import SourceHomogeneousSampler
from .trainer_contrastive import RimeContrastiveTrainer, freeze_vision_tower, in_batch_accuracy


__all__ = [
    "RimeContrastiveCollator",
    "RimeContrastiveConfig",
    "RimeContrastiveTrainer",
    "SourceHomogeneousSampler",
    "append_target_tokens",
    "freeze_vision_tower",
    "in_batch_accuracy",
    "rewrite_target",
]
