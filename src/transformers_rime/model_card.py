"""Model cards for exported RIME models, filled from the model's config and, when given, evaluation results.

The template is `model_cards/template.md` in the repository (installed as `transformers_rime.model_cards`); it is
rendered with `huggingface_hub.ModelCard.from_template`, which writes the YAML front matter from a `ModelCardData`.

Evaluation results are a mapping (or the path of a JSON file) of this shape:

```
{
  "benchmark": "MMEB-V2",                       # optional, shown above the table
  "metric": "Hit@1",                            # optional, shown above the table
  "scores": {                                   # one row per task or aggregate
    "overall": {"disc->disc": 0.61, "gen->disc": 0.63, "disc->gen": 0.60, "gen->gen": 0.65},
    ...
  }
}
```

Mode pairs read `query mode -> corpus mode`; missing pairs are left blank.
"""

from __future__ import annotations

import json
import os
import re
from importlib.resources import files

import transformers
from huggingface_hub import ModelCard, ModelCardData

from .export import installed_version
from .models.rime.configuration_rime import SUPPORTED_SENTENCE_TRANSFORMERS, SUPPORTED_TRANSFORMERS


MODE_PAIRS = ("disc->disc", "disc->gen", "gen->disc", "gen->gen")
BACKBONE_NAMES = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}
DEFAULT_TAGS = ("rime", "multimodal-embedding", "sentence-transformers", "feature-extraction", "custom_code")
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def template_path() -> str:
    """Path of the model-card template (`model_cards/template.md`)."""
    return str(files("transformers_rime.model_cards").joinpath("template.md"))


def load_results(results) -> dict | None:
    """Read evaluation results (a mapping, or the path of a JSON file) and check their shape."""
    if results is None:
        return None
    if isinstance(results, (str, os.PathLike)):
        with open(results, encoding="utf-8") as f:
            results = json.load(f)
    scores = results.get("scores") if isinstance(results, dict) else None
    if not isinstance(scores, dict) or not scores:
        raise ValueError("Evaluation results need a non-empty 'scores' mapping: {row: {'gen->disc': score, ...}}.")
    for row, pairs in scores.items():
        if not isinstance(pairs, dict) or not pairs:
            raise ValueError(f"Evaluation results: row {row!r} must map mode pairs to scores.")
        unknown = set(pairs) - set(MODE_PAIRS)
        if unknown:
            raise ValueError(f"Evaluation results: row {row!r} has unknown mode pair(s) {sorted(unknown)}.")
    return results


def results_table(results: dict) -> str:
    """A Markdown table of `results["scores"]`: one row per entry, one column per mode pair present.

    ```python
    >>> print(results_table({"scores": {"overall": {"disc->disc": 0.612, "gen->disc": 0.63}}}))
    | | disc->disc | gen->disc |
    |---|---|---|
    | overall | 0.612 | 0.63 |

    ```
    """
    scores = results["scores"]
    pairs = [pair for pair in MODE_PAIRS if any(pair in row for row in scores.values())]
    lines = ["| | " + " | ".join(pairs) + " |", "|" + "---|" * (len(pairs) + 1)]
    for name, row in scores.items():
        cells = [format(row[pair], ".4g") if pair in row else "" for pair in pairs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def create_model_card(
    model,
    processor,
    model_id: str | None = None,
    results=None,
    base_model: str | None = None,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
    language: list[str] | None = None,
    tags: list[str] | None = None,
    model_name: str | None = None,
) -> ModelCard:
    """Fill the model-card template for a RIME model.

    Args:
        model ([`RimeForEmbedding`]): the model (config, size and dtype are read from it).
        processor ([`RimeProcessor`]): its processor (image budget, video frames).
        model_id: the Hub id the usage snippets load (default: `"path/to/model"`).
        results: evaluation results (see the module docstring), a mapping or the path of a JSON file.
        base_model: the checkpoint this model was trained from; by default the model's own `name_or_path` when it
            is a Hub id (a local path is left out).
        license: the license identifier (Qwen2-VL and Qwen3-VL are Apache-2.0; check your backbone's).
        datasets: training datasets (Hub ids).
        language: language codes.
        tags: extra tags, added to RIME's (which include `sentence-transformers`).
        model_name: the card's title (default: the last part of `model_id`, else "RIME model").

    Returns:
        A `huggingface_hub.ModelCard`; `card.save(path)` writes it, `str(card)` is its text.
    """
    config = model.config
    results = load_results(results)
    if base_model is None:
        candidate = str(getattr(model, "name_or_path", "") or "")
        if HUB_ID.match(candidate) and not os.path.exists(candidate) and candidate != model_id:
            base_model = candidate
    backbone_type = config.vlm_config.model_type
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="feature-extraction",
        license=license,
        base_model=base_model,
        datasets=datasets,
        language=language,
        tags=[*DEFAULT_TAGS, backbone_type, *(tags or [])],
        model_name=model_name,
    )
    size = processor.image_processor.size
    return ModelCard.from_template(
        card_data,
        template_path=template_path(),
        model_id=model_id or "path/to/model",
        model_name=model_name or (model_id.split("/")[-1] if model_id else "RIME model"),
        base_model=base_model,
        backbone_name=BACKBONE_NAMES.get(backbone_type, backbone_type),
        backbone_type=backbone_type,
        num_layers=config.get_text_config().num_hidden_layers,
        num_parameters=_format_count(model.num_parameters()),
        hidden_size=config.hidden_size,
        normalize=config.normalize,
        max_new_tokens=config.max_new_tokens,
        disc_emb_token=config.disc_emb_token,
        gen_emb_token=config.gen_emb_token,
        rewrite_start=config.rewrite_start,
        rewrite_end=config.rewrite_end,
        query_instruction=config.query_instruction,
        document_instruction=config.document_instruction,
        min_pixels=_format_count(size.get("shortest_edge", 0)),
        max_pixels=_format_count(size.get("longest_edge", 0)),
        max_video_frames=processor.max_video_frames,
        dtype=str(model.dtype).removeprefix("torch."),
        results_table=results_table(results) if results else None,
        results_description=_describe(results) if results else None,
        transformers_version=transformers.__version__,
        transformers_rime_version=installed_version("transformers_rime"),
        transformers_range=_version_range(SUPPORTED_TRANSFORMERS),
        sentence_transformers_range=_version_range(SUPPORTED_SENTENCE_TRANSFORMERS),
    )


def _describe(results: dict) -> str | None:
    parts = [str(results[key]) for key in ("benchmark", "metric") if results.get(key)]
    return ", ".join(parts) + ":" if parts else None


def _version_range(supported) -> str:
    low, high = supported
    return f">={low},<{high}"


def _format_count(n: int) -> str:
    """`1234567` -> `'1.23M'`; small numbers unchanged."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


__all__ = ["create_model_card", "load_results", "results_table", "template_path"]
