"""Text rewards of Refine-RL: the shape and the length of a rollout.

TRL reward-function signature: `(completions, **kwargs) -> list[float]`. A completion is the decoded text (special
tokens such as `<|im_end|>` already dropped by TRL; `<gen_emb>` is an ordinary added token and stays) or, for
conversational prompts, `[{"role": "assistant", "content": text}]`.
"""

from __future__ import annotations

from ..models.rime.configuration_rime import GEN_EMB_TOKEN, REWRITE_END, REWRITE_START


def completion_text(completion) -> str:
    """The text of a TRL completion: a string, or the content of the last message of a conversation.

    ```python
    >>> completion_text([{"role": "assistant", "content": "hi"}])
    'hi'

    ```
    """
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def is_well_formed(
    text: str, rewrite_start: str = REWRITE_START, rewrite_end: str = REWRITE_END, gen_emb_token: str = GEN_EMB_TOKEN
) -> bool:
    """Whether `text` is exactly one non-empty `<rewrite>…</rewrite>` followed by `<gen_emb>` (whitespace aside).

    ```python
    >>> is_well_formed("<rewrite>a red car</rewrite><gen_emb>")
    True
    >>> is_well_formed("<rewrite>a red car</rewrite>")  # unfinished: no <gen_emb>
    False

    ```
    """
    text = text.strip()
    if not (text.startswith(rewrite_start) and text.endswith(gen_emb_token)):
        return False
    body = text[len(rewrite_start) : -len(gen_emb_token)].rstrip()
    if not body.endswith(rewrite_end):
        return False
    body = body[: -len(rewrite_end)]
    markers = (rewrite_start, rewrite_end, gen_emb_token)
    return bool(body.strip()) and not any(marker in body for marker in markers)


def format_reward(
    completions,
    rewrite_start: str = REWRITE_START,
    rewrite_end: str = REWRITE_END,
    gen_emb_token: str = GEN_EMB_TOKEN,
    **kwargs,
) -> list[float]:
    r"""1 when a completion is one non-empty `<rewrite>…</rewrite>` followed by `<gen_emb>`, else 0.

    Anything before the rewrite, a second rewrite, an empty one, a missing closing tag or a missing `<gen_emb>`
    (an unfinished rollout: it ran out of tokens or ended its turn first) scores 0.

    Args:
        completions (`list`): TRL completions (strings or one-message conversations).
        rewrite_start, rewrite_end, gen_emb_token (`str`): the tags (the model config's, by default RIME's).
        kwargs: ignored (TRL passes the batch's other columns).

    ```python
    >>> format_reward(["<rewrite>a red car</rewrite><gen_emb>", "<rewrite>a red", "<rewrite></rewrite><gen_emb>"])
    [1.0, 0.0, 0.0]

    ```
    """
    return [float(is_well_formed(completion_text(c), rewrite_start, rewrite_end, gen_emb_token)) for c in completions]


def length_reward(completions, completion_ids=None, target_length: int = 64, **kwargs) -> list[float]:
    r"""Penalty for rewrites longer than `target_length` tokens: $r = -\min(1, \max(0, n - L) / L)$.

    0 up to the target, then falling linearly to -1 at twice the target. `n` counts the completion's tokens when TRL
    passes `completion_ids`, else its whitespace-separated words. Off by default in Refine-RL (add `"length"` to
    `RimeRefineRLConfig.rewards` to use it).

    ```python
    >>> length_reward(["a b", "a b c d e f"], target_length=4)
    [0.0, -0.5]

    ```
    """
    if target_length <= 0:
        raise ValueError(f"target_length must be positive, got {target_length}.")
    if completion_ids is not None:
        lengths = [len(ids) for ids in completion_ids]
    else:
        lengths = [len(completion_text(c).split()) for c in completions]
    return [-min(1.0, max(0, n - target_length) / target_length) if n > target_length else 0.0 for n in lengths]


__all__ = ["completion_text", "format_reward", "is_well_formed", "length_reward"]
