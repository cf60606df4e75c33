"""Training-data readers: RIME-Train / UME-R1 SFT files, the RIME-Train RL file and plain pair files as `datasets.Dataset`s.

Every reader returns the same columns (normalised `query`/`positive` items with absolute paths, their rewrites,
instructions and `source`), described in `transformers_rime.data.readers`. This package needs `datasets` (the
`train` extra) when a reader is called; `import transformers_rime` never imports it. `infer_prompt` recovers the
generation prompt a model was trained with from such data (see `transformers_rime.data.prompts`).
"""

from .prompts import count_prompts, infer_prompt
from .readers import (
    clean_human_text,
    clean_rewrite,
    normalize_item,
    read_pairs,
    read_rime_rl,
    read_rime_sft,
)


__all__ = [
    "clean_human_text",
    "clean_rewrite",
    "count_prompts",
    "infer_prompt",
    "normalize_item",
    "read_pairs",
    "read_rime_rl",
    "read_rime_sft",
]
