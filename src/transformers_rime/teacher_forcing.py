"""Teacher-forced gen-mode sequences: a gen-mode prompt followed by a given rewrite and `<gen_emb>`.

One forward pass over such a sequence reads the disc embedding at `<disc_emb>`, the gen embedding at the appended
`<gen_emb>` and, with labels, the rewrite's LM loss. Stage-1 training builds its batches this way
(`training.RimeContrastiveCollator`), and so does `RimeEncoder.encode_with_rewrites`, which embeds items with rewrites
chosen by the caller (the rewrite-sensitivity diagnostic swaps and removes them). Both use the functions here, so a
rewrite is tokenized and appended the same way in training and in the diagnostic.

Example:

```python
>>> from transformers_rime.testing import tiny_rime_processor
>>> processor = tiny_rime_processor()
>>> prompts = processor(text=["a red car", "a black cat"], mode="gen", role="query", return_tensors="pt")
>>> targets = [rewrite_target_ids(processor, "red car"), [processor.gen_emb_token_id]]  # a rewrite, none
>>> batch = append_target_tokens(prompts, targets, processor.tokenizer.pad_token_id)
>>> [processor.tokenizer.decode(row).rpartition("assistant")[2].strip() for row in batch["input_ids"]]
['<rewrite>red car</rewrite><gen_emb>', '<gen_emb>']

```
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import BatchFeature

from .data.readers import clean_rewrite
from .models.rime.processing_rime import RimeProcessor


# Processor outputs with one value per token besides the ids and the mask, extended with zeros (text) when the
# target is appended. Chosen by name: a tensor that merely has the ids' shape (pixel_values with as many patches as
# rows and a patch dimension equal to the prompt length) is not per-token data.
PER_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")

# A rewrite given as token ids is a sequence of ints: a list, a tuple, a 1-D numpy array or tensor.
Rewrite = str | Sequence[int] | np.ndarray | torch.Tensor | None


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


def rewrite_target_ids(processor: RimeProcessor, rewrite: str) -> list[int]:
    """The token ids of `rewrite_target(rewrite, ...)` with `processor`'s tags: what follows a gen-mode prompt.

    The target is tokenized on its own (no special tokens added), as training does, so that the boundary between
    prompt and rewrite is exact whatever the tokenizer would merge across it. An empty rewrite is a `ValueError`.
    """
    text = rewrite_target(rewrite, processor.rewrite_start, processor.rewrite_end, processor.gen_emb_token)
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def target_ids(processor: RimeProcessor, rewrite: Rewrite, where: str = "rewrite") -> list[int]:
    """The ids to append after an item's gen-mode prompt for a given rewrite, always ending with `<gen_emb>`.

    - `None`, `""` (or only whitespace, a trailing `<gen_emb>` or end-of-turn tokens): no rewrite, `<gen_emb>` alone,
      right after the prompt;
    - a `str`: text, tagged and tokenized as training does (`rewrite_target_ids`); it may not contain a token the
      prompt reserves (an end of turn, an image slot, `<disc_emb>`, ...);
    - token ids (a list, tuple, 1-D array or tensor of ints): the rewrite's tokens as the model wrote them, before its
      `<gen_emb>` (`RimeGeneration.token_ids`), used as they are. Decoding and re-tokenizing a generated rewrite can
      give other tokens (another split of the same text, skipped special tokens), so only the ids reproduce the
      generated sequence, and with it the gen embedding, exactly. They may not contain `<gen_emb>` (a rewrite ends
      at its first one) nor image or video slots (which the forward would fill with pixels).

    Errors are `ValueError`s (`TypeError` for a wrong type) naming `where`.

    ```python
    >>> from transformers_rime.testing import tiny_rime_processor
    >>> processor = tiny_rime_processor()
    >>> target_ids(processor, None) == target_ids(processor, [])  == [processor.gen_emb_token_id]
    True
    >>> ids = target_ids(processor, "red car")
    >>> target_ids(processor, ids[:-1]) == ids
    True

    ```
    """
    gen_emb_id = processor.gen_emb_token_id
    if rewrite is None:
        return [gen_emb_id]
    if isinstance(rewrite, str):
        text = clean_rewrite(rewrite.strip(), processor.gen_emb_token)
        if text is None:
            return [gen_emb_id]
        processor.check_text(text, where)
        return rewrite_target_ids(processor, text)
    if isinstance(rewrite, (torch.Tensor, np.ndarray)):
        if rewrite.ndim != 1:
            raise ValueError(f"{where}: token ids must be one-dimensional, got shape {tuple(rewrite.shape)}.")
        rewrite = rewrite.tolist()
    if not isinstance(rewrite, Sequence) or not all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in rewrite
    ):
        raise TypeError(
            f"{where}: a rewrite is a string, a sequence of token ids or None, got {type(rewrite).__name__}."
        )
    ids = [int(i) for i in rewrite]
    vocabulary = len(processor.tokenizer)
    outside = [i for i in ids if not 0 <= i < vocabulary]
    if outside:
        raise ValueError(f"{where}: token id(s) {outside[:5]} outside the vocabulary (0..{vocabulary - 1}).")
    if gen_emb_id in ids:
        raise ValueError(
            f"{where}: the token ids contain {processor.gen_emb_token}; a rewrite ends at its first one, so pass the "
            "tokens before it (as RimeGeneration.token_ids holds them)."
        )
    media = {processor.tokenizer.convert_tokens_to_ids(t) for t in (processor.image_token, processor.video_token)}
    slots = sorted(media & set(ids))
    if slots:
        raise ValueError(f"{where}: the token ids contain image or video slot(s) {slots}, which take pixels.")
    return [*ids, gen_emb_id]


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


__all__ = [
    "PER_TOKEN_KEYS",
    "Rewrite",
    "append_target_tokens",
    "left_pad",
    "rewrite_target",
    "rewrite_target_ids",
    "target_ids",
]
