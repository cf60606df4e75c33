"""Batches for stage-1 training: teacher-forced gen-mode sequences whose labels cover the rewrite and `<gen_emb>`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import BatchFeature

from ..data.readers import clean_rewrite
from ..models.rime.configuration_rime import MODES
from ..models.rime.processing_rime import RimeProcessor
from .rows import TrainingItem, parse_row, row_origin


DISC, GEN = MODES
GROUPS = ("query", "positive", "negative")
# Processor outputs with one value per token besides the ids and the mask, extended with zeros (text) when the
# target is appended. Chosen by name: a tensor that merely has the ids' shape (pixel_values with as many patches as
# rows and a patch dimension equal to the prompt length) is not per-token data.
PER_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")


def left_pad(sequences: Sequence[torch.Tensor | Sequence[int]], fill: int) -> torch.Tensor:
    """Stack 1-D sequences (tensors, or id lists made `long` tensors) into one `(B, L)` tensor, right-aligned, with
    `fill` on the left (RIME pads on the left, so every row's last token is at the same position).

    ```python
    >>> left_pad([[5, 6, 7], [8]], fill=0).tolist()
    [[5, 6, 7], [0, 0, 8]]

    ```
    """
    rows = [s if isinstance(s, torch.Tensor) else torch.tensor(list(s), dtype=torch.long) for s in sequences]
    width = max(len(row) for row in rows)
    return torch.stack([torch.cat([row.new_full((width - len(row),), fill), row]) for row in rows])


def rewrite_target(rewrite: str, rewrite_start: str, rewrite_end: str, gen_emb_token: str) -> str:
    """The assistant text a gen-mode sequence is teacher-forced on: the rewrite, then `<gen_emb>`.

    Plain text is wrapped in the rewrite tags; an annotation that already starts with a tag (`<rewrite>...`, or
    UME-R1's `<think>...`) is kept verbatim. A trailing `<gen_emb>` (or `<|im_end|>`) is dropped, not doubled.

    ```python
    >>> rewrite_target("a red car", "<rewrite>", "</rewrite>", "<gen_emb>")
    '<rewrite>a red car</rewrite><gen_emb>'
    >>> rewrite_target("<rewrite>a red car</rewrite><gen_emb>", "<rewrite>", "</rewrite>", "<gen_emb>")
    '<rewrite>a red car</rewrite><gen_emb>'

    ```
    """
    text = clean_rewrite(rewrite.strip(), gen_emb_token)
    if text is None:
        raise ValueError("empty rewrite")
    if not text.startswith("<"):
        text = f"{rewrite_start}{text}{rewrite_end}"
    return text + gen_emb_token


def append_target_tokens(batch: BatchFeature, targets: list[list[int]], pad_token_id: int) -> BatchFeature:
    """Append each row's target ids after its prompt and label only them; re-pad on the left.

    Prompts and targets are tokenized separately and joined as ids, so the label boundary is exact whatever the
    tokenizer would merge across it. The per-token tensors named in `PER_TOKEN_KEYS` (`mm_token_type_ids`) are
    extended with zeros (text); every other entry (`pixel_values`, `image_grid_thw`, ...) is kept as it is.

    Args:
        batch (`BatchFeature`): the processor's left-padded prompt batch (`input_ids`, `attention_mask`, ...).
        targets (`list[list[int]]`): one id list per row.
        pad_token_id (`int`): id used for padding.

    Returns:
        `BatchFeature` with the same keys plus `labels` (-100 on prompt and padding).

    ```python
    >>> batch = BatchFeature({"input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]),
    ...                       "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])})
    >>> out = append_target_tokens(batch, [[1, 2], [3]], pad_token_id=0)
    >>> out["input_ids"].tolist(), out["labels"].tolist()
    ([[5, 6, 1, 2], [7, 8, 9, 3]], [[-100, -100, 1, 2], [-100, -100, -100, 3]])

    ```
    """
    input_ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    per_token = [k for k in PER_TOKEN_KEYS if k in batch]
    rows = []
    for i, target in enumerate(targets):
        prompt = input_ids[i][mask[i]]
        tail = torch.tensor(target, dtype=input_ids.dtype)
        rows.append((prompt, tail, {k: batch[k][i][mask[i]] for k in per_token}))
    out = {k: v for k, v in batch.items() if k not in per_token and k not in ("input_ids", "attention_mask")}
    out["input_ids"] = left_pad([torch.cat([p, t]) for p, t, _ in rows], pad_token_id)
    out["attention_mask"] = left_pad([torch.ones(len(p) + len(t), dtype=torch.long) for p, t, _ in rows], 0)
    out["labels"] = left_pad([torch.cat([torch.full_like(p, -100), t]) for p, t, _ in rows], -100)
    for key in per_token:
        out[key] = left_pad([torch.cat([extra[key], extra[key].new_zeros(len(t))]) for _, t, extra in rows], 0)
    return BatchFeature(out)


class RimeContrastiveCollator:
    r"""Turns training rows into model batches for [`RimeContrastiveTrainer`].

    A row has `query` and `positive` (items as in `RimeEncoder.encode`: text, image path, PIL image, frame list or
    dict), optionally `negative` / `negatives`, the annotated rewrites `query_rewrite`, `positive_rewrite`,
    `negative_rewrite` / `negative_rewrites`, and instructions `query_instruction` / `positive_instruction` (`""`
    for none; missing or `None` for the model's default instruction of the role). Other columns are ignored.

    With rewrites, each item becomes one teacher-forced gen-mode sequence (prompt, rewrite, `<gen_emb>`) labelled
    on the rewrite and `<gen_emb>`; one forward over it gives the disc embedding, the gen embedding and the LM loss.
    Without (`with_rewrites=False`), items get the shorter disc-mode prompt. Negatives get gen-mode sequences only
    when every negative of the batch has a rewrite.

    Returns `{"query": [chunk, ...], "positive": [...], "negative": [...]}` (no `"negative"` key when the batch has
    none): each group cut into chunks of at most `chunk_size` items, each chunk a left-padded [`BatchFeature`].
    Chunks are what the cached-gradient trainer embeds one at a time.

    Args:
        processor ([`RimeProcessor`]): builds the prompts (its instructions and tags are the model's).
        chunk_size (`int`, *optional*): items per chunk; `None` keeps each group whole.
        max_length (`int`, *optional*): longest allowed sequence in tokens. A longer one is an error naming the
            row, never a truncation (which would cut `<disc_emb>`, image tokens or the rewrite).
        with_rewrites (`bool`, defaults to `True`): build gen-mode sequences; a query or positive without a
            rewrite is then an error naming the row.

    Example:

    ```python
    >>> from transformers_rime.testing import tiny_rime_processor
    >>> collator = RimeContrastiveCollator(tiny_rime_processor())
    >>> batch = collator([{"query": "a red car", "positive": "a car, red", "query_rewrite": "red car",
    ...                    "positive_rewrite": "a red car"}])
    >>> sorted(batch), sorted(batch["query"][0])
    (['positive', 'query'], ['attention_mask', 'input_ids', 'labels', 'mm_token_type_ids'])

    ```
    """

    def __init__(
        self,
        processor: RimeProcessor,
        chunk_size: int | None = None,
        max_length: int | None = None,
        with_rewrites: bool = True,
    ):
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}.")
        self.processor = processor
        self.chunk_size = chunk_size
        self.max_length = max_length
        self.with_rewrites = with_rewrites

    def __call__(self, rows: list[dict]) -> dict[str, list[BatchFeature]]:
        groups = {name: [] for name in GROUPS}
        for index, row in enumerate(rows):
            for name, item in self.row_items(row, index):
                groups[name].append(item)
        batch = {}
        for name, items in groups.items():
            if not items:
                continue
            with_gen = self.with_rewrites and all(item.rewrite is not None for item in items)
            if self.with_rewrites and name != "negative" and not with_gen:
                missing = next(item for item in items if item.rewrite is None)
                raise ValueError(
                    f"{missing.where}: no rewrite. The gen-mode terms (lm, gen, cma weights) need a `{name}_rewrite` "
                    "for every row; set those weights to 0 to train the disc mode only."
                )
            size = self.chunk_size or len(items)
            batch[name] = [self.encode(items[i : i + size], with_gen) for i in range(0, len(items), size)]
        return batch

    def row_items(self, row: dict, index: int) -> list[tuple[str, TrainingItem]]:
        """The `(group, item)` pairs of one row, parsed (bad items fail here, naming the row and column).

        Errors name the row's `origin` (the readers' `"/abs/data.jsonl:7"`) when it has one, as
        `"/abs/data.jsonl:7 (query)"`; else its batch position and source, as `"batch row 3 (source 'CIRR'), column
        'query'"`.
        """
        where = row_origin(row)
        if where is None:
            where = f"batch row {index}" + (f" (source {row['source']!r})" if row.get("source") is not None else "")
        return parse_row(row, where, index).groups()

    def encode(self, items: list[TrainingItem], with_gen: bool) -> BatchFeature:
        """One chunk: prompts (+ rewrite targets and labels when `with_gen`), left-padded, with pixel values."""
        processor = self.processor
        mode = GEN if with_gen else DISC
        prepared, targets = [], []
        for item in items:
            instruction = processor.instruction_for(item.role, item.instruction)
            prepared.append(processor.prepare_item(item.item, mode, instruction, item.where))
            if with_gen:
                try:
                    text = rewrite_target(
                        item.rewrite, processor.rewrite_start, processor.rewrite_end, processor.gen_emb_token
                    )
                except ValueError as error:
                    raise ValueError(f"{item.where}: {error}") from None
                targets.append(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        batch = processor.collate(prepared)
        if with_gen:
            batch = append_target_tokens(batch, targets, processor.tokenizer.pad_token_id)
        if self.max_length is not None:
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            too_long = [f"{item.where}: {n} tokens" for item, n in zip(items, lengths) if n > self.max_length]
            if too_long:
                raise ValueError(
                    f"Sequence longer than max_length={self.max_length} ({'; '.join(too_long)}). Nothing is "
                    "truncated: shorten the text or rewrite, lower the image pixel budget or raise max_length."
                )
        return batch


__all__ = ["RimeContrastiveCollator", "append_target_tokens", "left_pad", "rewrite_target"]
