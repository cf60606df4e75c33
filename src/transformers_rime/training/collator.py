"""Batches for stage-1 training: teacher-forced gen-mode sequences whose labels cover the rewrite and `<gen_emb>`."""

from __future__ import annotations

from transformers import BatchFeature

from ..models.rime.configuration_rime import MODES
from ..models.rime.processing_rime import RimeProcessor
from ..teacher_forcing import PER_TOKEN_KEYS, append_target_tokens, left_pad, rewrite_target, rewrite_target_ids
from .rows import TrainingItem, parse_row, row_origin


DISC, GEN = MODES
GROUPS = ("query", "positive", "negative")


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
                    targets.append(rewrite_target_ids(processor, item.rewrite))
                except ValueError as error:
                    raise ValueError(f"{item.where}: {error}") from None
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


# The teacher-forcing helpers live in `transformers_rime.teacher_forcing`; they are re-exported here, where they
# were first defined, so that existing imports keep working.
__all__ = [
    "PER_TOKEN_KEYS",
    "RimeContrastiveCollator",
    "append_target_tokens",
    "left_pad",
    "rewrite_target",
]
