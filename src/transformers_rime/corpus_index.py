"""Embed a corpus of any size into a resumable, sharded index on disk, then search it with FAISS.

`index_corpus` reads a JSON-lines corpus lazily, one shard at a time (memory is bounded by the shard size), and
writes every shard whole (a temporary file, then renamed). The folder it writes:

```
IDX/
  manifest.json             settings (model fingerprint, mode, role, instruction, rewrite budget, shard size,
                            dimension), the finished shards, and once complete the FAISS index's settings and recall
  shards/shard-000000.npy   (n, D) float32 embeddings of corpus items 0 .. shard_size - 1
  shards/shard-000000.json  their ids, byte offsets and lines, a hash of the shard's corpus lines, the .npy's sha256
  index.faiss               the FAISS index over every shard, in corpus order (written last)
  items.json                every item's id and byte offset in the corpus, in the index's order
```

A killed run resumes where it stopped: a shard is finished when its `.json` is present and agrees with the
settings, with the corpus lines it was made from, and with its `.npy`; every other shard is (re-)embedded, so nothing
is lost or duplicated. A shard whose corpus lines changed is embedded again; a changed model or changed settings
are refused (`IndexSettingsError`) unless `overwrite=True`.

Under `torchrun` / `accelerate launch` the process group is used (or started from the environment: gloo on CPU,
nccl on CUDA): rank 0 reads the corpus and decides which shards are missing, the processes embed them in turn
(rank r takes the r-th, (r + W)-th, ... missing shard), and rank 0 builds the FAISS index once all are written.
Shards are named by their place in the corpus, not by rank, so a run may resume with another number of processes;
on several machines `output_dir` must be a shared folder.

Corpus lines are JSON objects: the item dicts `RimeEncoder.encode` takes (`text`, `image`, `images`, `video`)
plus a unique `id` (a string or an integer); relative media paths resolve against the corpus file's folder:

```json
{"id": "doc-1", "text": "A red car parked by the sea."}
{"id": "doc-2", "image": "images/cat.jpg", "text": "a cat"}
```

Every line is parsed, its id checked and its media files opened (headers only) before the first shard is embedded;
each shard's items are then decoded and measured in full (`RimeProcessor.prepare_item`, as `RimeEncoder.prepare`
does) before any model work for that shard. Errors name the line as `corpus.jsonl:LINE`.

Example (the tiny random model of the tests):

```python
>>> import json, tempfile
>>> from pathlib import Path
>>> from transformers_rime import RimeEncoder
>>> from transformers_rime.testing import tiny_rime_model, tiny_rime_processor
>>> processor = tiny_rime_processor()
>>> encoder = RimeEncoder(tiny_rime_model(processor=processor), processor)
>>> folder = Path(tempfile.mkdtemp())
>>> lines = [{"id": f"d{i}", "text": text} for i, text in enumerate(["a red car", "a black cat", "a blue bike"])]
>>> _ = (folder / "corpus.jsonl").write_text("\\n".join(json.dumps(line) for line in lines))
>>> manifest = index_corpus(encoder, folder / "corpus.jsonl", folder / "idx", shard_size=2,
...                         show_progress_bar=False, verbose=False)
>>> manifest["corpus"]["items"], manifest["finished_shards"]
(3, [0, 1])
>>> index = CorpusIndex.load(folder / "idx")
>>> hits = index.search(encoder.encode(["a red car"], role="query"), k=2)
>>> len(hits[0]), type(hits[0][0].corpus_id).__name__
(2, 'str')

```
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .files import write_atomically, write_bytes, write_json
from .fingerprints import encoder_fingerprint
from .inputs import DICT_KEYS, names_image_file, parse_input
from .models.rime.configuration_rime import MODES, ROLES
from .models.rime.processing_rime import check_choice


FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
FAISS_FILE = "index.faiss"
ITEMS_FILE = "items.json"
INDEX_TYPES = ("flat", "hnsw", "ivf")
DEFAULT_SHARD_SIZE = 1024
RECALL_K = 10
RECALL_QUERIES = 1000
_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FloatingPointError)


class IndexSettingsError(ValueError):
    """An existing index was made with another model or other settings (pass `overwrite=True` to rebuild it)."""


@dataclass(frozen=True)
class ShardPlan:
    """One shard of the corpus: where its lines start in the file and a hash of them."""

    index: int
    offset: int
    """Byte offset of the shard's first line in the corpus file."""
    first_line: int
    last_line: int
    count: int
    digest: str
    """sha256 of the shard's lines (as written), so that a shard made from other lines is never reused."""


