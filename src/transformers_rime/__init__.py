"""transformers_rime: generative and discriminative multimodal embeddings (RIME) on Hugging Face.

`import transformers_rime` registers RIME with the transformers auto classes. Training, sentence-transformers
and evaluation pieces are imported lazily, so importing the package never pulls in trl, peft or
sentence-transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .models.rime import (
    RimeConfig,
    RimeEmbeddingOutput,
    RimeForEmbedding,
    RimeGenerationOutput,
    RimeProcessor,
    register_rime,
)


__version__ = "0.1.0"

register_rime()

_LAZY = {
    "RimeEncoder": ".encoder",
    "RimeGeneration": ".encoder",
    "SearchHit": ".encoder",
    "RimeContrastiveConfig": ".training",
    "RimeContrastiveTrainer": ".training",
    "RimeContrastiveCollator": ".training",
    "RimeRefineRLConfig": ".training",
    "RimeRefineRLTrainer": ".training",
}

if TYPE_CHECKING:
    from .encoder import RimeEncoder, RimeGeneration, SearchHit
    from .training import (
        RimeContrastiveCollator,
        RimeContrastiveConfig,
        RimeContrastiveTrainer,
        RimeRefineRLConfig,
        RimeRefineRLTrainer,
    )


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "RimeConfig",
    "RimeContrastiveCollator",
    "RimeContrastiveConfig",
    "RimeContrastiveTrainer",
    "RimeEmbeddingOutput",
    "RimeEncoder",
    "RimeForEmbedding",
    "RimeGeneration",
    "RimeGenerationOutput",
    "RimeProcessor",
    "RimeRefineRLConfig",
    "RimeRefineRLTrainer",
    "SearchHit",
    "__version__",
    "register_rime",
]
