"""Recover the generation prompt a RIME model was trained with from its training data.

RIME's own generation instruction and rewrite tags are not published, but every training record carries them: the
human turn of an SFT record (and the `qry_text` of an RL record) ends in `<disc_emb>` followed by the instruction,
and the assistant turn is the rewrite wrapped in its tags, then `<gen_emb>` (see `transformers_rime.data.readers`
for the layouts). `infer_prompt` reads them back as `RimeConfig` fields:

```python
found = infer_prompt("RIME-Train/RIME-SFT")
encoder = RimeEncoder.from_pretrained("leafyseay/RIME-2B", **found)
```

The processor renders a gen prompt as `{text}\\n<disc_emb>\\n{gen_instruction}`, so with the recovered
`gen_instruction` (the data's text after `<disc_emb>`, stripped) a prompt ends exactly as in training.
"""

from __future__ import annotations

import os
import re
from collections import Counter

from transformers.utils import logging

from ..models.rime.configuration_rime import DISC_EMB_TOKEN, END_OF_TURN_TOKENS, GEN_EMB_TOKEN
from .readers import _ASSISTANT_ROLES, _HUMAN_ROLES, _data_files, _load_records


logger = logging.get_logger(__name__)

# `{rewrite_start}`, `{rewrite_end}` and `{gen_emb_token}` are placeholders in `RimeConfig.gen_instruction`.
PLACEHOLDERS = ("{rewrite_start}", "{rewrite_end}", "{gen_emb_token}")
_COUNT_KEYS = ("instructions", "rewrite_starts", "rewrite_ends", "records")


def count_prompts(path_or_records, disc_emb_token: str = DISC_EMB_TOKEN, gen_emb_token: str = GEN_EMB_TOKEN) -> dict:
    """Count the generation instructions and rewrite tags found in RIME / UME-R1 training data.

    Media files are never opened, so the data can be inspected without its images and videos.

    Args:
        path_or_records: a JSON / JSON-lines file, a folder (every `*.json` / `*.jsonl` in it and its subfolders),
            a list of paths, or a list of already-loaded records. Records may be SFT records (`qry` / `pos` sides with `conversations`
            of `from`/`value` turns or `messages` of `role`/`content` turns; a record that is itself one side is
            read too) or RL records (`qry_text`, `pos_text`, ...: every string field named `*_text`).
        disc_emb_token: the token after which the instruction starts.
        gen_emb_token: the token that ends an assistant turn.

    Returns:
        A dict with
        - `instructions`: a `Counter` of instructions, one count per prompt (human turn or `*_text` field) that
          contains `disc_emb_token`: the text after its first occurrence, surrounding whitespace stripped (prompts
          with nothing after it, disc-only prompts, are not counted);
        - `rewrite_starts`: a `Counter` of the leading tags (`<rewrite>`, `<think>`, ...) of assistant turns that
          end in `gen_emb_token`;
        - `rewrite_ends`: a `Counter` of the closing tags right before their `gen_emb_token` (`</rewrite>`,
          `</answer>`, ...);
        - `records`: the number of records read.

    Example:

    ```python
    >>> records = [{"qry_text": "<image>\\nWhat is shown?\\n<disc_emb>\\nDescribe it in <r> </r>, then <gen_emb>.",
    ...             "pos_text": "A cat."}]
    >>> counts = count_prompts(records)
    >>> counts["instructions"], counts["records"]
    (Counter({'Describe it in <r> </r>, then <gen_emb>.': 1}), 1)

    ```
    """
    counts = {"instructions": Counter(), "rewrite_starts": Counter(), "rewrite_ends": Counter(), "records": 0}
    start_pattern = re.compile(r"^\s*(<[^<>/\s]+>)")
    end_of_turn = "|".join(map(re.escape, END_OF_TURN_TOKENS))
    end_pattern = re.compile(r"(</[^<>\s]+>)\s*" + re.escape(gen_emb_token) + rf"(?:\s*(?:{end_of_turn}))?\s*$")
    for _, records in _record_sources(path_or_records):
        for record in records:
            counts["records"] += 1
            for role, text in _turns(record):
                if role == "human":
                    if disc_emb_token in text:
                        instruction = text.split(disc_emb_token, 1)[1].strip()
                        if instruction:
                            counts["instructions"][instruction] += 1
                    continue
                end = end_pattern.search(text)
                if end is None:
                    continue
                counts["rewrite_ends"][end.group(1)] += 1
                start = start_pattern.match(text)
                if start is not None and start.group(1) not in (gen_emb_token, disc_emb_token):
                    counts["rewrite_starts"][start.group(1)] += 1
    return counts


