# Copyright 2026 The transformers_rime authors. Licensed under the Apache License, Version 2.0.
"""Where RIME reads its embeddings: pure functions from token ids / attention masks and hidden states to positions
and vectors (the `<disc_emb>` / `<gen_emb>` positions, last-token pooling, normalisation).

This file ships to the Hub next to the weights (``trust_remote_code``): it imports only torch and its sibling
configuration file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .configuration_rime import DISC_EMB_TOKEN, GEN_EMB_TOKEN


def last_token_positions(input_ids: torch.LongTensor, token_id: int, token_name: str = "token") -> torch.LongTensor:
    """Index of the last occurrence of `token_id` in each row of `input_ids` (`(B, L)` -> `(B,)`).

    Works for any padding side. A row without the token raises a `ValueError` naming the row.

    ```python
    >>> last_token_positions(torch.tensor([[0, 7, 5, 7, 0], [7, 1, 2, 3, 4]]), 7).tolist()
    [3, 0]

    ```
    """
    matches = input_ids == token_id
    missing = (~matches.any(dim=1)).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"No {token_name} (id {token_id}) in batch row(s) {missing}; was the prompt truncated?")
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return torch.where(matches, positions, -1).amax(dim=1)


def offset_positions(positions: torch.LongTensor, offset: int, length: int) -> torch.LongTensor:
    """`positions + offset`, refusing a read past the end of the sequence (`disc_token_offset`).

    ```python
    >>> offset_positions(torch.tensor([3, 5]), 1, 8).tolist()
    [4, 6]

    ```
    """
    shifted = positions + offset
    if offset and bool((shifted >= length).any()):
        rows = (shifted >= length).nonzero().flatten().tolist()
        raise ValueError(f"disc_token_offset={offset} reads past the end of batch row(s) {rows}.")
    return shifted


def last_nonpad_positions(attention_mask: torch.Tensor) -> torch.LongTensor:
    """Index of the last attended position of each row (`(B, L)` -> `(B,)`), for left or right padding.

    ```python
    >>> last_nonpad_positions(torch.tensor([[0, 1, 1], [1, 1, 0]])).tolist()
    [2, 1]

    ```
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, -1).amax(dim=1)


def gather_positions(hidden_states: torch.Tensor, positions: torch.LongTensor) -> torch.Tensor:
    """Pick one hidden state per row: `(B, L, D)`, `(B,)` -> `(B, D)`."""
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), positions]


def assistant_token_positions(
    input_ids: torch.LongTensor, token_id: int, disc_emb_id: int, end_ids: list[int], token_name: str = GEN_EMB_TOKEN
) -> torch.LongTensor:
    """Index of each row's last `token_id` written in the assistant turn: `(B, L)` -> `(B,)`.

    A gen-mode prompt names `<gen_emb>` in its own instruction, inside the user turn. The generative embedding is read
    at the `<gen_emb>` that ends the rewrite, so an end-of-turn token (`end_ids`) must lie between the row's first
    `<disc_emb>` (the prompt's; a sampled rewrite may write another) and its last `token_id`; a row where none does
    holds a prompt without its rewrite, and raises a `ValueError` naming the row.

    ```python
    >>> ids = torch.tensor([[5, 9, 7, 2, 9, 7], [5, 9, 7, 2, 3, 4]])  # 9: <disc_emb>, 7: <gen_emb>, 2: end of turn
    >>> assistant_token_positions(ids[:1], 7, disc_emb_id=9, end_ids=[2]).tolist()
    [5]
    >>> assistant_token_positions(ids, 7, disc_emb_id=9, end_ids=[2])
    Traceback (most recent call last):
    ...
    ValueError: Batch row(s) [1]: the last <gen_emb> is inside the prompt (its instruction), not after a rewrite. ...

    ```
    """
    if not end_ids:
        raise ValueError("Reading a generated token needs the end-of-turn ids: set config.end_of_turn_token_ids.")
    positions = last_token_positions(input_ids, token_id, token_name)
    last_token_positions(input_ids, disc_emb_id, DISC_EMB_TOKEN)  # every row has one
    first_disc = (input_ids == disc_emb_id).int().argmax(dim=1)
    steps = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    is_end = torch.isin(input_ids, torch.tensor(end_ids, device=input_ids.device))
    between = is_end & (steps > first_disc[:, None]) & (steps < positions[:, None])
    prompt_only = (~between.any(dim=1)).nonzero().flatten().tolist()
    if prompt_only:
        raise ValueError(
            f"Batch row(s) {prompt_only}: the last {token_name} is inside the prompt (its instruction), not after a "
            "rewrite. Pass the teacher-forced sequence (prompt, rewrite, then the token), or call "
            "generate_embeddings to write the rewrite."
        )
    return positions


def normalize_embeddings(embeddings: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """L2-normalise along the last dimension (in float32 for stability), or return as is."""
    return F.normalize(embeddings.float(), p=2, dim=-1).to(embeddings.dtype) if normalize else embeddings


__all__ = [
    "assistant_token_positions",
    "gather_positions",
    "last_nonpad_positions",
    "last_token_positions",
    "normalize_embeddings",
    "offset_positions",
]