@dataclass(frozen=True)
class CorpusHit:
    """One search result: the corpus line's `id`, the cosine similarity and the item's position in the index."""

    corpus_id: str | int
    score: float
    position: int


def index_settings(
    encoder,
    mode: str = "disc",
    role: str = "document",
    instruction: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_new_tokens: int | None = None,
) -> dict:
    """What an index's embeddings depend on: two runs may share shards only when these are equal."""
    check_choice("mode", mode, MODES)
    check_choice("role", role, ROLES)
    return {
        "format": FORMAT_VERSION,
        "model_fingerprint": encoder_fingerprint(encoder),
        "mode": mode,
        "role": role,
        "instruction": encoder.processor.instruction_for(role, instruction),
        "max_new_tokens": encoder.rewrite_budget(max_new_tokens) if mode == "gen" else None,
        "shard_size": shard_size,
        "dim": encoder.embedding_dim,
    }


# ---------------------------------------------------------------------------------------------- reading lines


def parse_corpus_line(text: str, where: str, folder: str | os.PathLike, require_id: bool = True):
    """`(id, item)` of one JSON line: `item` is the line's object without `id` (or a JSON string), with relative
    media paths resolved against `folder`. Errors name `where` (`"corpus.jsonl:7"`). Without `require_id`, `id` is
    `None` when the line has none (query files)."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not JSON ({error.msg} at column {error.colno}).") from None
    if isinstance(row, str) and not require_id:
        return None, (_resolve_media({"image": row}, folder)["image"] if names_image_file(row) else row)
    if not isinstance(row, dict):
        raise ValueError(
            f"{where}: expected a JSON object with 'id' and any of {', '.join(DICT_KEYS)}; got {type(row).__name__}."
        )
    row = dict(row)
    if "id" not in row and require_id:
        raise ValueError(f"{where}: missing 'id'.")
    item_id = row.pop("id", None)
    if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, (str, int))):
        raise ValueError(f"{where}: 'id' must be a string or an integer, got {item_id!r}.")
    unknown = sorted(set(row) - set(DICT_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; a line holds 'id' and any of {', '.join(DICT_KEYS)}.")
    if not any(row.get(key) is not None for key in DICT_KEYS):
        raise ValueError(f"{where}: no {', '.join(repr(key) for key in DICT_KEYS)}.")
    return item_id, _resolve_media(row, folder)


def _resolve_media(item: dict, folder) -> dict:
    def resolve(path):
        return os.path.join(os.fspath(folder), path) if isinstance(path, str) and not os.path.isabs(path) else path

    item = dict(item)
    if isinstance(item.get("image"), str):
        item["image"] = resolve(item["image"])
    for key in ("images", "video"):
        value = item.get(key)
        if isinstance(value, list):
            item[key] = [resolve(path) for path in value]
        elif isinstance(value, str):
            item[key] = resolve(value)
    return item


def _lines(path: Path, offset: int = 0, first_line: int = 1):
    """`(line number, byte offset, text)` of the non-blank lines of `path` from `offset`, read lazily."""
    with open(path, "rb") as f:
        f.seek(offset)
        for number, raw in enumerate(f, first_line):
            text = raw.rstrip(b"\r\n")
            if number == 1 and text.startswith(b"\xef\xbb\xbf"):
                text = text[3:]
            if text.strip():
                try:
                    yield number, offset, text.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise ValueError(f"{path}:{number}: not UTF-8 ({error.reason} at byte {error.start}).") from None
            offset += len(raw)


def scan_corpus(path: str | os.PathLike, shard_size: int = DEFAULT_SHARD_SIZE) -> list[ShardPlan]:
    """Read every line of a corpus once, lazily: each must be a JSON object with a unique `id` and an item; returns
    the shards. Media are not opened here (see `check_media`). Errors name `path:LINE`."""
    path = Path(path)
    folder = path.parent
    seen: dict[str, int] = {}
    shards: list[ShardPlan] = []
    start, last, texts = None, 0, []
    for number, offset, text in _lines(path):
        where = f"{path}:{number}"
        item_id, _ = parse_corpus_line(text, where, folder)
        key = str(item_id)
        if key in seen:
            raise ValueError(f"{where}: duplicate id {item_id!r} (first on line {seen[key]}); ids must be unique.")
        seen[key] = number
        if not texts:
            start = (offset, number)
        texts.append(text)
        last = number
        if len(texts) == shard_size:
            shards.append(ShardPlan(len(shards), start[0], start[1], last, len(texts), _digest(texts)))
            texts = []
    if texts:
        shards.append(ShardPlan(len(shards), start[0], start[1], last, len(texts), _digest(texts)))
    if not shards:
        raise ValueError(f"{path}: the corpus holds no items.")
    return shards


def _digest(texts) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\n")
    return digest.hexdigest()


def shard_lines(path: Path, shard: ShardPlan):
    """`(line number, byte offset, text)` of a shard's lines, read from its offset."""
    for position, line in enumerate(_lines(path, shard.offset, shard.first_line)):
        if position == shard.count:
            return
        yield line


