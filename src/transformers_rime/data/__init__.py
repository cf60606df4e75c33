"""Training-data readers: RIME-Train / UME-R1 SFT files, the RIME-Train RL file and plain pair files as `datasets.Dataset`s.

Every reader returns the same columns (normalised `query`/`positive` items with absolute paths, their rewrites,
instructions and `source`), described in `transformers_rime.data.readers`. This package needs `datasets` (the
`train` extra) when a reader is called; `import transformers_rime` never imports it.
"""

from .readers import (
    clean_human_text,
    clean_rewrite,
    normalize_item,
    read_pairs,
    read_rime_rl,
    read_rime_sft,
    read_ume_r1_sft,
)


__all__ = [
    "clean_human_text",
    "clean_rewrite",
    "normalize_item",
    "read_pairs",
    "read_rime_rl",
    "read_rime_sft",
    "read_ume_r1_sft",
]
