"""The Refine-RL candidate pool: which items a generation batch's rollouts are scored against, each once.

Plain Python and torch (no TRL, no model): the trainer embeds the candidates this pool picks and hands the
embeddings back; everything else here (the pairs, deduplication by content, anchors per role, the target of each
rollout, pooling across processes) can be built and tested on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers.utils import logging

from ..fingerprints import item_fingerprint
from ..models.rime.configuration_rime import ROLES
from .rows import TrainingItem, TrainingRow


logger = logging.get_logger(__name__)

QUERY, DOCUMENT = ROLES
Key = tuple[str, str]  # (role, content fingerprint)
# Concatenates, in process order, every process's list of objects and its rows of a tensor (the same count each).
Gather = Callable[[list, torch.Tensor], tuple[list, torch.Tensor]]


def single_process(objects: list, tensor: torch.Tensor) -> tuple[list, torch.Tensor]:
    """The `Gather` of one process: its own objects and rows."""
    return list(objects), tensor


def candidate_positions(row_targets: Sequence, pool: Sequence) -> list[int]:
    """Index of each row's target key in the candidate pool (keys are compared with `==`).

    ```python
    >>> candidate_positions([("p", 1), ("p", 0)], [("p", 0), ("n", 0), ("p", 1)])
    [2, 0]

    ```
    """
    where = {key: index for index, key in reversed(list(enumerate(pool)))}
    missing = [key for key in row_targets if key not in where]
    if missing:
        raise KeyError(f"Targets missing from the candidate pool: {missing[:3]}.")
    return [where[key] for key in row_targets]


@dataclass(frozen=True)
class Candidate:
    """One distinct candidate of a batch: its key, and the pair and slot it was first met in."""

    key: Key
    pair_index: int
    slot: str
    item: TrainingItem

    @property
    def where(self) -> str:
        return f"pair {self.pair_index} ({self.slot})"


class CandidatePool:
    r"""The training pairs of Refine-RL and the candidates each generation batch's rollouts are scored against.

    A rollout is a row `{"pair_index", "side"}`: the pair's query (`side="query"`) or its positive (`"document"`)
    rewritten. Its target is the other side of its pair; its candidates are the targets of every rollout of the same
    side in the batch (of every process) and, for query rollouts, the pairs' dataset negatives. Candidates are
    compared by content (`(role, item_fingerprint)`), so a candidate met twice (two processes, or one row's negative
    and another's positive) is kept once and never competes with itself.

    A side of a pair is named by its slot: `"query"`, `"positive"` or `"negative k"`.

    Args:
        pairs (`list[TrainingRow]`, *optional*): the parsed pairs; more join with `add`.
        instruction_for (`Callable[[str, str | None], str | None]`, *optional*): the instruction an item of a role
            is embedded with (`RimeProcessor.instruction_for`); it is part of the content compared.
        gather ([`Gather`], *optional*): concatenates every process's objects and tensor rows; defaults to
            `single_process`.

    Example:

    ```python
    >>> from transformers_rime.training.rows import parse_row
    >>> pool = CandidatePool([parse_row({"query": f"q{i}", "positive": "same doc"}, f"row {i}") for i in range(2)])
    >>> batch = [{"pair_index": 0, "side": "query"}, {"pair_index": 1, "side": "query"}]
    >>> [c.where for c in pool.batch_candidates(batch)]  # both targets have the same content
    ['pair 0 (positive)']

    ```
    """

    def __init__(
        self,
        pairs: Sequence[TrainingRow] = (),
        instruction_for: Callable[[str, str | None], str | None] | None = None,
        gather: Gather = single_process,
    ):
        self.pairs: list[TrainingRow] = list(pairs)
        self.instruction_for = instruction_for if instruction_for is not None else _given_instruction
        self.gather = gather
        self._keys: dict[tuple[int, str], Key] = {}
        self._warned_small_pool = False

    def add(self, pair: TrainingRow) -> int:
        """Add a pair; return its index."""
        self.pairs.append(pair)
        return len(self.pairs) - 1

    # ------------------------------------------------------------------ one pair

    def candidate(self, pair_index: int, slot: str) -> TrainingItem:
        """One side of a pair (`slot`: `"query"`, `"positive"` or `"negative k"`)."""
        pair = self.pairs[pair_index]
        if slot == "query":
            return pair.query
        if slot == "positive":
            return pair.positive
        return pair.negatives[int(slot.split()[1])]

    def rollout_item(self, row: dict) -> TrainingItem:
        """The item a rollout rewrites: its pair's query or, for a document rollout, its positive."""
        return self.candidate(row["pair_index"], "query" if row["side"] == QUERY else "positive")

    def key(self, pair_index: int, slot: str) -> Key:
        """`(role, content fingerprint)` of one side of a pair, computed once."""
        cached = self._keys.get((pair_index, slot))
        if cached is None:
            item = self.candidate(pair_index, slot)
            cached = (item.role, item_fingerprint(item.item, self.instruction_for(item.role, item.instruction)))
            self._keys[(pair_index, slot)] = cached
        return cached

    def target_key(self, row: dict) -> Key:
        """The key of what a rollout should retrieve: the other side of its pair."""
        return self.key(row["pair_index"], "positive" if row["side"] == QUERY else "query")

    # ------------------------------------------------------------------ one batch

    def batch_candidates(self, rows: Sequence[dict], use_negatives: bool = True) -> list[Candidate]:
        """The distinct candidates of this process's rollouts, in order of first occurrence.

        A query rollout brings its positive and (with `use_negatives`) its pair's negatives; a document rollout its
        query.
        """
        candidates: dict[Key, Candidate] = {}
        for row in rows:
            pair_index = row["pair_index"]
            slots = ["positive"] if row["side"] == QUERY else ["query"]
            if row["side"] == QUERY and use_negatives:
                slots += [f"negative {k}" for k in range(len(self.pairs[pair_index].negatives))]
            for slot in slots:
                key = self.key(pair_index, slot)
                if key not in candidates:
                    candidates[key] = Candidate(key, pair_index, slot, self.candidate(pair_index, slot))
        return list(candidates.values())

    def merge(
        self, keys: Sequence[Key], anchors: torch.Tensor, across_processes: bool = True
    ) -> tuple[list[Key], torch.Tensor]:
        """Pool this process's candidates (`keys`, their anchors `(C, D)`) with every process's (`across_processes`),
        keeping the first row of each key: `(keys, (C', D))`."""
        if not across_processes:
            return list(keys), anchors
        keys, anchors = self.gather(list(keys), anchors)
        keys = [tuple(key) for key in keys]
        first: dict[Key, int] = {}
        for index, key in enumerate(keys):
            first.setdefault(key, index)
        keep = sorted(first.values())
        return [keys[i] for i in keep], anchors[keep]

    def score(
        self, rows: Sequence[dict], gen: torch.Tensor, keys: Sequence[Key], anchors: torch.Tensor
    ) -> tuple[dict[str, list], float]:
        """The reward columns of the rollouts (`gen`, their embeddings `(N, D)`) against the pooled candidates.

        Returns `({"anchor_embeddings": [(C_role, D) per rollout], "positive_index": [int per rollout]}, top1)`:
        each rollout gets the anchors of its target's role and its target's row in them; `top1` is the share of
        rollouts whose target scores highest.
        """
        pools = {}
        for role in ROLES:
            members = [i for i, key in enumerate(keys) if key[0] == role]
            pools[role] = ([keys[i] for i in members], anchors[members])
        if any(len(pool_keys) == 1 for pool_keys, _ in pools.values() if pool_keys) and not self._warned_small_pool:
            self._warned_small_pool = True
            logger.warning(
                "A candidate pool holds a single candidate, so retrieval rewards are constant and carry no signal: "
                "raise generation_batch_size (or per_device_train_batch_size) so a generation batch holds several "
                "prompts, or add `negatives` to the dataset."
            )
        targets = [self.target_key(row) for row in rows]
        # one lookup table per pool, not one per rollout
        positions = {
            role: iter(candidate_positions([t for t in targets if t[0] == role], pool_keys))
            for role, (pool_keys, _) in pools.items()
            if any(t[0] == role for t in targets)
        }
        columns = {"anchor_embeddings": [], "positive_index": []}
        top1 = []
        for (role, _), embedding in zip(targets, gen):
            pool = pools[role][1]
            position = next(positions[role])
            columns["anchor_embeddings"].append(pool)
            columns["positive_index"].append(position)
            top1.append(float(int((pool @ embedding).argmax()) == position))
        return columns, sum(top1) / len(top1)

    def partners(self, rows: Sequence[dict], gen: torch.Tensor) -> dict[str, list]:
        """For UME-R1's reward: per rollout, every other-side rollout of the batch (all processes) and which of them
        are of its own pair: `{"partner_embeddings": [(M, D)], "partner_is_positive": [bool (M,)]}`."""
        local = [(row["pair_index"], row["side"] == QUERY) for row in rows]
        everyone, gen_all = self.gather(local, gen)
        pairs_all = torch.tensor([pair for pair, _ in everyone], device=gen.device)
        is_query_all = torch.tensor([is_query for _, is_query in everyone], dtype=torch.bool, device=gen.device)
        by_side = {side: gen_all[is_query_all == (side == QUERY)] for side in ROLES}
        pair_by_side = {side: pairs_all[is_query_all == (side == QUERY)] for side in ROLES}
        columns = {"partner_embeddings": [], "partner_is_positive": []}
        for row in rows:
            partner = DOCUMENT if row["side"] == QUERY else QUERY
            columns["partner_embeddings"].append(by_side[partner])
            columns["partner_is_positive"].append(pair_by_side[partner] == row["pair_index"])
        return columns


def _given_instruction(role: str, instruction: str | None) -> str | None:
    return instruction


__all__ = ["Candidate", "CandidatePool", "Gather", "candidate_positions", "single_process"]