def infer_prompt(path_or_records, disc_emb_token: str = DISC_EMB_TOKEN, gen_emb_token: str = GEN_EMB_TOKEN) -> dict:
    """The generation prompt of a RIME model, recovered from its training data as `RimeConfig` fields.

    The most frequent instruction and tags win (ties go to the one seen first); when the data holds more than one,
    a warning names the runners-up with their counts (`count_prompts` gives all of them). The result is ready for
    `RimeEncoder.from_pretrained(path, **found)`, `RimeForEmbedding.from_pretrained(path, **found)` or
    `RimeConfig(**found)`.

    Notes:
        - `gen_instruction` is the data's literal text. `RimeConfig` treats `{rewrite_start}`, `{rewrite_end}` and
          `{gen_emb_token}` in it as placeholders, so an instruction that contains one of these literally would be
          rendered differently from the data (a warning says so). Tags written out in the instruction (`<think>`)
          are kept as they are.
        - `rewrite_start` / `rewrite_end` come from assistant turns (SFT data). Data without them (RL data only)
          gives `gen_instruction` alone, and the model keeps its own tags (logged at info level).

    Args:
        path_or_records: as in `count_prompts`, or the result of `count_prompts` (so that large data is read once).
        disc_emb_token: the token after which the instruction starts.
        gen_emb_token: the token that ends an assistant turn.

    Returns:
        `{"gen_instruction": str}`, plus `"rewrite_start"` and `"rewrite_end"` when assistant turns were found.

    Raises:
        ValueError: no prompt in the data contains `disc_emb_token` followed by an instruction.

    Example:

    ```python
    >>> from transformers_rime.models.rime.configuration_rime import format_gen_instruction
    >>> human = "<image>\\nWhat is shown?\\n<disc_emb>\\nSum it up in <sum> </sum>, then <gen_emb>."
    >>> sft = {"image": "cat.jpg", "conversations": [
    ...     {"from": "human", "value": human}, {"from": "gpt", "value": "<sum>a cat on a sofa</sum><gen_emb>"}]}
    >>> found = infer_prompt([{"qry": sft, "pos": sft}])
    >>> found["rewrite_start"], found["rewrite_end"]
    ('<sum>', '</sum>')
    >>> format_gen_instruction(found["gen_instruction"], "<sum>", "</sum>", "<gen_emb>")
    'Sum it up in <sum> </sum>, then <gen_emb>.'

    ```
    """
    if isinstance(path_or_records, dict) and set(_COUNT_KEYS) <= set(path_or_records):
        counts, where = path_or_records, "the counted data"
    else:
        counts = count_prompts(path_or_records, disc_emb_token, gen_emb_token)
        where = _describe(path_or_records)
    instructions = counts["instructions"]
    if not instructions:
        raise ValueError(
            f"No generation prompt found in {where} ({counts['records']} records): no human turn or `*_text` field "
            f"contains {disc_emb_token} followed by an instruction. Pass RIME-Train / UME-R1 SFT or RL data."
        )
    found = {"gen_instruction": _winner(instructions, "gen_instruction")}
    placeholders = [p for p in PLACEHOLDERS if p in found["gen_instruction"]]
    if placeholders:
        logger.warning(
            f"The recovered gen_instruction contains {', '.join(placeholders)} literally; RimeConfig fills these "
            "placeholders in, so rendered prompts will differ from the data there."
        )
    if counts["rewrite_starts"] and counts["rewrite_ends"]:
        found["rewrite_start"] = _winner(counts["rewrite_starts"], "rewrite_start")
        found["rewrite_end"] = _winner(counts["rewrite_ends"], "rewrite_end")
    else:
        logger.info(
            f"No assistant turns ending in {gen_emb_token} with tags in {where}: rewrite_start / rewrite_end not "
            "recovered (the model keeps its own)."
        )
    logger.info(
        f"Recovered the generation prompt from {where}: {instructions[found['gen_instruction']]} of "
        f"{sum(instructions.values())} prompts in {counts['records']} records use gen_instruction "
        f"{found['gen_instruction']!r}."
    )
    return found


def _winner(counter: Counter, field: str) -> str:
    (value, count), *others = counter.most_common()
    if others:
        runners_up = "; ".join(f"{text!r} ({n})" for text, n in others[:5])
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        logger.warning(
            f"The data holds {len(counter)} different {field} values; using {value!r} ({count}). Runners-up: "
            f"{runners_up}{more}."
        )
    return value


def _record_sources(path_or_records):
    """(name, records) pairs: one per data file, or one for a list of records."""
    if isinstance(path_or_records, (list, tuple)) and any(isinstance(r, dict) for r in path_or_records):
        yield "the given records", path_or_records
        return
    paths = [path_or_records] if isinstance(path_or_records, (str, os.PathLike)) else list(path_or_records)
    for path in map(os.fspath, paths):
        if not os.path.isdir(path):
            for file in _data_files(path):
                records = _load_records(file)
                yield file, records if isinstance(records, list) else [records]
            continue
        # A folder is searched recursively (RIME-Train keeps its files in RIME-SFT/ and RIME-RL/), skipping hidden
        # folders (`hf download` writes `.cache/`) and, with a warning, JSON files that hold no records.
        for root, folders, _ in os.walk(path):
            folders[:] = sorted(f for f in folders if not f.startswith("."))
            for file in _data_files(root):
                try:
                    records = _load_records(file)
                except ValueError as error:
                    logger.warning(f"Skipping {file}: {error}")
                    continue
                yield file, records if isinstance(records, list) else [records]


def _describe(path_or_records) -> str:
    if isinstance(path_or_records, (str, os.PathLike)):
        return os.fspath(path_or_records)
    if isinstance(path_or_records, (list, tuple)) and not any(isinstance(r, dict) for r in path_or_records):
        return ", ".join(map(os.fspath, path_or_records)) or "no files"
    return "the given records"


def _turns(record):
    """(`"human"` | `"assistant"`, text) for every prompt and completion of a record."""
    if not isinstance(record, dict):
        return
    sides = [record, *(value for value in record.values() if isinstance(value, dict))]
    for side in sides:
        for turn in side.get("conversations") or side.get("messages") or []:
            if not isinstance(turn, dict):
                continue
            role, value = turn.get("from", turn.get("role")), _content(turn.get("value", turn.get("content")))
            if value is None:
                continue
            if role in _HUMAN_ROLES:
                yield "human", value
            elif role in _ASSISTANT_ROLES:
                yield "assistant", value
    for key, value in record.items():
        if key.endswith("_text") and isinstance(value, str):
            yield "human", value


def _content(value) -> str | None:
    """A turn's text: a string, or the text parts of a list of content parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [p.get("text") for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


__all__ = ["count_prompts", "infer_prompt"]
