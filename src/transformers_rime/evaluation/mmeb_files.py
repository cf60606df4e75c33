"""What the MMEB-V2 readers share: annotation rows from parquet / json / jsonl files, frame folders, task building."""

from __future__ import annotations

import json
from pathlib import Path

from ..inputs import frame_files, sample_frames
from .mmeb import MMEB_V2_BY_NAME
from .tasks import RetrievalTask


_ROW_SUFFIXES = (".parquet", ".jsonl", ".json")


def read_rows(path: Path, columns: list[str] | None = None, split: str | None = None) -> list[dict]:
    """The rows of a `.jsonl` / `.json` file, or of every such file and `.parquet` file under a folder (a local
    snapshot of a Hub dataset), in path order.

    `split` keeps, when some files belong to it (`test-00000-of-00001.parquet`, `test.jsonl`, `test/...`), only
    those; `columns` limits what is read from parquet files. A `.json` file holds a list of rows. Invalid JSON is a
    `ValueError` naming the file and line, text that is not UTF-8 one naming the file and byte offset.
    """
    from ..data.readers import load_json_records

    rows = []
    for file in data_files(path, split):
        if file.suffix in (".jsonl", ".json"):
            layout = "lines" if file.suffix == ".jsonl" else "list"
            rows.extend(row for _, row in load_json_records(file, layout))
        else:
            rows.extend(rows_of(file, columns))
    return rows


def data_files(path: Path, split: str | None = None) -> list[Path]:
    """The files `read_rows` reads from `path`, in order; `FileNotFoundError` when there is none."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in _ROW_SUFFIXES and not p.name.startswith("."))
        if split is not None:
            files = [p for p in files if _in_split(p.relative_to(path), split)] or files
    else:
        files = []
    if not files:
        raise FileNotFoundError(f"No parquet, json or jsonl file under {path}.")
    return files


def _in_split(relative: Path, split: str) -> bool:
    return split in relative.parts[:-1] or relative.name.split("-")[0].split(".")[0] == split


def rows_of(file: Path, columns: list[str] | None = None) -> list[dict]:
    """The rows of one parquet, jsonl or json file."""
    if file.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as error:
            raise ImportError(
                "Reading MMEB-V2 parquet files needs pyarrow: pip install 'transformers_rime[eval]'."
            ) from error
        rows = []
        for batch in pq.ParquetFile(file).iter_batches(batch_size=256, columns=columns):
            rows.extend(batch.to_pylist())
        return rows
    if file.suffix == ".jsonl":
        lines = file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    rows = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(rows, list):
        raise ValueError(f"{file}: expected a JSON list of rows, got {type(rows).__name__}.")
    return rows


def frame_paths(frame_dir: Path, num_frames: int) -> list[str]:
    """`num_frames` image files of `frame_dir` picked by the library's frame sampler (`inputs.sample_frames`), or
    all of them when there are fewer; `[]` when the folder is missing or holds no image."""
    if not Path(frame_dir).is_dir():
        return []
    return sample_frames(frame_files(frame_dir), num_frames)


def required_frames(frame_dir: Path, num_frames: int, where: str) -> list[str]:
    """`frame_paths`, or a `FileNotFoundError` naming the row (`where`) when the folder has no frame."""
    frames = frame_paths(frame_dir, num_frames)
    if not frames:
        raise FileNotFoundError(f"{where}: no frames in {frame_dir}.")
    return frames


class Corpus:
    """Candidates collected while reading, each distinct key once; `pool` turns a row's candidates into indices."""

    def __init__(self):
        self.items: list[dict] = []
        self._index: dict = {}

    def __contains__(self, key) -> bool:
        return key in self._index

    def add(self, key, item: dict | None = None) -> int:
        """The index of `key`'s candidate, adding `item` under it when the key is new."""
        if key not in self._index:
            self._index[key] = len(self.items)
            self.items.append(item)
        return self._index[key]

    def pool(self, keyed_items) -> list[int]:
        """Indices of `(key, item)` pairs, first occurrence order, without repeats."""
        return list(dict.fromkeys(self.add(key, item) for key, item in keyed_items))


def build_task(name, queries, corpus, relevance, pools, query_instruction, corpus_instruction) -> RetrievalTask:
    """A `RetrievalTask` with the manifest's metric and group; an instruction left `None` falls back to the
    manifest's (VisDoc), or else to the processor's default."""
    spec = MMEB_V2_BY_NAME.get(name)
    if not queries:
        raise ValueError(f"{name}: no queries were read.")
    if query_instruction is None and spec:
        query_instruction = spec.query_instruction
    if corpus_instruction is None and spec:
        corpus_instruction = spec.corpus_instruction
    return RetrievalTask(
        name=name,
        queries=queries,
        corpus=corpus,
        relevance=relevance,
        pools=pools,
        metric=spec.metric if spec else "hit@1",
        query_instruction=query_instruction,
        corpus_instruction=corpus_instruction,
        group=spec.group if spec else None,
        metadata={"source": "MMEB-V2"},
    )


def join(*parts: str | None) -> str:
    """The non-empty parts, stripped, joined by spaces."""
    return " ".join(part.strip() for part in parts if part and part.strip())
