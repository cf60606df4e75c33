"""An adapter that lets `mteb` evaluate a [`RimeEncoder`] (its image/text retrieval tasks: MIEB, ViDoRe, VisRAG).

mteb calls `encode(dataloader, task_metadata=..., hf_split=..., hf_subset=..., prompt_type=...)` with batches of
dicts (`text`, `image`, `video`, or `query` / `title` + `body`), and `similarity` / `similarity_pairwise` on the
results. The adapter maps `prompt_type` to RIME's role (query or document) and each role to a mode, so queries can
be rewritten (`query_mode="gen"`) while the corpus is embedded in one pass (`document_mode="disc"`). mteb itself
is only needed for `mteb_model_meta` (and to run it):

```bash
pip install mteb
python -c "import mteb; from transformers_rime.evaluation.mteb import RimeMtebEncoder; \\
    mteb.evaluate(RimeMtebEncoder('leafyseay/RIME-2B'), mteb.get_tasks(tasks=['VidoreArxivQARetrieval']))"
```

mteb scores are not MMEB-V2 scores, even on shared datasets: MMEB-V2's local candidate lists have no mteb
equivalent. Use `transformers_rime.evaluation.evaluate` for MMEB-V2.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


class RimeMtebEncoder:
    """mteb's encoder protocol over a [`RimeEncoder`].

    Args:
        model: a [`RimeEncoder`], or a checkpoint (directory or Hub id) to load one from.
        revision: the checkpoint revision (recorded in `mteb_model_meta`).
        device: where to load the model.
        query_mode / document_mode: `"disc"` or `"gen"` for each side.
        batch_size: items per forward.
        max_new_tokens: the rewrite budget in gen mode.

    ```python
    >>> from transformers_rime import RimeEncoder
    >>> from transformers_rime.testing import tiny_rime_model, tiny_rime_processor
    >>> processor = tiny_rime_processor()
    >>> adapter = RimeMtebEncoder(RimeEncoder(tiny_rime_model(processor=processor), processor), query_mode="disc")
    >>> adapter.encode([{"text": ["a red car", "a cat"]}], task_metadata=None, hf_split="test", hf_subset="default",
    ...                prompt_type="query").shape
    (2, 64)

    ```
    """

    def __init__(
        self,
        model,
        revision: str | None = None,
        *,
        device: str | None = None,
        query_mode: str = "gen",
        document_mode: str = "disc",
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        **kwargs,
    ):
        from ..encoder import RimeEncoder

        self.encoder = model if isinstance(model, RimeEncoder) else RimeEncoder.from_pretrained(model, device=device)
        self.model_name = (
            model if isinstance(model, str) else getattr(self.encoder.model, "name_or_path", "") or "rime"
        )
        self.revision = revision
        self.modes = {"query": query_mode, "document": document_mode}
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def encode(self, inputs, *, task_metadata=None, hf_split=None, hf_subset=None, prompt_type=None, **kwargs):
        """Embed every item of `inputs` (an iterable of batch dicts), `(N, D)` float32."""
        role = _role(prompt_type)
        items = [item for batch in inputs for item in _batch_items(batch)]
        return self.encoder.encode(
            items,
            mode=self.modes[role],
            role=role,
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            show_progress_bar=False,
        )

    @staticmethod
    def similarity(embeddings1, embeddings2) -> torch.Tensor:
        """Cosine similarity matrix `(N, M)`."""
        return _unit(embeddings1) @ _unit(embeddings2).T

    @staticmethod
    def similarity_pairwise(embeddings1, embeddings2) -> torch.Tensor:
        """Cosine similarity of each row with the same row of the other set, `(N,)`."""
        return (_unit(embeddings1) * _unit(embeddings2)).sum(dim=-1)

    @property
    def mteb_model_meta(self):
        """mteb's `ModelMeta` for this model (needs mteb)."""
        from mteb.models import ModelMeta

        return ModelMeta(
            loader=None,
            name=str(self.model_name) if "/" in str(self.model_name) else f"local/{self.model_name}",
            revision=self.revision,
            release_date=None,
            languages=None,
            n_parameters=sum(p.numel() for p in self.encoder.model.parameters()),
            memory_usage_mb=None,
            max_tokens=None,
            embed_dim=self.encoder.embedding_dim,
            license=None,
            open_weights=True,
            public_training_code=None,
            public_training_data=None,
            reference=None,
            framework=["PyTorch"],
            similarity_fn_name="cosine",
            use_instructions=True,
            training_datasets=None,
            modalities=["image", "text", "video"],
        )


def _unit(embeddings) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.as_tensor(np.asarray(embeddings), dtype=torch.float32), dim=-1)


def _role(prompt_type) -> str:
    value = getattr(prompt_type, "value", prompt_type)
    return "document" if value in ("document", "passage", "corpus") else "query"


def _batch_items(batch: dict) -> list:
    """One RIME input per row of an mteb batch: text (or `query`, or `title` + `body`), images and video frames."""
    size = max(len(v) for v in batch.values() if isinstance(v, (list, tuple, torch.Tensor)))
    items = []
    for row in range(size):
        text = _text(batch, row)
        images = _row_value(batch, "image", row)
        video = _row_value(batch, "video", row)
        item = {}
        if text:
            item["text"] = text
        if images is not None:
            item["images"] = [_pil(i) for i in (images if isinstance(images, (list, tuple)) else [images])]
        if video is not None:
            item["video"] = [_pil(frame) for frame in video]
        if not item:
            raise ValueError(f"mteb batch row {row} has no text, image or video (keys: {sorted(batch)}).")
        items.append(item)  # text as {"text": ...}: a title ending in ".jpg" is never read as a path
    return items


def _text(batch: dict, row: int) -> str | None:
    for key in ("text", "query"):
        value = _row_value(batch, key, row)
        if value:
            return value
    parts = [_row_value(batch, key, row) for key in ("title", "body")]
    return " ".join(p for p in parts if p) or None


def _row_value(batch: dict, key: str, row: int):
    values = batch.get(key)
    return None if values is None or row >= len(values) else values[row]


def _pil(value) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # (C, H, W) frames
    if array.dtype != np.uint8:
        array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


__all__ = ["RimeMtebEncoder"]
