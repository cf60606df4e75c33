"""The RIME model family: configuration, model and processor (the files that ship to the Hub)."""

from .configuration_rime import RimeConfig
from .modeling_rime import RimeEmbeddingOutput, RimeForEmbedding, RimeGenerationOutput, RimePreTrainedModel
from .processing_rime import RimeProcessor


def register_rime() -> None:
    """Register RIME with the transformers auto classes (idempotent).

    After this, `AutoConfig`, `AutoModel` and `AutoProcessor` resolve a saved RIME directory to the installed
    classes (no `trust_remote_code` needed), and `save_pretrained` writes the `auto_map` plus the self-contained
    source files so that the directory also loads where `transformers_rime` is not installed.
    """
    from transformers import AutoConfig, AutoModel, AutoProcessor

    AutoConfig.register("rime", RimeConfig, exist_ok=True)
    AutoModel.register(RimeConfig, RimeForEmbedding, exist_ok=True)
    AutoProcessor.register(RimeConfig, RimeProcessor, exist_ok=True)
    RimeConfig.register_for_auto_class("AutoConfig")
    RimeForEmbedding.register_for_auto_class("AutoModel")
    RimeProcessor.register_for_auto_class("AutoProcessor")


__all__ = [
    "RimeConfig",
    "RimeEmbeddingOutput",
    "RimeForEmbedding",
    "RimeGenerationOutput",
    "RimePreTrainedModel",
    "RimeProcessor",
    "register_rime",
]
