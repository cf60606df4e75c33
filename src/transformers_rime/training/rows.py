"""Training rows, parsed once for both trainers: a query, its positive and its negatives, with rewrites and
instructions, each item checked and named by where it came from.

A row has `query` and `positive` (items as in `RimeEncoder.encode`: text, image path, PIL image, frame list or
dict), optionally `negatives` (or a single `negative`), the annotated rewrites `query_rewrite`, `positive_rewrite`,
`negative_rewrites` (or `negative_rewrite`), and the instructions `query_instruction` / `positive_instruction`
(negatives take the positive's). The readers of `transformers_rime.data` write such rows, with their `origin`
(`"/abs/data.jsonl:7"`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.rime.configuration_rime import ROLES
from ..models.rime.inputs_rime import RimeInput, parse_input


QUERY, DOCUMENT = ROLES


@dataclass
class TrainingItem:
    """One item of a training row: what to embed, its annotated rewrite, its instruction and where it came from."""

    item: RimeInput
    rewrite: str | None
    instruction: str | None
    role: str
    where: str


@dataclass
class TrainingRow:
    """A parsed training row: the query, its positive and the dataset negatives (documents, like the positive)."""

    query: TrainingItem
    positive: TrainingItem
    negatives: list[TrainingItem]

    def groups(self) -> list[tuple[str, TrainingItem]]:
        """`(group, item)` for every item, groups `"query"`, `"positive"` and `"negative"`, in row order."""
        return [("query", self.query), ("positive", self.positive), *(("negative", n) for n in self.negatives)]


def row_origin(row: dict) -> str | None:
    """The readers' `origin` of a row (`"/abs/data.jsonl:7"`), or `None`."""
    origin = row.get("origin")
    return origin if isinstance(origin, str) and origin else None


def parse_row(row: dict, where: str, index: int = 0, rewrites: bool = True) -> TrainingRow:
    """Parse one training row; a bad or missing item is an error naming `where` and the column.

    Items are named `"{where} ({column})"` when `where` is the row's `origin` (`"/abs/data.jsonl:7 (query)"`), else
    `"{where}, column {column!r}"` (`"batch row 3, column 'query'"`). A bad item keeps the error type of
    `parse_input` (`ValueError`, `TypeError`, `FileNotFoundError`, ...) with that name in place of `"input i"`.

    Args:
        row (`dict`): the row (other columns are ignored).
        where (`str`): how errors name the row.
        index (`int`, *optional*): the row's position, as `parse_input` names it before it is renamed.
        rewrites (`bool`, defaults to `True`): read the `*_rewrite(s)` columns (else every `rewrite` is `None`).

    ```python
    >>> row = parse_row({"query": "a red car", "positive": "a car", "negative": "a bus"}, "row 0")
    >>> row.query.item.text, row.positive.role, [n.where for n in row.negatives]
    ('a red car', 'document', ["row 0, column 'negatives[0]'"])

    ```
    """
    for column in ("query", "positive"):
        if row.get(column) is None:
            raise ValueError(f"{where}: missing `{column}`.")
    named_by_origin = where == row_origin(row)

    def item(column: str, value, rewrite, instruction, role: str) -> TrainingItem:
        item_where = f"{where} ({column})" if named_by_origin else f"{where}, column {column!r}"
        try:
            parsed = parse_input(drop_empty(value), index)
        except (TypeError, ValueError, OSError) as error:
            # parse_input names the item "input <index>"; name the row and column instead.
            message, prefix = str(error), f"input {index}"
            detail = message.removeprefix(prefix) if message.startswith(prefix) else f": {message}"
            raise _renamed(error, f"{item_where}{detail}") from error
        return TrainingItem(parsed, rewrite if rewrites else None, instruction, role, item_where)

    instruction = row.get("positive_instruction")
    query = item("query", row["query"], row.get("query_rewrite"), row.get("query_instruction"), QUERY)
    positive = item("positive", row["positive"], row.get("positive_rewrite"), instruction, DOCUMENT)
    negatives, negative_rewrites = row.get("negatives"), row.get("negative_rewrites")
    if negatives is None and row.get("negative") is not None:
        negatives, negative_rewrites = [row["negative"]], [row.get("negative_rewrite")]
    negatives = list(negatives or [])
    if not rewrites or negative_rewrites is None:
        negative_rewrites = [None] * len(negatives)
    if len(negative_rewrites) != len(negatives):
        raise ValueError(f"{where}: {len(negatives)} negatives but {len(negative_rewrites)} negative rewrites.")
    negatives = [
        item(f"negatives[{k}]", negative, rewrite, instruction, DOCUMENT)
        for k, (negative, rewrite) in enumerate(zip(negatives, negative_rewrites))
    ]
    return TrainingRow(query, positive, negatives)


def drop_empty(value):
    """Readers store items as `{"text", "images", "video"}` with `None` / `[]` for what is absent."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None and not (k == "images" and len(v) == 0)}
    return value


def _renamed(error: Exception, message: str) -> Exception:
    """`error`'s type with `message` (a `ValueError` when that type needs other arguments)."""
    try:
        return type(error)(message)
    except Exception:
        return ValueError(message)


__all__ = ["TrainingItem", "TrainingRow", "drop_empty", "parse_row", "row_origin"]