def parse_item(item, where: str):
    """`parse_input` with errors naming `where` (`"corpus.jsonl:7"`): opens media headers, decodes nothing."""
    placeholder = "item 0"
    try:
        return parse_input(item, 0, "item")
    except _USER_ERRORS as error:
        message = str(error)
        if message.startswith(placeholder):
            raise type(error)(where + message[len(placeholder) :]) from None
        raise


def check_media(path: Path, shards: list[ShardPlan]) -> None:
    """Parse the items of `shards` (their media files opened and checked, headers only); errors name `path:LINE`."""
    for shard in shards:
        for number, _, text in shard_lines(path, shard):
            where = f"{path}:{number}"
            parse_item(parse_corpus_line(text, where, path.parent)[1], where)


def prepare_items(encoder, items: list, wheres: list[str], mode: str, role: str, instruction=None, max_length=None):
    """What `RimeEncoder.prepare` does (parse, decode media, render and bound the prompt, no model work), with each
    item named by its `where` (`"corpus.jsonl:7"`) in errors."""
    check_choice("mode", mode, MODES)
    limit = max_length if max_length is not None else encoder.max_length
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"max_length must be a positive integer, got {limit!r}.")
    instruction = encoder.processor.instruction_for(role, instruction)
    return [
        encoder.processor.prepare_item(parse_item(item, where), mode, instruction, where, limit)
        for item, where in zip(items, wheres)
    ]


def embed_prepared(encoder, prepared, wheres, mode, role, batch_size=8, max_new_tokens=None, show_progress_bar=False):
    """`(embeddings (N, D) float32 numpy, unfinished rewrites or None)` of prepared items; a non-finite embedding
    raises a `FloatingPointError` naming its `where`."""
    encoder._check_call(batch_size, mode, max_new_tokens, {})
    try:
        embeddings, outputs = encoder._embed(prepared, mode, batch_size, show_progress_bar, role, max_new_tokens, {})
    except FloatingPointError as error:
        found = re.search(r"input\(s\) \[([\d, ]+)\]", str(error))
        if not found:
            raise
        named = ", ".join(wheres[int(i)] for i in found.group(1).split(","))
        raise FloatingPointError(f"{named}: {str(error)[found.end() + 1 :].strip()}") from None
    unfinished = sum(not bool(out.finished[row]) for out, row in outputs) if mode == "gen" else None
    return embeddings.float().cpu().numpy().astype(np.float32), unfinished


def embed_lines(
    encoder,
    items: list,
    wheres: list[str],
    mode: str = "disc",
    role: str = "query",
    instruction: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    show_progress_bar: bool = False,
):
    """`(embeddings, unfinished rewrites or None)` of items named by their `where`s: every item is checked
    (`prepare_items`) before any model work."""
    encoder._check_call(batch_size, mode, max_new_tokens, {})
    prepared = prepare_items(encoder, items, wheres, mode, role, instruction, max_length)
    return embed_prepared(encoder, prepared, wheres, mode, role, batch_size, max_new_tokens, show_progress_bar)


def read_queries(path: str | os.PathLike) -> list[tuple[str, object, object, object]]:
    """`(where, id or None, item, what to print)` for each query of a file: `.jsonl` lines are items (a JSON string
    or an item dict, with an optional `id`; relative media paths resolve against the file's folder), other files
    hold one text (or image path) per line, as `rime search --queries` always read them."""
    path = Path(path)
    queries = []
    for number, _, text in _lines(path):
        where = f"{path}:{number}"
        if path.suffix.lower() == ".jsonl":
            query_id, item = parse_corpus_line(text, where, path.parent, require_id=False)
            shown = json.loads(text)
            if isinstance(shown, dict):
                shown.pop("id", None)
            queries.append((where, query_id, item, shown))
        else:
            queries.append((where, None, text.strip(), text.strip()))
    return queries


