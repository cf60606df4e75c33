"""A PNG of evaluation results drawn with PIL (no plotting library needed): one 2 x 2 mode matrix per row.

Each panel is a results row (a task, `overall` or a group): query modes down, corpus modes across, each cell
shaded by its score (white 0 to dark blue 1) and labelled with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..models.rime.configuration_rime import MODES


_CELL, _MARGIN, _TITLE, _LABEL = 64, 16, 22, 40
_PANELS_PER_LINE = 4


def plot_results(results: dict, path: str | os.PathLike) -> Path:
    """Draw `results["scores"]` (rows of `"query->corpus"` scores) as mode-matrix panels into a PNG at `path`.

    ```python
    >>> import tempfile, os
    >>> from PIL import Image
    >>> results = {"metric": "hit@1", "scores": {"toy": {"disc->disc": 0.5, "gen->disc": 0.75}}}
    >>> path = plot_results(results, os.path.join(tempfile.mkdtemp(), "modes.png"))
    >>> Image.open(path).size
    (200, 224)

    ```
    """
    rows = results["scores"]
    if not rows:
        raise ValueError("No scores to plot.")
    font = ImageFont.load_default()
    panel_width = _LABEL + 2 * _CELL + _MARGIN
    panel_height = _TITLE + _LABEL // 2 + 2 * _CELL + _MARGIN
    columns = min(_PANELS_PER_LINE, len(rows))
    lines = (len(rows) + columns - 1) // columns
    header = _TITLE + _MARGIN
    image = Image.new("RGB", (columns * panel_width + _MARGIN, header + lines * panel_height), "white")
    draw = ImageDraw.Draw(image)
    title = f"{results.get('benchmark') or 'Evaluation'}: {results.get('metric', '')} (query mode down, corpus across)"
    draw.text((_MARGIN, _MARGIN // 2), title, fill="black", font=font)
    for index, (name, scores) in enumerate(rows.items()):
        left = _MARGIN + (index % columns) * panel_width
        top = header + (index // columns) * panel_height
        draw.text((left, top), _shorten(name, panel_width - 8, draw, font), fill="black", font=font)
        grid_left, grid_top = left + _LABEL, top + _TITLE + _LABEL // 2
        for column, corpus_mode in enumerate(MODES):
            draw.text((grid_left + column * _CELL + _CELL // 3, grid_top - 14), corpus_mode, fill="black", font=font)
        for row, query_mode in enumerate(MODES):
            draw.text((left + 4, grid_top + row * _CELL + _CELL // 2 - 6), query_mode, fill="black", font=font)
            for column, corpus_mode in enumerate(MODES):
                box = [
                    grid_left + column * _CELL,
                    grid_top + row * _CELL,
                    grid_left + (column + 1) * _CELL - 2,
                    grid_top + (row + 1) * _CELL - 2,
                ]
                value = scores.get(f"{query_mode}->{corpus_mode}")
                if value is None:
                    draw.rectangle(box, fill=(235, 235, 235))
                    continue
                draw.rectangle(box, fill=_shade(value))
                ink = "white" if value > 0.55 else "black"
                draw.text((box[0] + _CELL // 4, box[1] + _CELL // 2 - 6), f"{value:.3f}", fill=ink, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _shade(value: float) -> tuple[int, int, int]:
    """White at 0 to dark blue at 1."""
    value = min(max(float(value), 0.0), 1.0)
    return tuple(round(white + (blue - white) * value) for white, blue in zip((255, 255, 255), (25, 60, 140)))


def _shorten(text: str, width: int, draw: ImageDraw.ImageDraw, font) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


__all__ = ["plot_results"]
