"""Read MMEB-V2's own evaluation files from a local copy into `RetrievalTask`s.

The layout is the one VLM2Vec's harness reads (`experiments/public/eval/{image,video,visdoc}.yaml`, `main` @
`6e1e1d4`), below one root folder:

```
ROOT/
  image-query/{task}/*.parquet        # ziyjiang/MMEB_Test_Instruct, one folder per task (qry_inst, qry_text,
                                      #   qry_img_path, tgt_inst, tgt_text[], tgt_img_path[])
  image-tasks/MMEB/...                # the images (TIGER-Lab/MMEB-V2 image-tasks/mmeb_v1.tar.gz, extracted)
  video-tasks/data/{msr-vtt,msvd,didemo,vatex,youcook2-val}.jsonl
  video-tasks/frames/video_ret/{task}/{video id}/*.jpg   # extracted frames (the video-tasks/frames tarballs)
  visdoc-tasks/data/{dataset}/{queries,corpus,qrels}/*.parquet   # BEIR layout (ViDoRe, VisRAG, ViDoSeek, ...)
```

Covered: the 36 image tasks (each query ranked against its own candidate list, the first one correct), the 5 video
retrieval tasks (every caption against all videos, 8 frames sampled evenly from the frame folder) and the 24 VisDoc
tasks (every query against the whole page corpus, graded qrels; pages are written once as PNG files beside the data,
under `visdoc-tasks/{task}/`). The 13 other video tasks (classification, QA, moment retrieval) each have their own
annotation format; convert them to the jsonl task folder format of `transformers_rime.evaluation.tasks`.

```python
tasks = read_mmeb_v2("/data/MMEB-V2", names=["MSCOCO_t2i", "ViDoRe_docvqa", "MSR-VTT"])
evaluate(encoder, tasks, output_dir="mmeb-out", benchmark="MMEB-V2")
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np

from ..data.readers import _natural_key
from .mmeb import MMEB_V2_BY_NAME
from .tasks import RetrievalTask


logger = logging.getLogger(__name__)

_IMAGE_TOKEN = "<|image_1|>"
_VIDEO_CORPUS_INSTRUCTION = "Understand the content of the provided video."

# task -> (annotation file, video id column, caption column, query instruction, skip rows without frames)
_VIDEO_RETRIEVAL = {
    "MSR-VTT": (
        "msr-vtt.jsonl",
        "video_id",
        "caption",
        "Find a video that contains the following visual content:",
        False,
    ),
    "MSVD": (
        "msvd.jsonl",
        "video_id",
        "caption",
        "Find the video snippet that corresponds to the given summary:",
        True,
    ),
    "DiDeMo": (
        "didemo.jsonl",
        "video",
        "caption",
        "Find a video that includes the following described scenes:",
        False,
    ),
    "VATEX": ("vatex.jsonl", "videoID", "enCap", "Select a video that fits the description provided:", False),
    "YouCook2": (
        "youcook2-val.jsonl",
        "id",
        "sentence",
        "Find a video that demonstrates the following action while making a recipe:",
        True,
    ),
}

# task -> folder under visdoc-tasks/data (MMEB-V2 scores ViDoRe-V2 on all languages)
_VISDOC = {
    **{f"ViDoRe_{name}": f"{name}_test_subsampled_beir" for name in ("arxivqa", "docvqa", "infovqa", "tabfquad")},
    **{
        f"ViDoRe_{name}": f"{name}_test_beir"
        for name in (
            "tatdqa",
            "shiftproject",
            "syntheticDocQA_artificial_intelligence",
            "syntheticDocQA_energy",
            "syntheticDocQA_government_reports",
            "syntheticDocQA_healthcare_industry",
        )
    },
    "ViDoRe_esg_reports_human_labeled_v2": "esg_reports_human_labeled_v2",
    **{
        f"ViDoRe_{name}_v2_multilingual": f"{name}_v2"
        for name in ("biomedical_lectures", "economics_reports", "esg_reports")
    },
    **{
        f"VisRAG_{name}": f"VisRAG-Ret-Test-{name}"
        for name in ("ArxivQA", "ChartQA", "MP-DocVQA", "SlideVQA", "InfoVQA", "PlotQA")
    },
    "ViDoSeek-doc": "ViDoSeek",
    "ViDoSeek-page": "ViDoSeek-page",
    "MMLongBench-doc": "MMLongBench-doc",
    "MMLongBench-page": "MMLongBench",
}

MMEB_V2_READABLE = tuple(
    task.name
    for task in MMEB_V2_BY_NAME.values()
    if task.modality == "image" or task.name in _VIDEO_RETRIEVAL or task.name in _VISDOC
)


def read_mmeb_v2(root: str | Path, names=None, *, num_frames: int = 8) -> list[RetrievalTask]:
    """The MMEB-V2 tasks `names` (default: every task this module reads) from a local copy laid out as in the
    module docstring."""
    root = Path(root)
    names = list(MMEB_V2_READABLE if names is None else names)
    tasks = []
    for name in names:
        if name not in MMEB_V2_BY_NAME:
            raise ValueError(f"{name!r} is not an MMEB-V2 task (see transformers_rime.evaluation.MMEB_V2_TASKS).")
        if MMEB_V2_BY_NAME[name].modality == "image":
            tasks.append(read_mmeb_image_task(name, root / "image-query" / name, root / "image-tasks" / "MMEB"))
        elif name in _VIDEO_RETRIEVAL:
            tasks.append(
                read_mmeb_video_retrieval_task(
                    name,
                    root / "video-tasks" / "data" / _VIDEO_RETRIEVAL[name][0],
                    root / "video-tasks" / "frames" / "video_ret" / name,
                    num_frames=num_frames,
                )
            )
        elif name in _VISDOC:
            tasks.append(read_mmeb_visdoc_task(name, root / "visdoc-tasks" / "data" / _VISDOC[name]))
        else:
            raise ValueError(
                f"{name!r}: its annotation format is not read here; convert it to a jsonl task folder "
                "(see `rime eval --help`). Readable: image tasks, video retrieval and VisDoc."
            )
    return tasks


def read_mmeb_image_task(name: str, annotations: str | Path, image_root: str | Path) -> RetrievalTask:
    """An MMEB-V2 image task from its MMEB_Test_Instruct parquet folder: each query ranked against its own
    candidates (`tgt_text` / `tgt_img_path`, the first correct), image paths relative to `image_root`.

    Candidates shared between queries (class names, the same image) are one corpus item. A row's instruction
    (`qry_inst`, `tgt_inst`, without the `<|image_1|>` placeholder) becomes the task's instruction when every row
    has the same one, and is put in front of the row's text otherwise.
    """
    rows = _read_parquet_rows(Path(annotations))
    if not rows:
        raise ValueError(f"{name}: {annotations} holds no rows.")
    image_root = Path(image_root)

    def instructions(column: str) -> tuple[str, list[str]]:
        values = [_strip_image_token(row.get(column) or "") for row in rows]
        return (values[0], [""] * len(values)) if len(set(values)) == 1 else ("", values)

    query_instruction, query_prefixes = instructions("qry_inst")
    corpus_instruction, corpus_prefixes = instructions("tgt_inst")

    queries, relevance, pools = [], [], []
    corpus, corpus_index = [], {}
    for row, query_prefix, corpus_prefix in zip(rows, query_prefixes, corpus_prefixes):
        queries.append(_item(_join(query_prefix, row.get("qry_text")), row.get("qry_img_path"), image_root))
        texts, paths = list(row["tgt_text"]), list(row.get("tgt_img_path") or [""] * len(row["tgt_text"]))
        pool = []
        for text, path in zip(texts, paths):
            key = (path or "", (text or "").strip(), corpus_prefix)
            if key not in corpus_index:
                corpus_index[key] = len(corpus)
                corpus.append(_item(_join(corpus_prefix, text), path, image_root))
            if corpus_index[key] not in pool:
                pool.append(corpus_index[key])
        pools.append(pool)
        relevance.append({pool[0]: 1.0})
    return _task(name, queries, corpus, relevance, pools, query_instruction, corpus_instruction)


def read_mmeb_video_retrieval_task(
    name: str, annotations: str | Path, frame_root: str | Path, *, num_frames: int = 8
) -> RetrievalTask:
    """An MMEB-V2 video retrieval task (MSR-VTT, MSVD, DiDeMo, VATEX, YouCook2): every caption against all videos.

    `annotations` is the task's jsonl file; each video's frames are image files in `frame_root/{video id}/`, of which
    `num_frames` are taken evenly (all of them when there are fewer).
    """
    if name not in _VIDEO_RETRIEVAL:
        raise ValueError(f"{name!r} is not an MMEB-V2 video retrieval task ({', '.join(_VIDEO_RETRIEVAL)}).")
    _, id_column, caption_column, query_instruction, skip_missing = _VIDEO_RETRIEVAL[name]
    annotations, frame_root = Path(annotations), Path(frame_root)
    if not annotations.is_file():
        raise FileNotFoundError(f"{name}: annotation file {annotations} is missing.")
    queries, relevance, corpus, corpus_index, skipped = [], [], [], {}, 0
    for line_number, line in enumerate(annotations.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        video_id = Path(row[id_column]).stem if id_column == "video" else str(row[id_column])
        caption = row[caption_column]
        caption = caption[0] if isinstance(caption, list) else caption
        if video_id not in corpus_index:
            frames = sample_frames(frame_root / video_id, num_frames)
            if not frames:
                if skip_missing:  # as VLM2Vec does for these two tasks
                    skipped += 1
                    continue
                raise FileNotFoundError(f"{annotations}:{line_number}: no frames in {frame_root / video_id}.")
            corpus_index[video_id] = len(corpus)
            corpus.append({"video": frames})
        queries.append({"text": caption})
        relevance.append({corpus_index[video_id]: 1.0})
    if skipped:
        logger.warning("%s: skipped %d rows whose video has no frames (as VLM2Vec does).", name, skipped)
    return _task(name, queries, corpus, relevance, None, query_instruction, _VIDEO_CORPUS_INSTRUCTION)


def read_mmeb_visdoc_task(
    name: str, folder: str | Path, *, image_dir: str | Path | None = None, language: str | None = None
) -> RetrievalTask:
    """An MMEB-V2 VisDoc task from its BEIR folder (`queries/`, `corpus/`, `qrels/` parquet files): every query
    against the whole page corpus, graded by the qrels' `score`.

    Pages are written once as PNG files to `image_dir` (default: `visdoc-tasks/{name}` beside `data/`) and the
    corpus refers to them by path, so the parquet bytes are not held in memory. `language` keeps only the queries
    whose `language` column has that value (e.g. `"english"` for ViDoRe-V2's English-only variants).
    """
    folder = Path(folder)
    image_dir = Path(image_dir) if image_dir is not None else folder.parent.parent / name
    qrels: dict[str, dict[str, float]] = {}
    for row in _read_parquet_rows(folder / "qrels"):
        if float(row["score"]) > 0:
            qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = float(row["score"])
    corpus, corpus_index = [], {}
    for row in _read_parquet_rows(folder / "corpus", columns=["corpus-id", "image"]):
        corpus_id = str(row["corpus-id"])
        corpus_index[corpus_id] = len(corpus)
        corpus.append({"image": str(_page_file(image_dir, corpus_id, row["image"]))})
    queries, relevance, dropped = [], [], 0
    for row in _read_parquet_rows(folder / "queries"):
        if language is not None and row.get("language") != language:
            continue
        grades = {corpus_index[c]: g for c, g in qrels.get(str(row["query-id"]), {}).items() if c in corpus_index}
        if not grades:
            dropped += 1
            continue
        queries.append({"text": row["query"]})
        relevance.append(grades)
    if dropped:
        logger.warning("%s: dropped %d queries without a relevant page in the corpus.", name, dropped)
    return _task(name, queries, corpus, relevance, None, None, None)


def sample_frames(frame_dir: Path, num_frames: int) -> list[str]:
    """`num_frames` image files of `frame_dir` at evenly spaced positions (natural sort order, first and last
    included), or all of them when there are fewer; `[]` when the folder is missing or holds no image."""
    if not frame_dir.is_dir():
        return []
    frames = sorted(
        (p for p in frame_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
        key=lambda p: _natural_key(p.name),
    )
    if num_frames < len(frames):
        frames = [frames[i] for i in np.linspace(0, len(frames) - 1, num_frames, dtype=int)]
    return [str(p) for p in frames]


def _task(name, queries, corpus, relevance, pools, query_instruction, corpus_instruction) -> RetrievalTask:
    spec = MMEB_V2_BY_NAME.get(name)
    if not queries:
        raise ValueError(f"{name}: no queries were read.")
    return RetrievalTask(
        name=name,
        queries=queries,
        corpus=corpus,
        relevance=relevance,
        pools=pools,
        metric=spec.metric if spec else "hit@1",
        # None: the manifest's instruction (VisDoc), or else the processor's default
        query_instruction=query_instruction if query_instruction is not None or not spec else spec.query_instruction,
        corpus_instruction=corpus_instruction
        if corpus_instruction is not None or not spec
        else spec.corpus_instruction,
        group=spec.group if spec else None,
        metadata={"source": "MMEB-V2"},
    )


def _read_parquet_rows(folder: Path, columns: list[str] | None = None):
    """The rows of every parquet file under `folder` (sorted by path), as dicts, read batch by batch."""
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ImportError(
            "Reading MMEB-V2 parquet files needs pyarrow: pip install 'transformers_rime[eval]'."
        ) from error
    files = sorted(folder.rglob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"No parquet file under {folder}.")
    rows = []
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=columns):
            rows.extend(batch.to_pylist())
    return rows


def _page_file(image_dir: Path, corpus_id: str, image) -> Path:
    """Write one corpus page (parquet image struct `{bytes, path}`) to `image_dir` unless it is there."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", corpus_id)[:60]
    path = image_dir / f"{safe}-{hashlib.blake2b(corpus_id.encode(), digest_size=4).hexdigest()}.png"
    if not path.is_file():
        import io

        from PIL import Image

        data = image.get("bytes") if isinstance(image, dict) else None
        if data is None:
            raise ValueError(f"Corpus page {corpus_id!r} carries no image bytes.")
        image_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        Image.open(io.BytesIO(data)).convert("RGB").save(partial, format="PNG")
        partial.replace(path)
    return path


def _item(text: str | None, image_path: str | None, image_root: Path) -> dict:
    item = {}
    if text and text.strip():
        item["text"] = text.strip()
    if image_path:
        item["image"] = str(image_root / image_path)
    return item


def _strip_image_token(text: str) -> str:
    return text.replace(_IMAGE_TOKEN, "").strip()


def _join(prefix: str, text: str | None) -> str:
    return " ".join(part.strip() for part in (prefix, text or "") if part and part.strip())
