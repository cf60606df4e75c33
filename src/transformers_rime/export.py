"""The sentence-transformers files of an exported RIME directory.

`RimeEncoder.save_pretrained` writes the model and processor (transformers files with `auto_map`), then calls
`write_sentence_transformers_files`, so that `SentenceTransformer(path, trust_remote_code=True)` loads the same
directory. sentence-transformers itself is not needed to write these files, only to read them. `write_pipeline_files`
adds the transformers pipeline (`pipeline("feature-extraction", model=path, trust_remote_code=True)`).
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import PackageNotFoundError, version

import torch
import transformers
from transformers.dynamic_module_utils import get_relative_import_files

from .models import rime as rime_models
from .models.rime.configuration_rime import SUPPORTED_SENTENCE_TRANSFORMERS
from .models.rime.pipeline_rime import custom_pipelines


SENTENCE_TRANSFORMERS_MODULE_FILE = "sentence_transformer_rime.py"
SENTENCE_TRANSFORMERS_MODULE_CLASS = "RimeSentenceTransformerModule"
# must match RimeSentenceTransformerModule.config_file_name (a test checks). Named as sentence-transformers'
# Transformer module names its settings: mteb reads a model's modalities from its `modality_config`.
SENTENCE_TRANSFORMERS_MODULE_CONFIG = "sentence_bert_config.json"
# must match the module's MODALITY_CONFIG (a test checks): what an item may hold
SENTENCE_TRANSFORMERS_MODALITY_CONFIG = {
    modality: {"method": "forward", "method_output_name": "embeddings"} for modality in ("text", "image", "video")
}


def sentence_transformers_prompts(config) -> dict[str, str]:
    """The `query` / `document` prompts: the model's instructions, which RIME places inside the user turn."""
    return {"query": config.query_instruction or "", "document": config.document_instruction or ""}


def write_sentence_transformers_files(save_directory: str | os.PathLike, config) -> None:
    """Write `modules.json`, `config_sentence_transformers.json`, the module config and the module's code.

    The module's defaults are written: disc mode (`encode(..., mode="gen")` switches per call), the config's rewrite
    budget, the backbone's context length as the longest prompt (`max_seq_length`; longer ones are refused, never
    truncated) and the modalities (`modality_config`: text, image, video), which mteb reads.

    Args:
        save_directory: the exported directory (model and processor already saved there).
        config ([`RimeConfig`]): the model's config (prompts come from its instructions).
    """
    save_directory = os.fspath(save_directory)
    source = os.path.join(os.path.dirname(rime_models.__file__), SENTENCE_TRANSFORMERS_MODULE_FILE)
    for path in (source, *get_relative_import_files(source)):
        shutil.copy(path, os.path.join(save_directory, os.path.basename(path)))

    module_type = f"{SENTENCE_TRANSFORMERS_MODULE_FILE[: -len('.py')]}.{SENTENCE_TRANSFORMERS_MODULE_CLASS}"
    files = {
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": module_type}],
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer",
            "__version__": {
                # when sentence-transformers is absent, the oldest release we support
                "sentence_transformers": installed_version("sentence-transformers")
                or str(SUPPORTED_SENTENCE_TRANSFORMERS[0]),
                "transformers": transformers.__version__,
                "pytorch": torch.__version__,
            },
            "prompts": sentence_transformers_prompts(config),
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
        SENTENCE_TRANSFORMERS_MODULE_CONFIG: {
            "mode": "disc",
            "max_new_tokens": None,
            "max_seq_length": getattr(config.get_text_config(), "max_position_embeddings", None),
            "modality_config": SENTENCE_TRANSFORMERS_MODALITY_CONFIG,
        },
    }
    for name, content in files.items():
        with open(os.path.join(save_directory, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)
            f.write("\n")


PIPELINE_MODULE_FILE = "pipeline_rime.py"


def write_pipeline_files(save_directory: str | os.PathLike) -> None:
    """Copy `pipeline_rime.py` (with the sibling files it imports) and name it in `config.json`'s `custom_pipelines`.

    Then `pipeline("feature-extraction" | "image-feature-extraction", model=path, trust_remote_code=True)` runs
    `RimeFeatureExtractionPipeline` on the directory, without `transformers_rime` installed. The entry is written into
    the saved `config.json` (the model's config in memory is left unchanged).

    Args:
        save_directory: the exported directory (model saved there already).
    """
    save_directory = os.fspath(save_directory)
    source = os.path.join(os.path.dirname(rime_models.__file__), PIPELINE_MODULE_FILE)
    for path in (source, *get_relative_import_files(source)):
        shutil.copy(path, os.path.join(save_directory, os.path.basename(path)))
    config_file = os.path.join(save_directory, "config.json")
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    config["custom_pipelines"] = custom_pipelines(PIPELINE_MODULE_FILE[: -len(".py")])
    with open(config_file, "w", encoding="utf-8") as f:  # as transformers writes it
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, or `None` (read from metadata: nothing is imported)."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


__all__ = ["sentence_transformers_prompts", "write_pipeline_files", "write_sentence_transformers_files"]
