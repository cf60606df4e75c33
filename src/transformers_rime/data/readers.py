"""Read RIME training pairs from disk into a `datasets.Dataset` with one fixed schema.

Every reader returns the columns `query`, `positive` (items `{"text": str | None, "images": [abs paths],
"video": [abs frame paths] | None}`), `query_rewrite`, `positive_rewrite` (`str | None`), `query_instruction`,
`positive_instruction` (`str | None`), `source` (`str`) and `origin` (`str`: where the row came from,
`"/abs/data.jsonl:7"` for line 7 of a JSON-lines file, `"/abs/data.json[3]"` for element 3 of a JSON list,
`"dataset row 3"` for an in-memory row, so that a bad row names its file and line wherever it fails); `read_pairs`
adds `negatives` and `negative_rewrites` when its input has negatives. Files are only checked for existence here,
never decoded. Invalid JSON is an error naming the file and line; text that is not UTF-8, the file and byte offset.

**RIME-Train / UME-R1 SFT** (`read_rime_sft`; the two layouts are the same): a JSON list (or JSON lines) of records

```json
{"qry": {"image": "images/cat.jpg", "conversations": [
    {"from": "human", "value": "<image>\\nRepresent the given image: What is it?\\n<disc_emb>\\nRepresent ..."},
    {"from": "gpt", "value": "<rewrite>a cat on a sofa</rewrite><gen_emb>"}]},
 "pos": {"image": "blank.jpg", "video": "frames/vid_1", "conversations": [...]}}
```

The human text loses its `<image>`/`<video>` placeholders and everything from `<disc_emb>` on (RIME's processor
adds the generation prompt itself); it already holds the task instruction, so the instruction columns are `""`.

**Plain pairs** (`read_pairs`): JSON lines (or a JSON list, a `datasets.Dataset`, a list of dicts) such as

```json
{"query": "a red car", "positive": {"text": "a car", "image": "car.jpg"}, "negatives": ["truck.png"],
 "query_instruction": "Find the matching photo:", "source": "cars"}
```

with optional `negative`/`negatives`, `*_rewrite`/`negative_rewrites`, `*_instruction` and `source`.

**RIME-Train RL** (`read_rime_rl`, file `RIME-RL/RIME-rl.json`): flat records

```json
{"qry_text": "<image>\\nRepresent the given image.\\n<disc_emb>...", "qry_image": "images/cat.jpg", "qry_video": "",
 "pos_text": "A cat on a sofa.", "pos_image": "", "pos_video": "", "dataset": "MSCOCO_i2t", "solution": "..."}
```

cleaned like the SFT human turns; `solution` is kept as a column (TRL passes it to reward functions).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..inputs import DICT_KEYS, frame_files, is_image_path, names_image_file
from ..models.rime.configuration_rime import DISC_EMB_TOKEN, END_OF_TURN_TOKENS, GEN_EMB_TOKEN


VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg", ".3gp")
_HUMAN_ROLES = ("human", "user")
_ASSISTANT_ROLES = ("gpt", "assistant")


def clean_human_text(text: str | None, disc_emb_token: str = DISC_EMB_TOKEN) -> str | None:
    """The human turn of an SFT record without media placeholders or the prompt after `disc_emb_token`.

    ```python
    >>> clean_human_text("<image>\\nWhat is in the image?\\n<disc_emb>\\nRepresent the above input ...")
    'What is in the image?'
    >>> clean_human_text("<video>\\n<disc_emb>") is None
    True

    ```
    """
    if text is None:
        return None
    text = text.split(disc_emb_token, 1)[0].replace("<image>", "").replace("<video>", "").strip()
    return text or None


def clean_rewrite(text: str | None, gen_emb_token: str = GEN_EMB_TOKEN) -> str | None:
    """An assistant completion without its trailing `gen_emb_token`, end-of-turn tokens and whitespace.

    ```python
    >>> clean_rewrite("<rewrite>a dog on grass</rewrite><gen_emb><|im_end|>\\n")
    '<rewrite>a dog on grass</rewrite>'

    ```
    """
    if text is None:
        return None
    text = text.rstrip()
    # Strip in a loop: the tokens may come in any order, separated by whitespace.
    trailing = (gen_emb_token, *END_OF_TURN_TOKENS)
    while text.endswith(trailing):
        text = text.removesuffix(next(token for token in trailing if text.endswith(token))).rstrip()
    return text or None


def normalize_item(item, media_root=None, where: str = "item", *, check_files: bool = True, placeholder_images=()):
    """Normalise a text/image/video item from a data file to `{"text", "images", "video"}` with absolute paths.

    Args:
        item: a `str` (text, or an image path when it has an image extension), a list of frame paths (a video),
            or a dict with `text`, `image`, `images`, `video` (a frame list or a directory of frames).
        media_root: directory that relative paths are resolved against (default: the working directory).
        where: names the item in error messages, e.g. `"pairs.jsonl row 3 (query)"`.
        check_files: raise `FileNotFoundError` for a missing image or frame.
        placeholder_images: file names of placeholder images to drop (UME-R1's text-only `blank.jpg`).

    ```python
    >>> normalize_item({"text": "a cat", "images": []}, media_root="/data")
    {'text': 'a cat', 'images': [], 'video': None}
    >>> normalize_item("img/cat.jpg", media_root="/data", check_files=False)
    {'text': None, 'images': ['/data/img/cat.jpg'], 'video': None}

    ```
    """
    if isinstance(item, Path) or (isinstance(item, str) and names_image_file(item)):
        item = {"image": item}
    elif isinstance(item, str):
        item = {"text": item}
    elif isinstance(item, (list, tuple)):
        item = {"video": item}
    elif not isinstance(item, dict):
        raise ValueError(f"{where}: expected text, an image path, a frame list or a dict, got {type(item).__name__}.")
    unknown = set(item) - set(DICT_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; use {', '.join(DICT_KEYS)}.")
    text = item.get("text")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{where}: 'text' must be a string, got {type(text).__name__}.")
    images = [] if item.get("image") is None else _as_list(item["image"], where, "image")
    images += [] if item.get("images") is None else _as_list(item["images"], where, "images")
    images = [_file(p, media_root, where, "image", check_files) for p in images if _name(p) not in placeholder_images]
    video = None if item.get("video") is None else _frames(item["video"], media_root, where, check_files)
    text = text if text is not None and text.strip() else None
    if text is None and not images and video is None:
        raise ValueError(f"{where}: empty item (no text, image or video).")
    return {"text": text, "images": images, "video": video}


def _as_list(value, where: str, key: str) -> list:
    if isinstance(value, (str, os.PathLike)):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value):
        return list(value)
    raise ValueError(f"{where}: {key!r} must be a path or a list of paths, got {value!r:.80}.")


def _name(path) -> str:
    return os.path.basename(os.fspath(path))


def _resolve(path, media_root) -> str:
    return os.path.abspath(os.path.join(os.fspath(media_root or "."), os.path.expanduser(os.fspath(path))))


def _file(path, media_root, where: str, kind: str, check_files: bool) -> str:
    path = _resolve(path, media_root)
    if check_files and not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: {kind} file not found: {path}")
    return path


def _frames(value, media_root, where: str, check_files: bool) -> list[str]:
    """A video as its ordered frame paths: a frame list as given, or the image files of a frame directory."""
    if isinstance(value, (str, os.PathLike)):
        if os.fspath(value).lower().endswith(VIDEO_EXTENSIONS):
            raise ValueError(
                f"{where}: video file {_resolve(value, media_root)} is not supported; extract its frames to a "
                "directory of images first and reference that directory (or a list of frame paths)."
            )
        if is_image_path(value):
            return [_file(value, media_root, where, "video frame", check_files)]
        # A directory must exist even without check_files: its listing is the video.
        directory = _resolve(value, media_root)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{where}: video frame directory not found: {directory}")
        frames = frame_files(directory)
        if not frames:
            raise ValueError(f"{where}: video frame directory has no image files: {directory}")
        return frames
    frames = _as_list(value, where, "video")
    if not frames:
        raise ValueError(f"{where}: 'video' is an empty frame list.")
    return [_file(frame, media_root, where, "video frame", check_files) for frame in frames]


def load_json_records(path, layout: str = "auto") -> list[tuple[str, object]]:
    """The `(origin, record)` pairs of a JSON list or JSON-lines file; origins as `"/abs/data.jsonl:7"` (line 7) and
    `"/abs/data.json[3]"` (list element 3).

    Args:
        path: the file (UTF-8; a leading byte-order mark is ignored).
        layout: `"lines"` (one JSON value per non-blank line), `"list"` (one JSON list) or `"auto"` (a list when
            the text starts with `[`, else lines).

    Raises:
        ValueError: naming the file and the line (1-based, blank lines counted, as an editor numbers them) of
            invalid JSON, or the byte offset of text that is not UTF-8.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        content = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{path} line {line}: not UTF-8 text (byte offset {error.start}: {error.reason}); re-save the file as "
            "UTF-8."
        ) from None
    absolute = os.path.abspath(path)
    if layout == "list" or (layout == "auto" and content.lstrip().startswith("[")):
        try:
            records = json.loads(content)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {error.lineno} column {error.colno}: invalid JSON ({error.msg}).") from None
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}.")
        return [(f"{absolute}[{index}]", record) for index, record in enumerate(records)]
    records = []
    # Split on "\n" only: str.splitlines would also split inside a JSON string holding a raw U+2028 (valid JSON).
    for number, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"{absolute}:{number}", json.loads(line)))
        except json.JSONDecodeError as error:
            message = f"{path} line {number}: invalid JSON ({error.msg} at column {error.colno})."
            if layout == "auto" and _parses(content):
                message += " The file holds one JSON value: give a JSON list of records or one record per line."
            raise ValueError(message) from None
    return records