# ---------------------------------------------------------------------------------------------- the index folder


def _shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def _shard_files(folder: Path, index: int) -> tuple[Path, Path]:
    base = folder / SHARDS / _shard_name(index)
    return base.with_suffix(".npy"), base.with_suffix(".json")


def _present_shards(folder: Path, suffixes: str = "json") -> list[int]:
    """The shards whose `.json` (finished ones; `suffixes="json|npy"`: any file) is in `folder`."""
    names = os.listdir(folder / SHARDS) if (folder / SHARDS).is_dir() else []
    found = (re.fullmatch(rf"shard-(\d+)\.(?:{suffixes})", name) for name in names)
    return sorted({int(match.group(1)) for match in found if match})


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of an index folder, or `None` when there is none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the manifest ({error}).") from None


def _load_shard(folder: Path, shard: ShardPlan, settings: dict, load: bool = False):
    """`(sidecar, embeddings or None)` of a finished shard that matches `settings` and `shard`, else `None`."""
    npy, sidecar = _shard_files(folder, shard.index)
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        data = npy.read_bytes()
    except (OSError, json.JSONDecodeError):
        return None
    if (
        meta.get("settings") != settings
        or meta.get("digest") != shard.digest
        or meta.get("count") != shard.count
        or meta.get("embeddings_sha256") != hashlib.sha256(data).hexdigest()
    ):
        return None
    return meta, (np.load(io.BytesIO(data)) if load else None)


def _settings_difference(old: dict, new: dict) -> str:
    names = {"model_fingerprint": "model fingerprint", "max_new_tokens": "rewrite budget (max_new_tokens)"}
    return "; ".join(
        f"{names.get(key, key)} {old.get(key)!r} there, {value!r} now"
        for key, value in new.items()
        if old.get(key) != value
    )


def _clear(folder: Path) -> None:
    """Remove an index's own files from `folder` (nothing else)."""
    shutil.rmtree(folder / SHARDS, ignore_errors=True)
    for name in (MANIFEST, FAISS_FILE, ITEMS_FILE):
        (folder / name).unlink(missing_ok=True)


def _remove_temporaries(folder: Path) -> None:
    """Temporary files a killed run left behind (see `files.write_atomically`)."""
    for where in (folder, folder / SHARDS):
        if where.is_dir():
            for entry in os.scandir(where):
                if entry.name.startswith(".") and ".tmp" in entry.name and entry.is_file():
                    Path(entry.path).unlink(missing_ok=True)


@dataclass
class _Plan:
    shards: list[ShardPlan]
    pending: list[ShardPlan]
    up_to_date: dict | None = None


