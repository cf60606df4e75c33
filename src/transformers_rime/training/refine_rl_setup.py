"""Setting up a Refine-RL run before TRL takes over: the rollout dataset, the reward functions and a reference model
TRL can reload. No TRL import: these build what `RimeRefineRLTrainer` hands to `GRPOTrainer.__init__`."""

from __future__ import annotations

import functools
import json
import os
from typing import TYPE_CHECKING

from transformers.utils import logging

from ..models.rime.configuration_rime import ROLES
from ..rewards import REWARD_FUNCTIONS
from .candidates import CandidatePool
from .rows import TrainingRow, parse_row, row_origin


if TYPE_CHECKING:
    from .configuration_refine_rl import RimeRefineRLConfig


logger = logging.get_logger(__name__)

QUERY, _ = ROLES
ITEM_COLUMNS = ("query", "positive", "negatives", "negative", "query_instruction", "positive_instruction")


def parse_pair(row: dict, where: str, index: int = 0) -> TrainingRow:
    """One Refine-RL pair (rewrites are not read); errors name `where` and the row's origin, as
    `"train_dataset row 7 (/abs/data.jsonl:9), column 'positive': ..."`."""
    origin = row_origin(row)
    if origin is not None:
        where = f"{where} ({origin})"  # the readers' "/abs/data.jsonl:7": errors name the file and line
    return parse_row(row, where, index, rewrites=False)


def rollout_dataset(dataset, pool: CandidatePool, symmetric: bool, name: str):
    """Parse the pairs into `pool` and return TRL's dataset: one row per rollout prompt.

    Rows hold `pair_index` and `side` (plus the scalar columns, for reward functions); the items stay in the pool,
    so images are opened only when their batch is generated.
    """
    from datasets import Dataset

    if dataset is None:
        raise ValueError(f"{name} is required.")
    rows = dataset if isinstance(dataset, list) else [dataset[i] for i in range(len(dataset))]
    columns: dict[str, list] = {"pair_index": [], "side": []}
    extra = sorted({k for row in rows for k, v in row.items() if k not in ITEM_COLUMNS and _is_scalar(v)})
    extra = [k for k in extra if not k.endswith("_rewrite")]
    columns.update({k: [] for k in extra})
    for index, row in enumerate(rows):
        pair_index = pool.add(parse_pair(row, f"{name} row {index}", index))
        for side in ROLES if symmetric else (QUERY,):
            columns["pair_index"].append(pair_index)
            columns["side"].append(side)
            for k in extra:
                columns[k].append(row.get(k))
    return Dataset.from_dict(columns)


def reward_functions(args: RimeRefineRLConfig, processor, extra) -> list:
    """The reward functions named in `args.rewards`, configured from `args` and the processor, then `extra`."""
    options = {
        "format": {
            "rewrite_start": processor.rewrite_start,
            "rewrite_end": processor.rewrite_end,
            "gen_emb_token": processor.gen_emb_token,
        },
        "anchor_retrieval": {"temperature": args.reward_temperature},
        "length": {"target_length": args.target_rewrite_length},
    }
    functions = [_named(REWARD_FUNCTIONS[name], **options.get(name, {})) for name in args.rewards]
    extra = [] if extra is None else extra if isinstance(extra, list) else [extra]
    return functions + list(extra)


def make_reference_loadable(policy, args: RimeRefineRLConfig) -> None:
    """With `beta > 0` TRL rebuilds the reference from `config._name_or_path`, which is empty for a model built
    in memory (and names a RIME-layout folder, not a backbone, for one loaded from a RIME checkpoint). Point it
    at a backbone checkpoint of the initial weights, written to `output_dir/reference_model` when needed."""
    source = policy.config._name_or_path
    config_file = os.path.join(source, "config.json") if source else ""
    if source and os.path.isdir(source) and os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as f:
            if json.load(f).get("model_type") == policy.config.model_type:
                return  # a backbone checkpoint (the published layout): TRL loads it as is
    elif source and not os.path.exists(source):
        return  # a Hub id of a backbone
    from accelerate import PartialState

    folder = os.path.join(args.output_dir, "reference_model")
    state = PartialState()
    with state.main_process_first():
        if state.is_main_process:
            logger.info(f"beta > 0: saving the initial backbone to {folder} for TRL's reference model.")
            policy.save_pretrained(folder)
    policy.config._name_or_path = folder


def _named(function, **kwargs):
    """`functools.partial` that keeps the function's name (TRL logs each reward under its `__name__`)."""
    bound = functools.partial(function, **kwargs)
    functools.update_wrapper(bound, function)
    return bound


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


__all__ = ["ITEM_COLUMNS", "make_reference_loadable", "parse_pair", "reward_functions", "rollout_dataset"]
