"""Read MMEB-V2's own evaluation files from a local copy into `RetrievalTask`s: all 78 tasks.

The layout is the one VLM2Vec's harness reads (`experiments/public/eval/{image,video,visdoc}.yaml`, `main` @
`6e1e1d4`), below one root folder; where it loads a Hub dataset, a local snapshot of it takes its place
(`hf download VLM2Vec/HMDB51 --repo-type dataset --local-dir ROOT/video-tasks/data/HMDB51`):

```
ROOT/
  image-query/{task}/*.parquet        # ziyjiang/MMEB_Test_Instruct, one folder per task (qry_inst, qry_text,
                                      #   qry_img_path, tgt_inst, tgt_text[], tgt_img_path[])
  image-tasks/MMEB/...                # the images (TIGER-Lab/MMEB-V2 image-tasks/mmeb_v1.tar.gz, extracted)
  video-tasks/data/{msr-vtt,msvd,didemo,vatex,youcook2-val}.jsonl      # video retrieval annotations
  video-tasks/data/{task}/            # snapshot of the Hub dataset of every other video task, named as in
                                      #   MMEB_V2_TASKS (K700 = VLM2Vec/Kinetics-700, NExTQA = lmms-lab/NExTQA,
                                      #   MVBench = OpenGVLab/MVBench's json/, ...); parquet, json or jsonl
  video-tasks/frames/video_ret/{task}/{video id}/*.jpg                 # extracted frames (video-tasks/frames/*)
  video-tasks/frames/video_cls/{K700,SSv2,HMDB51,UCF101,Breakfast}/{video id}/*.jpg
  video-tasks/frames/video_qa/{task}/{video id}/*.jpg                  # MVBench: {subset}/{video file}/
  video-tasks/frames/video_mret/{QVHighlight,Charades_STA}/{video}/{query,positive*,negative*}/*.jpg
  video-tasks/frames/video_mret/MomentSeeker/{video_frames/{clip}/*.jpg, query_*.jpg}
  visdoc-tasks/data/{dataset}/{queries,corpus,qrels}/*.parquet   # BEIR layout (ViDoRe, VisRAG, ViDoSeek, ...)
```

Image tasks rank each query against its own candidate list (the first one correct); VisDoc tasks every query
against the whole page corpus, with graded qrels (pages are written once as PNG files beside the data, under
`visdoc-tasks/{task}/`); the video tasks are read by `transformers_rime.evaluation.mmeb_video`, 8 frames sampled
evenly from each frame folder.

```python
tasks = read_mmeb_v2("/data/MMEB-V2", names=["MSCOCO_t2i", "ViDoRe_docvqa", "MSR-VTT", "NExTQA"])
evaluate(encoder, tasks, output_dir="mmeb-out", benchmark="MMEB-V2")
```
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from .mmeb import MMEB_V2_BY_NAME, MMEB_V2_TASKS
from .mmeb_files import Corpus, build_task, frame_paths, join, read_rows
from .mmeb_video import read_mmeb_video_retrieval_task, read_mmeb_video_task
from .tasks import RetrievalTask


logger = logging.getLogger(__name__)

_IMAGE_TOKEN = "<|image_1|>"

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


def read_mmeb_v2(root: str | Path, names=None, *, num_frames: int = 8) -> list[RetrievalTask]:
    """The MMEB-V2 tasks `names` (default: all 78) from a local copy laid out as in the module docstring; video
    items take `num_frames` frames."""
    root = Path(root)
    names = [task.name for task in MMEB_V2_TASKS] if names is None else list(names)
    unknown = [name for name in names if name not in MMEB_V2_BY_NAME]
    if unknown:
        raise ValueError(f"{unknown} not MMEB-V2 tasks (see transformers_rime.evaluation.MMEB_V2_TASKS).")
    tasks = []
    for name in names:
        modality = MMEB_V2_BY_NAME[name].modality
        if modality == "image":
            tasks.append(read_mmeb_image_task(name, root / "image-query" / name, root / "image-tasks" / "MMEB"))
        elif modality == "video":
            tasks.append(read_mmeb_video_task(name, root, num_frames=num_frames))
        else:
            tasks.append(read_mmeb_visdoc_task(name, root / "visdoc-tasks" / "data" / _VISDOC[name]))
    return tasks


def read_mmeb_image_task(name: str, annotations: str | Path, image_root: str | Path) -> RetrievalTask:
    """An MMEB-V2 image task from its MMEB_Test_Instruct parquet folder: each query ranked against its own
    candidates (`tgt_text` / `tgt_img_path`, the first correct), image paths relative to `image_root`.

    Candidates shared between queries (class names, the same image) are one corpus item. A row's instruction
    (`qry_inst`, `tgt_inst`, without the `<|image_1|>` placeholder) becomes the task's instruction when every row
    has the same one, and is put in front of the row's text otherwise.
    """
    rows = read_rows(Path(annotations))
    if not rows:
        raise ValueError(f"{name}: {annotations} holds no rows.")
    image_root = Path(image_root)

    def instructions(column: str) -> tuple[str, list[str]]:
        values = [_strip_image_token(row.get(column) or "") for row in rows]
        return (values[0], [""] * len(values)) if len(set(values)) == 1 else ("", values)

    query_instruction, query_prefixes = instructions("qry_inst")
    corpus_instruction, corpus_prefixes = instructions("tgt_inst")

    queries, relevance, pools, corpus = [], [], [], Corpus()
    for row, query_prefix, corpus_prefix in zip(rows, query_prefixes, corpus_prefixes):
        queries.append(_item(join(query_prefix, row.get("qry_text")), row.get("qry_img_path"), image_root))
        texts, paths = list(row["tgt_text"]), list(row.get("tgt_img_path") or [""] * len(row["tgt_text"]))
        pool = corpus.pool(
            ((path or "", (text or "").strip(), corpus_prefix), _item(join(corpus_prefix, text), path, image_root))
            for text, path in zip(texts, paths)
        )
        pools.append(pool)
        relevance.append({pool[0]: 1.0})
    return build_task(name, queries, corpus.items, relevance, pools, query_instruction, corpus_instruction)


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
    for row in read_rows(folder / "qrels"):
        if float(row["score"]) > 0:
            qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = float(row["score"])
    corpus, corpus_index = [], {}
    for row in read_rows(folder / "corpus", columns=["corpus-id", "image"]):
        corpus_id = str(row["corpus-id"])
        corpus_index[corpus_id] = len(corpus)
        corpus.append({"image": str(_page_file(image_dir, corpus_id, row["image"]))})
    queries, relevance, dropped = [], [], 0
    for row in read_rows(folder / "queries"):
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
    return build_task(name, queries, corpus, relevance, None, None, None)


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


__all__ = [
    "read_mmeb_image_task",
    "read_mmeb_v2",
    "read_mmeb_video_retrieval_task",
    "read_mmeb_visdoc_task",
    "frame_paths",
]