def check_index_folder(folder: str | os.PathLike, settings: dict, overwrite: bool = False) -> bool:
    """Whether the index in `folder` is to be replaced (`overwrite`, or settings changed before any shard was
    finished); `False` to resume it (or when there is none). Raises an `IndexSettingsError` when `folder` is a
    non-empty folder that is not an index, or holds shards made with other settings and `overwrite` is off. Only
    the keys of `settings` are compared, so the CLI checks mode, role and shard size before it loads the model."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        if folder.is_dir() and any(folder.iterdir()):
            raise IndexSettingsError(
                f"{folder} is not empty and holds no {MANIFEST}: not an index; choose another folder."
            )
        return False
    old = manifest.get("settings") or {}
    if any(old.get(key) != value for key, value in settings.items()):
        if overwrite or not _present_shards(folder):
            return True
        raise IndexSettingsError(
            f"{folder} holds an index made with other settings ({_settings_difference(old, settings)}); its "
            "embeddings would not mix with these. Pass --overwrite (overwrite=True) to rebuild it, or choose another "
            "folder."
        )
    return overwrite


def _plan(corpus: Path, folder: Path, settings: dict, faiss_settings: dict, overwrite: bool, say) -> _Plan:
    """Rank 0's part before any embedding: read the corpus, compare with what `folder` holds, check the media of the
    shards to embed, then (only once everything checked) clear or tidy the folder and write the manifest."""
    shards = scan_corpus(corpus, settings["shard_size"])
    replace = check_index_folder(folder, settings, overwrite)
    manifest = read_manifest(folder)
    finished = [] if replace else [s for s in shards if _load_shard(folder, s, settings) is not None]
    done = {s.index for s in finished}
    pending = [s for s in shards if s.index not in done]
    if (
        not replace
        and not pending
        and manifest is not None
        and manifest.get("complete")
        and manifest.get("corpus", {}).get("path") == str(corpus)
        and manifest.get("finished_shards") == [s.index for s in shards]
        and (manifest.get("faiss") or {}).get("requested") == faiss_settings
        and (folder / FAISS_FILE).is_file()
        and (folder / ITEMS_FILE).is_file()
    ):
        return _Plan(shards, [], up_to_date=manifest)
    items = sum(s.count for s in shards)
    if faiss_settings["type"] == "ivf" and (faiss_settings["nlist"] or 0) > items:
        raise ValueError(f"nlist={faiss_settings['nlist']} is more than the {items} items of {corpus}.")
    check_media(corpus, pending)  # before anything in the folder changes
    if replace:
        say(f"replacing the index in {folder}")
        _clear(folder)
    else:
        _remove_temporaries(folder)
        for index in (
            set(_present_shards(folder, "json|npy")) - done
        ):  # stale: other lines, corrupt, or past the corpus's end
            for path in _shard_files(folder, index):
                path.unlink(missing_ok=True)
        if finished and pending:
            say(f"resuming: {len(finished)} of {len(shards)} shards already embedded")
        elif finished:
            say(f"all {len(shards)} shards already embedded; building the FAISS index again")
    (folder / SHARDS).mkdir(parents=True, exist_ok=True)
    _write_manifest(folder, settings, corpus, shards, sorted(done), complete=False)
    return _Plan(shards, pending)


def _write_manifest(folder: Path, settings, corpus: Path, shards, finished, complete: bool, **extra) -> dict:
    manifest = {
        "format": FORMAT_VERSION,
        "settings": settings,
        "model_fingerprint": settings["model_fingerprint"],
        "corpus": {"path": str(corpus), "items": sum(s.count for s in shards), "shards": len(shards)},
        "finished_shards": finished,
        "complete": complete,
        **extra,
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def _write_shard(folder: Path, shard: ShardPlan, settings: dict, ids, offsets, embeddings, unfinished, process):
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(embeddings, dtype=np.float32))
    data = buffer.getvalue()
    npy, sidecar = _shard_files(folder, shard.index)
    write_bytes(npy, data)
    # the .json is written last: a shard is finished once it is there and names the .npy's checksum
    write_json(
        sidecar,
        {
            "settings": settings,
            "shard": shard.index,
            "count": shard.count,
            "lines": [shard.first_line, shard.last_line],
            "digest": shard.digest,
            "ids": ids,
            "offsets": offsets,
            "unfinished_rewrites": unfinished,
            "written_by": {"rank": process[0], "processes": process[1]},
            "embeddings_sha256": hashlib.sha256(data).hexdigest(),
        },
    )


# ---------------------------------------------------------------------------------------------- FAISS


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            'Building or searching a corpus index needs faiss: pip install "transformers_rime[eval]" (faiss-cpu).'
        ) from error
    return faiss


def faiss_settings(
    index_type: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_search: int = 128,
    ef_construction: int = 200,
) -> dict:
    """The settings of the FAISS index (what was asked; `nlist` / `nprobe` are resolved against the corpus size)."""
    check_choice("index_type", index_type, INDEX_TYPES)
    if index_type == "flat":
        return {"type": "flat"}
    if index_type == "hnsw":
        return {"type": "hnsw", "hnsw_m": hnsw_m, "ef_search": ef_search, "ef_construction": ef_construction}
    return {"type": "ivf", "nlist": nlist, "nprobe": nprobe}


def build_faiss_index(embeddings: np.ndarray, settings: dict):
    """`(index, resolved settings)`: exact `IndexFlatIP`, `IndexHNSWFlat` or `IndexIVFFlat` (inner product) over
    `embeddings`. IVF's `nlist` defaults to `4 sqrt(N)`, at most `N / 39` (FAISS's training rule); `nprobe` to
    `min(nlist, max(1, nlist // 8))`."""
    faiss = _faiss()
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    count, dim = embeddings.shape
    settings = dict(settings)
    if settings["type"] == "flat":
        index = faiss.IndexFlatIP(dim)
    elif settings["type"] == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings["ef_construction"]
        index.hnsw.efSearch = settings["ef_search"]
    else:
        nlist = settings["nlist"] or max(1, min(int(4 * math.sqrt(count)), count // 39))
        if nlist > count:
            raise ValueError(f"nlist={nlist} is more than the {count} items of the corpus.")
        settings["nlist"] = nlist
        settings["nprobe"] = min(nlist, settings["nprobe"] or max(1, nlist // 8))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(embeddings)
        index.nprobe = settings["nprobe"]
    index.add(embeddings)
    return index, settings


def _apply_search_settings(index, settings: dict) -> None:
    if settings["type"] == "hnsw":
        index.hnsw.efSearch = settings["ef_search"]
    elif settings["type"] == "ivf":
        index.nprobe = settings["nprobe"]


def recall_at_k(index, embeddings: np.ndarray, k: int = RECALL_K, queries: int = RECALL_QUERIES, seed: int = 0):
    """`(recall, number of queries)`: the mean share of the exact top-`k` that `index` returns, for up to `queries`
    corpus embeddings (drawn with `seed`) used as queries."""
    faiss = _faiss()
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(embeddings), size=min(queries, len(embeddings)), replace=False))
    query = np.ascontiguousarray(embeddings[sample], dtype=np.float32)
    k = min(k, len(embeddings))
    exact = faiss.IndexFlatIP(embeddings.shape[1])
    exact.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    _, truth = exact.search(query, k)
    _, found = index.search(query, k)
    hits = [len(set(t.tolist()) & set(f.tolist()) - {-1}) for t, f in zip(truth, found)]
    return float(np.mean(hits) / k), len(sample)


def _finish(folder: Path, corpus: Path, settings: dict, shards, requested: dict, extra: dict, say) -> dict:
    """Rank 0, once every shard is written: check them all, build the FAISS index and write the manifest."""
    ids, offsets, parts, unfinished = [], [], [], 0
    for shard in shards:
        loaded = _load_shard(folder, shard, settings, load=True)
        if loaded is None:
            raise RuntimeError(f"{_shard_files(folder, shard.index)[1]} is missing or damaged; run again to redo it.")
        meta, embeddings = loaded
        ids += meta["ids"]
        offsets += meta["offsets"]
        parts.append(embeddings)
        unfinished += meta.get("unfinished_rewrites") or 0
    embeddings = np.concatenate(parts)
    say(f"building the FAISS index ({requested['type']}) over {len(embeddings)} embeddings")
    index, resolved = build_faiss_index(embeddings, requested)
    info = {"requested": requested, **resolved, "ntotal": int(index.ntotal)}
    if resolved["type"] != "flat":
        recall, queries = recall_at_k(index, embeddings)
        info.update({f"recall_at_{RECALL_K}": recall, "recall_queries": queries})
        say(
            f"recall@{RECALL_K} of the {resolved['type']} index against exact search: {recall:.4f} ({queries} queries)"
        )
    write_atomically(folder / FAISS_FILE, lambda temporary: _faiss().write_index(index, str(temporary)))
    write_json(folder / ITEMS_FILE, {"ids": ids, "offsets": offsets})
    if settings["mode"] == "gen":
        extra = {**extra, "unfinished_rewrites": unfinished}
    return _write_manifest(
        folder, settings, corpus, shards, [s.index for s in shards], complete=True, faiss=info, **extra
    )


# ---------------------------------------------------------------------------------------------- processes


def _distributed(encoder) -> tuple[int, int, bool]:
    """`(rank, world size, whether this call started the process group)`."""
    if not torch.distributed.is_available():
        return 0, 1, False
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun / accelerate launch, not yet initialised
        torch.distributed.init_process_group("nccl" if encoder.device.type == "cuda" else "gloo")
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), True
    return 0, 1, False


def _broadcast(value, world: int):
    if world == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value, world: int) -> list:
    if world == 1:
        return [value]
    values = [None] * world
    torch.distributed.all_gather_object(values, value)
    return values


def _raise(failure) -> None:
    kind, message = failure
    classes = {cls.__name__: cls for cls in (*_USER_ERRORS, IndexSettingsError, ImportError, OSError)}
    raise classes.get(kind, RuntimeError)(message)


def index_corpus(
    encoder,
    corpus: str | os.PathLike,
    output_dir: str | os.PathLike,
    mode: str = "disc",
    role: str = "document",
    instruction: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    index_type: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_search: int = 128,
    ef_construction: int = 200,
    overwrite: bool = False,
    show_progress_bar: bool = True,
    verbose: bool = True,
) -> dict | None:
    """Embed the JSON-lines `corpus` into `output_dir` shard by shard, resumably, then build its FAISS index.

    Args:
        encoder: the [`RimeEncoder`].
        corpus: the corpus file (see the module docstring).
        output_dir: the index folder (created if missing; an existing index is resumed).
        mode / role / instruction: how the corpus is embedded (`"disc"` or `"gen"`; the role's instruction unless
            `instruction` is given).
        shard_size: items per shard: the unit of resumption and of memory.
        batch_size / max_new_tokens / max_length: as in `RimeEncoder.encode`.
        index_type: `"flat"` (exact `IndexFlatIP`), `"hnsw"` or `"ivf"` (approximate, for corpora in the millions:
            their recall@10 against exact search is measured and recorded).
        nlist / nprobe: IVF's lists and lists searched (defaults: see `build_faiss_index`).
        hnsw_m / ef_search / ef_construction: HNSW's links per node and search / construction breadths.
        overwrite: rebuild an index made with another model or other settings (otherwise refused).
        show_progress_bar: a bar with items/s and the time left (rank 0).
        verbose: print what happens (resuming, building, recall) to stderr (rank 0).

    Returns:
        The manifest (on rank 0; `None` on the other processes).

    Raises:
        IndexSettingsError: `output_dir` holds an index made with other settings, or is not an index.
        ValueError / FileNotFoundError / TypeError: a bad corpus line, named as `corpus.jsonl:LINE`, raised before the
            first shard for what reading the file and opening the media headers can find, and before any model work
            on a shard for the rest (decoding, prompt length). Finished shards are kept.
        FloatingPointError: a non-finite embedding, naming its line.
    """
    check_choice("mode", mode, MODES)
    check_choice("role", role, ROLES)
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    encoder._check_call(batch_size, mode, max_new_tokens, {})
    requested = faiss_settings(index_type, nlist, nprobe, hnsw_m, ef_search, ef_construction)
    _faiss()
    corpus, folder = Path(corpus).resolve(), Path(output_dir).resolve()
    rank, world, started = _distributed(encoder)

    def say(message: str) -> None:
        if verbose and rank == 0:
            print(f"rime index: {message}", file=sys.stderr, flush=True)

    try:
        settings = index_settings(encoder, mode, role, instruction, shard_size, max_new_tokens)
        plan = failure = None
        if rank == 0:
            try:
                plan = _plan(corpus, folder, settings, requested, overwrite, say)
            except (*_USER_ERRORS, IndexSettingsError, OSError) as error:
                failure = (type(error).__name__, str(error))
        plan, failure = _broadcast((plan, failure), world)
        if failure is not None:
            _raise(failure)
        if plan.up_to_date is not None:
            say(f"{folder} is complete and up to date")
            return plan.up_to_date if rank == 0 else None
        mine = plan.pending[rank::world]
        bar = tqdm(
            total=sum(s.count for s in mine),
            unit="item",
            desc=f"Indexing ({mode}, {role})" + (f" [rank 0 of {world}]" if world > 1 else ""),
            disable=not show_progress_bar or rank != 0 or not plan.pending,
            dynamic_ncols=True,
        )
        failure = None
        try:
            for shard in mine:
                lines = list(shard_lines(corpus, shard))
                if _digest(text for _, _, text in lines) != shard.digest:
                    raise ValueError(
                        f"{corpus}:{shard.first_line}-{shard.last_line}: the corpus changed during the run; run "
                        "again (finished shards are kept)."
                    )
                wheres = [f"{corpus}:{number}" for number, _, _ in lines]
                parsed = [parse_corpus_line(text, where, corpus.parent) for (_, _, text), where in zip(lines, wheres)]
                embeddings, unfinished = embed_lines(
                    encoder,
                    [p[1] for p in parsed],
                    wheres,
                    mode,
                    role,
                    instruction,
                    batch_size,
                    max_new_tokens,
                    max_length,
                )
                ids, offsets = [p[0] for p in parsed], [offset for _, offset, _ in lines]
                _write_shard(folder, shard, settings, ids, offsets, embeddings, unfinished, (rank, world))
                if rank == 0:
                    _write_manifest(folder, settings, corpus, plan.shards, _present_shards(folder), complete=False)
                bar.update(shard.count)
        except _USER_ERRORS as error:
            failure = (type(error).__name__, str(error))
        finally:
            bar.close()
        failures = [f for f in _gather(failure, world) if f is not None]
        if failures:
            _raise(failures[0])
        if rank != 0:
            return None
        extra = {"max_length": max_length, "batch_size": batch_size, "processes": world}
        return _finish(folder, corpus, settings, plan.shards, requested, extra, say)
    finally:
        if started:
            torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------- searching


class CorpusIndex:
    """A finished index folder, loaded for search: the FAISS index, the corpus ids and the manifest.

    ```python
    index = CorpusIndex.load("IDX")
    index.check_encoder(encoder)  # the same model as the corpus's (fingerprint), else a ValueError
    hits = index.search(encoder.encode(["a red car"], role="query"), k=10)  # [[CorpusHit(corpus_id, score, ...)]]
    ```
    """

    def __init__(self, folder: Path, manifest: dict, index, ids: list, offsets: list):
        self.folder, self.manifest, self.index, self.ids, self.offsets = folder, manifest, index, ids, offsets

    @classmethod
    def load(cls, folder: str | os.PathLike) -> CorpusIndex:
        """Load a complete index folder; a `ValueError` when it is not one (or is unfinished)."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        if manifest is None:
            raise ValueError(f"{folder}: not an index (no {MANIFEST}); build one with `rime index`.")
        if not manifest.get("complete"):
            raise ValueError(
                f"{folder}: the index is unfinished ({len(manifest.get('finished_shards', []))} of "
                f"{manifest.get('corpus', {}).get('shards')} shards); run `rime index` again to finish it."
            )
        faiss = _faiss()
        index = faiss.read_index(str(folder / FAISS_FILE))
        _apply_search_settings(index, manifest["faiss"])
        items = json.loads((folder / ITEMS_FILE).read_text(encoding="utf-8"))
        if len(items["ids"]) != index.ntotal:
            raise ValueError(
                f"{folder}: {ITEMS_FILE} names {len(items['ids'])} items, the index holds {index.ntotal}."
            )
        return cls(folder, manifest, index, items["ids"], items["offsets"])

    @property
    def settings(self) -> dict:
        return self.manifest["settings"]

    @property
    def mode(self) -> str:
        return self.settings["mode"]

    @property
    def model_fingerprint(self) -> str:
        return self.settings["model_fingerprint"]

    def __len__(self) -> int:
        return len(self.ids)

    def check_encoder(self, encoder) -> None:
        """Raise a `ValueError` unless `encoder` is the model the corpus was embedded with."""
        found = encoder_fingerprint(encoder)
        if found != self.model_fingerprint:
            raise ValueError(
                f"{self.folder} was embedded with another model (fingerprint {self.model_fingerprint}, this one's is "
                f"{found}): its embeddings are not comparable with this model's queries. Search with the model the "
                "index was built with, or rebuild the index with this one."
            )

    def search(self, query_embeddings, k: int = 10) -> list[list[CorpusHit]]:
        """The top `k` corpus items per query (`(Q, D)` embeddings, or `(D,)` for one), best first."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        if isinstance(query_embeddings, torch.Tensor):
            query_embeddings = query_embeddings.detach().float().cpu().numpy()
        queries = np.ascontiguousarray(np.atleast_2d(query_embeddings), dtype=np.float32)
        if queries.shape[1] != self.settings["dim"]:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index {self.settings['dim']}.")
        scores, positions = self.index.search(queries, min(k, len(self)))
        return [
            [CorpusHit(self.ids[p], float(s), int(p)) for s, p in zip(row_scores, row_positions) if p >= 0]
            for row_scores, row_positions in zip(scores.tolist(), positions.tolist())
        ]

    def document(self, position: int):
        """The corpus line of an item (without its `id`), read from the corpus file; `None` when the file is gone
        or no longer holds that item there."""
        path = Path(self.manifest["corpus"]["path"])
        try:
            with open(path, "rb") as f:
                f.seek(self.offsets[position])
                row = json.loads(f.readline().decode("utf-8-sig"))
        except (OSError, ValueError):
            return None
        if not isinstance(row, dict) or row.get("id") != self.ids[position]:
            return None
        row.pop("id")
        return row


__all__ = [
    "CorpusHit",
    "CorpusIndex",
    "IndexSettingsError",
    "ShardPlan",
    "build_faiss_index",
    "check_index_folder",
    "embed_lines",
    "index_corpus",
    "index_settings",
    "read_queries",
    "recall_at_k",
    "scan_corpus",
]