def _parses(content: str) -> bool:
    try:
        json.loads(content)
    except json.JSONDecodeError:
        return False
    return True


def _load_records(path: str) -> list:
    """A JSON list, or JSON lines (one object per non-empty line), whatever the file extension."""
    return [record for _, record in load_json_records(path)]


def _data_records(paths, media_root, expected: str):
    """`(file, media root, where, origin, record)` for every record of the data files `paths`, each an object."""
    for file in _data_files(paths):
        root = media_root if media_root is not None else os.path.dirname(os.path.abspath(file))
        for index, (origin, record) in enumerate(load_json_records(file)):
            where = f"{file} record {index}"
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected an object with {expected}, got {type(record).__name__}.")
            yield file, root, where, origin, record


def _data_files(paths) -> list[str]:
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            files += sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith((".json", ".jsonl")))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"data file or directory not found: {path}")
    return files


def _sft_side(side, media_root, where: str, check_files: bool, placeholders) -> tuple[dict, str | None]:
    """One `qry`/`pos` side of an SFT record -> (normalised item, rewrite)."""
    if not isinstance(side, dict):
        raise ValueError(f"{where}: expected a record with 'conversations', got {type(side).__name__}.")
    human = assistant = None
    for turn in side.get("conversations") or side.get("messages") or []:
        if not isinstance(turn, dict):
            raise ValueError(f"{where}: a conversation turn must be an object, got {type(turn).__name__}.")
        role, value = turn.get("from", turn.get("role")), turn.get("value", turn.get("content"))
        if role in _HUMAN_ROLES and human is None:
            human = value
        elif role in _ASSISTANT_ROLES and assistant is None:
            assistant = value
    for name, value in (("human", human), ("assistant", assistant)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: the {name} turn must be a string, got {type(value).__name__}.")
    media = {"text": clean_human_text(human), **{key: side.get(key) for key in ("image", "images", "video")}}
    item = normalize_item(media, media_root, where, check_files=check_files, placeholder_images=placeholders)
    return item, clean_rewrite(assistant)


def read_rime_sft(
    paths, media_root=None, check_files=True, placeholder_images=("blank.jpg",), max_samples_per_source=None
):
    """Read RIME-Train SFT files (`leafyseay/RIME-Train`, folder `RIME-SFT/<Dataset>.json`, one file per source) or
    the UME-R1 SFT data (`zhibinlan/UME-sft-train`, one big JSON file whose records name their sub-dataset).

    Args:
        paths: a JSON/JSON-lines file, a directory (every `*.json`/`*.jsonl` in it, sorted) or a list of them.
        media_root: directory that relative image/video paths are resolved against (default: each file's folder).
        check_files: raise `FileNotFoundError` (naming the file, record and side) for a missing image or frame.
        placeholder_images: file names of placeholder images to drop (UME-R1 marks text-only items `blank.jpg`).
        max_samples_per_source: keep only the first this many records of each source.

    Returns:
        A `datasets.Dataset` with the columns described in the module docstring; `source` is a record's
        `dataset`/`source`/`data_source` key, else the file stem; the instruction columns are `""`.
    """
    rows, counts = [], {}
    for file, root, where, origin, record in _data_records(paths, media_root, "'qry' and 'pos'"):
        source = record.get("dataset") or record.get("source") or record.get("data_source") or Path(file).stem
        if max_samples_per_source is not None and counts.get(source, 0) >= max_samples_per_source:
            continue
        counts[source] = counts.get(source, 0) + 1
        row = {"source": str(source), "origin": origin}
        for column, keys in (("query", ("qry", "query")), ("positive", ("pos", "positive"))):
            key = next((k for k in keys if record.get(k) is not None), None)
            if key is None:
                raise ValueError(f"{where}: missing {keys[0]!r}.")
            item, rewrite = _sft_side(record[key], root, f"{where} ({key})", check_files, placeholder_images)
            # The task instruction is already in the human text: "" tells the collator to add none.
            row.update({column: item, f"{column}_rewrite": rewrite, f"{column}_instruction": ""})
        rows.append(row)
    return _to_dataset(rows, with_negatives=False)


def read_rime_rl(paths, media_root=None, check_files=True, placeholder_images=("blank.jpg",)):
    """Read the RIME-Train Refine-RL file (`leafyseay/RIME-Train`, `RIME-RL/RIME-rl.json`).

    Args:
        paths: a JSON/JSON-lines file, a directory of them or a list.
        media_root: directory that relative image/video paths are resolved against (default: each file's folder).
        check_files: raise `FileNotFoundError` (naming the file, record and side) for a missing image or frame.
        placeholder_images: file names of placeholder images to drop (`blank.jpg` marks text-only items).

    Returns:
        A `datasets.Dataset` with the pair columns of the module docstring (rewrites `None`, instructions `""`
        since the task instruction is in the text) plus `solution` (`str | None`); `source` is the `dataset` field.
    """
    rows = []
    for file, root, where, origin, record in _data_records(paths, media_root, "qry_*/pos_* fields"):
        row = {
            "source": str(record.get("dataset") or Path(file).stem),
            "origin": origin,
            "solution": record.get("solution"),
        }
        for column, prefix in (("query", "qry"), ("positive", "pos")):
            media = {
                "text": clean_human_text(_text(record.get(f"{prefix}_text"), f"{where} ({prefix}_text)")),
                "image": record.get(f"{prefix}_image") or None,
                "video": record.get(f"{prefix}_video") or None,
            }
            row[column] = normalize_item(
                media, root, f"{where} ({prefix})", check_files=check_files, placeholder_images=placeholder_images
            )
            row.update({f"{column}_rewrite": None, f"{column}_instruction": ""})
        if row["solution"] is not None and not isinstance(row["solution"], str):
            row["solution"] = json.dumps(row["solution"])
        rows.append(row)
    return _to_dataset(rows, with_negatives=False, extra_text_columns=("solution",))


def read_pairs(path_or_dataset, media_root=None, check_files=True, source=None):
    """Read plain (query, positive[, negatives]) pairs with the trainer's column names.

    Args:
        path_or_dataset: a `.jsonl`/`.json` file, a `datasets.Dataset` or a list of dicts. Columns `query` and
            `positive` are required; `negative` (one item) or `negatives` (a list), `query_rewrite`,
            `positive_rewrite`, `negative_rewrite`/`negative_rewrites`, `query_instruction`,
            `positive_instruction`, `source` and (in-memory rows, e.g. a reader's output) `origin` are optional.
        media_root: directory that relative paths are resolved against (default: the file's folder, else the
            working directory).
        check_files: raise `FileNotFoundError` for a missing image or frame.
        source: the source of rows without a `source` value (default: the file stem, else `"default"`).

    Returns:
        A `datasets.Dataset` (see the module docstring); `negatives`/`negative_rewrites` only when some row has
        negatives (rows without get `[]`). Missing instructions are `None` (the model's default instruction);
        other input columns are dropped.
    """
    if isinstance(path_or_dataset, (str, os.PathLike)):
        name = os.fspath(path_or_dataset)
        media_root = media_root if media_root is not None else os.path.dirname(os.path.abspath(name))
        source = source or Path(name).stem
        numbered = [(origin, r, f"{name} row {i}") for i, (origin, r) in enumerate(load_json_records(name))]
    else:
        # In-memory rows keep the origin a reader gave them (reading a reader's output changes nothing); their
        # errors then name it.
        numbered = []
        for i, record in enumerate(path_or_dataset):
            given = _given_origin(record)
            numbered.append((given or f"dataset row {i}", record, given or f"data row {i}"))
    rows = [
        {**_pair_row(record, where, media_root, check_files, source), "origin": origin}
        for origin, record, where in numbered
    ]
    with_negatives = any("negatives" in row for row in rows)
    for row in rows if with_negatives else ():
        row.setdefault("negatives", [])
        row.setdefault("negative_rewrites", [])
    return _to_dataset(rows, with_negatives)


def _given_origin(record) -> str | None:
    origin = record.get("origin") if isinstance(record, dict) else None
    return origin if isinstance(origin, str) and origin else None


def _pair_row(record, where: str, media_root, check_files: bool, source: str | None) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object, got {type(record).__name__}.")

    def item(value, column):
        return normalize_item(value, media_root, f"{where} ({column})", check_files=check_files)

    row = {}
    for column in ("query", "positive"):
        if record.get(column) is None:
            raise ValueError(f"{where}: missing {column!r}.")
        row[column] = item(record[column], column)
        row[f"{column}_rewrite"] = clean_rewrite(_text(record.get(f"{column}_rewrite"), f"{where} ({column}_rewrite)"))
        row[f"{column}_instruction"] = _text(record.get(f"{column}_instruction"), f"{where} ({column}_instruction)")
    row["source"] = str(record.get("source") or source or "default")
    one, many = record.get("negative"), record.get("negatives")
    if one is not None and many is not None:
        raise ValueError(f"{where}: give either 'negative' or 'negatives', not both.")
    if one is None and many is None:
        return row
    negatives = [one] if one is not None else many
    rewrites = [record.get("negative_rewrite")] if one is not None else record.get("negative_rewrites")
    rewrites = [None] * len(negatives) if rewrites is None and isinstance(negatives, list) else rewrites
    if not isinstance(negatives, list) or not isinstance(rewrites, list) or len(rewrites) != len(negatives):
        raise ValueError(f"{where}: 'negatives' and 'negative_rewrites' must be lists of the same length.")
    row["negatives"] = [item(value, f"negatives[{i}]") for i, value in enumerate(negatives)]
    row["negative_rewrites"] = [
        clean_rewrite(_text(r, f"{where} (negative_rewrites[{i}])")) for i, r in enumerate(rewrites)
    ]
    return row


def _text(value, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}.")
    return value


def _to_dataset(rows: list[dict], with_negatives: bool, extra_text_columns: tuple[str, ...] = ()):
    """Rows -> `datasets.Dataset` with a fixed schema and column order, so that an all-`None` column keeps its type
    and datasets read from different files concatenate."""
    from datasets import Dataset, Features, Value

    item = {"text": Value("string"), "images": [Value("string")], "video": [Value("string")]}
    columns = {"query": item, "positive": item}
    columns.update({f"{column}_rewrite": Value("string") for column in ("query", "positive")})
    columns.update({f"{column}_instruction": Value("string") for column in ("query", "positive")})
    columns["source"] = Value("string")
    columns["origin"] = Value("string")
    if with_negatives:
        columns.update(negatives=[item], negative_rewrites=[Value("string")])
    columns.update({name: Value("string") for name in extra_text_columns})
    return Dataset.from_dict({key: [row[key] for row in rows] for key in columns}, features=Features(columns))
