"""Read MMEB-V2's 18 video tasks from a local copy: classification, QA, retrieval and moment retrieval.

Every query or candidate video is a folder of extracted frames (MMEB-V2's `video-tasks/frames` tarballs), of which
`num_frames` are taken evenly. The annotations are local snapshots of the Hub datasets VLM2Vec's harness loads
(`src/data/eval_dataset/*`, `main` @ `6e1e1d4`), read as it reads them:

- **classification** (HMDB51, UCF101, K700, Breakfast: the video against every class name; SmthSmthV2: against
  its row's own `neg_text` list, first 1,000 rows): rows `video_id`, `pos_text`;
- **QA** (MVBench, Video-MME, NExTQA, EgoSchema, ActivityNetQA): the video with its question and lettered options
  against the options; each dataset has its own columns (`_QA_ROWS`);
- **retrieval** (MSR-VTT, MSVD, DiDeMo, VATEX, YouCook2): every caption against all videos;
- **moment retrieval** (QVHighlight, Charades-STA: the video and a sentence against the clip folders beside the
  `query` folder, `positive*` ones correct; MomentSeeker: text, image or video queries against the row's
  `positive_frames` and `negative_frames` clips).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from .mmeb_files import Corpus, build_task, data_files, frame_paths, join, read_rows, required_frames, rows_of
from .tasks import RetrievalTask


logger = logging.getLogger(__name__)

VIDEO_CORPUS_INSTRUCTION = "Understand the content of the provided video."
QA_INSTRUCTION = (
    "Given a video and a question, select the most accurate answer from the provided candidates. "
    "Return only the exact text of your chosen answer. Question:"
)

# task -> (annotation file, video id column, caption column, query instruction, skip rows without frames)
VIDEO_RETRIEVAL = {
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

# task -> (frame folder under video_cls, query instruction, number of classes or None for a local task)
VIDEO_CLASSIFICATION = {
    "K700": ("K700", "Recognize the category of the video content.", 700),
    "HMDB51": ("HMDB51", "What actions or objects interactions are the person in the video doing?", 51),
    "UCF101": ("UCF101", "What activities or sports are being performed by the person in the video?", 101),
    "Breakfast": ("Breakfast", "Recognize the breakfast type that the person is cooking in the video.", 10),
    "SmthSmthV2": (
        "SSv2",
        "What actions or object interactions are being performed by the person in the video?",
        None,
    ),
}
_SSV2_QUERIES = 1000  # VLM2Vec scores the first 1,000 rows

VIDEO_QA = ("MVBench", "Video-MME", "NExTQA", "EgoSchema", "ActivityNetQA")
# the Hub configuration VLM2Vec loads, a subfolder of the snapshot
_QA_SUBSET = {"NExTQA": "MC", "EgoSchema": "Subset"}

# task -> frame folder under video_mret
MOMENT_RETRIEVAL = {"QVHighlight": "QVHighlight", "Charades-STA": "Charades_STA", "MomentSeeker": "MomentSeeker"}
_MOMENT_QUERY_INSTRUCTION = "Find the clip that corresponds to the described scene in the given video:"
_MOMENTSEEKER_INSTRUCTIONS = {
    "text": "Find the clip that corresponds to the given text:",
    "image": "Select the video clip that aligns with the given text and image:",
    "video": "Find the clip that corresponds to the given sentence and video segment:",
}
_MOMENTSEEKER_CORPUS_INSTRUCTION = "Understand the content of the provided video clip."

# what the Hub calls the split VLM2Vec evaluates
_SPLIT = {"MVBench": "train"}


def read_mmeb_video_task(name: str, root: str | Path, *, num_frames: int = 8) -> RetrievalTask:
    """An MMEB-V2 video task from `root/video-tasks` (layout in `transformers_rime.evaluation.mmeb_data`)."""
    video = Path(root) / "video-tasks"
    frames = video / "frames"
    if name in VIDEO_RETRIEVAL:
        annotations, frame_root = video / "data" / VIDEO_RETRIEVAL[name][0], frames / "video_ret" / name
        return read_mmeb_video_retrieval_task(name, annotations, frame_root, num_frames=num_frames)
    annotations = video / "data" / name
    if not annotations.exists() and annotations.with_suffix(".jsonl").is_file():
        annotations = annotations.with_suffix(".jsonl")
    if name in VIDEO_CLASSIFICATION:
        frame_root = frames / "video_cls" / VIDEO_CLASSIFICATION[name][0]
        return read_mmeb_video_classification_task(name, annotations, frame_root, num_frames=num_frames)
    if name in VIDEO_QA:
        if name in _QA_SUBSET and (annotations / _QA_SUBSET[name]).is_dir():
            annotations = annotations / _QA_SUBSET[name]
        return read_mmeb_video_qa_task(name, annotations, frames / "video_qa" / name, num_frames=num_frames)
    if name in MOMENT_RETRIEVAL:
        frame_root = frames / "video_mret" / MOMENT_RETRIEVAL[name]
        return read_mmeb_moment_retrieval_task(name, annotations, frame_root, num_frames=num_frames)
    raise ValueError(f"{name!r} is not an MMEB-V2 video task.")


def read_mmeb_video_retrieval_task(
    name: str, annotations: str | Path, frame_root: str | Path, *, num_frames: int = 8
) -> RetrievalTask:
    """An MMEB-V2 video retrieval task (MSR-VTT, MSVD, DiDeMo, VATEX, YouCook2): every caption against all videos.

    `annotations` is the task's jsonl file; each video's frames are image files in `frame_root/{video id}/`, of which
    `num_frames` are taken evenly (all of them when there are fewer).
    """
    if name not in VIDEO_RETRIEVAL:
        raise ValueError(f"{name!r} is not an MMEB-V2 video retrieval task ({', '.join(VIDEO_RETRIEVAL)}).")
    _, id_column, caption_column, query_instruction, skip_missing = VIDEO_RETRIEVAL[name]
    annotations, frame_root = Path(annotations), Path(frame_root)
    if not annotations.is_file():
        raise FileNotFoundError(f"{name}: annotation file {annotations} is missing.")
    queries, relevance, corpus, skipped = [], [], Corpus(), 0
    for line_number, line in enumerate(annotations.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        video_id = Path(row[id_column]).stem if id_column == "video" else str(row[id_column])
        caption = row[caption_column]
        caption = caption[0] if isinstance(caption, list) else caption
        if video_id not in corpus:
            frames = frame_paths(frame_root / video_id, num_frames)
            if not frames:
                if skip_missing:  # as VLM2Vec does for these two tasks
                    skipped += 1
                    continue
                raise FileNotFoundError(f"{annotations}:{line_number}: no frames in {frame_root / video_id}.")
            corpus.add(video_id, {"video": frames})
        queries.append({"text": caption})
        relevance.append({corpus.add(video_id): 1.0})
    if skipped:
        logger.warning("%s: skipped %d rows whose video has no frames (as VLM2Vec does).", name, skipped)
    return build_task(name, queries, corpus.items, relevance, None, query_instruction, VIDEO_CORPUS_INSTRUCTION)


def read_mmeb_video_classification_task(
    name: str,
    annotations: str | Path,
    frame_root: str | Path,
    *,
    num_frames: int = 8,
    labels: list[str] | None = None,
) -> RetrievalTask:
    """An MMEB-V2 video classification task: each video (`frame_root/{video_id}/`) against class names.

    HMDB51, UCF101, K700 and Breakfast rank every video against all class names: `labels`, else a `labels.txt` file
    (one name per line) in the annotation folder, else every `pos_text` of the rows; a warning says when that is
    fewer classes than the dataset has, since the scores are then not MMEB-V2's. SmthSmthV2 ranks its first 1,000
    rows each against its own `neg_text` list (which holds the answer).
    """
    if name not in VIDEO_CLASSIFICATION:
        raise ValueError(f"{name!r} is not an MMEB-V2 video classification task ({', '.join(VIDEO_CLASSIFICATION)}).")
    _, instruction, num_classes = VIDEO_CLASSIFICATION[name]
    annotations, frame_root = Path(annotations), Path(frame_root)
    rows = read_rows(annotations, split=_split(name))
    if num_classes is None:
        rows = rows[:_SSV2_QUERIES]
    corpus, queries, relevance, pools = Corpus(), [], [], []
    if num_classes is not None:
        labels_file = annotations / "labels.txt"
        if labels is None and labels_file.is_file():
            labels = [line.strip() for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        for label in labels or []:
            corpus.add(label, {"text": label})
    for number, row in enumerate(rows, start=1):
        video_id = str(row["video_id"])
        queries.append({"video": required_frames(frame_root / video_id, num_frames, f"{name} row {number}")})
        label = row["pos_text"]
        if num_classes is None:
            pools.append(corpus.pool((text, {"text": text}) for text in [*row["neg_text"], label]))
        elif labels and label not in corpus:
            raise ValueError(f"{name} row {number}: class {label!r} is not among the {len(labels)} labels given.")
        relevance.append({corpus.add(label, {"text": label}): 1.0})
    if num_classes is not None and len(corpus.items) < num_classes:
        logger.warning(
            "%s: %d class names (from the rows) where the dataset has %d; MMEB-V2 ranks against all of them, so "
            "pass `labels` or put a labels.txt beside the annotations to score as it does.",
            name,
            len(corpus.items),
            num_classes,
        )
    return build_task(name, queries, corpus.items, relevance, pools or None, instruction, "")


def read_mmeb_video_qa_task(
    name: str, annotations: str | Path, frame_root: str | Path, *, num_frames: int = 8
) -> RetrievalTask:
    """An MMEB-V2 video QA task: the video's frames and the question with its options (as VLM2Vec writes them)
    against the row's options, the answer correct.

    Rows whose answer is not among their options are skipped with a warning: no candidate can be correct there.
    MVBench's frame folders are `frame_root/{subset}/{video}`, its subset the annotation file's name (or a `subset`
    column); the other tasks' are `frame_root/{video id}`.
    """
    if name not in VIDEO_QA:
        raise ValueError(f"{name!r} is not an MMEB-V2 video QA task ({', '.join(VIDEO_QA)}).")
    frame_root = Path(frame_root)
    corpus, queries, relevance, pools, skipped = Corpus(), [], [], [], 0
    for file in data_files(annotations, _split(name)):
        for number, row in enumerate(rows_of(file), start=1):
            if name == "MVBench":
                row = {"subset": file.stem, **row}
            video_dir, text, options, answer = _QA_ROWS[name](row)
            if answer is None:
                skipped += 1
                continue
            frames = required_frames(frame_root / video_dir, num_frames, f"{file}, row {number}")
            queries.append({"text": text, "video": frames})
            pool = corpus.pool((option, {"text": option}) for option in options)
            pools.append(pool)
            relevance.append({corpus.add(options[answer], {"text": options[answer]}): 1.0})
    if skipped:
        logger.warning("%s: skipped %d rows whose answer is not one of their options.", name, skipped)
    return build_task(name, queries, corpus.items, relevance, pools, QA_INSTRUCTION, "")


def read_mmeb_moment_retrieval_task(
    name: str, annotations: str | Path, frame_root: str | Path, *, num_frames: int = 8
) -> RetrievalTask:
    """An MMEB-V2 moment retrieval task: each query against its own clips (frame folders), the positive ones correct.

    QVHighlight and Charades-STA: rows `query`, `video_path`; the query is the sentence with the frames of
    `frame_root/{video name}/query/`, the candidates every other folder there (`positive*` correct). MomentSeeker:
    rows `query`, `input_frames` (empty, an image or a video), `positive_frames` and `negative_frames` (clip
    `output_path`s), whose frames are under `frame_root/video_frames/` (the path with `/` as `_`, no `.mp4`) and a
    query image at `frame_root/query_{input_frames}`.
    """
    if name not in MOMENT_RETRIEVAL:
        raise ValueError(f"{name!r} is not an MMEB-V2 moment retrieval task ({', '.join(MOMENT_RETRIEVAL)}).")
    frame_root = Path(frame_root)
    read_row = _momentseeker_row if name == "MomentSeeker" else _moment_row
    corpus, queries, relevance, pools = Corpus(), [], [], []
    for number, row in enumerate(read_rows(annotations, split=_split(name)), start=1):
        query, clips = read_row(row, frame_root, num_frames, f"{name} row {number}")
        pool = corpus.pool((str(folder), {"video": frames}) for folder, (frames, _) in clips.items())
        positives = {index: 1.0 for index, (_, positive) in zip(pool, clips.values()) if positive}
        if not positives:
            raise FileNotFoundError(f"{name} row {number}: no positive clip among {list(clips)}.")
        queries.append(query)
        pools.append(pool)
        relevance.append(positives)
    if name == "MomentSeeker":  # the instruction depends on the query's kind, so it is in each query's text
        return build_task(name, queries, corpus.items, relevance, pools, "", _MOMENTSEEKER_CORPUS_INSTRUCTION)
    return build_task(
        name, queries, corpus.items, relevance, pools, _MOMENT_QUERY_INSTRUCTION, VIDEO_CORPUS_INSTRUCTION
    )


def _moment_row(row: dict, frame_root: Path, num_frames: int, where: str):
    video_dir = frame_root / Path(row["video_path"]).stem
    query = {"text": row["query"], "video": required_frames(video_dir / "query", num_frames, where)}
    clip_dirs = sorted((p for p in video_dir.iterdir() if p.is_dir() and p.name != "query"), key=lambda p: p.name)
    clips = {d: (required_frames(d, num_frames, where), d.name.startswith("positive")) for d in clip_dirs}
    return query, clips


def _momentseeker_row(row: dict, frame_root: Path, num_frames: int, where: str):
    source = row.get("input_frames") or ""
    if source.endswith(".mp4"):
        frames = required_frames(frame_root / "video_frames" / _clip_name(source), num_frames, where)
        query = {"text": join(_MOMENTSEEKER_INSTRUCTIONS["video"], row["query"]), "video": frames}
    elif source.endswith(".jpg"):
        query = {"text": join(_MOMENTSEEKER_INSTRUCTIONS["image"], row["query"])}
        query["image"] = str(frame_root / f"query_{source}")
    else:
        query = {"text": join(_MOMENTSEEKER_INSTRUCTIONS["text"], row["query"])}
    clips = {}
    for column, positive in (("positive_frames", True), ("negative_frames", False)):
        for clip in row[column]:
            folder = frame_root / "video_frames" / _clip_name(clip["output_path"])
            clips[folder] = (required_frames(folder, num_frames, where), positive)
    return query, clips


def _clip_name(path: str) -> str:
    return path.split(".mp4")[0].replace("/", "_")


def _split(name: str) -> str:
    return _SPLIT.get(name, "test")


# --- one function per QA dataset: row -> (frame folder, query text, options, index of the answer or None) ---


def _lettered(question: str, candidates: list[str], answer: str):
    """VLM2Vec's `qa_template`: the question, then `Options:` and `(A) ...` lines; the options carry the letters."""
    options = [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(candidates)]
    text = "\n".join([question, "Options:", *options])
    return text, options, candidates.index(answer) if answer in candidates else None


def _option_text(option: str) -> str:
    """`"B. the man sits."` -> `"the man sits"` (the letter and surrounding dots and spaces dropped, as VLM2Vec)."""
    return re.sub(r"^[A-Z]\.\s", "", option).strip(". ")


def _mvbench(row):
    subset = row.get("subset")
    return (Path(subset) / row["video"], *_lettered(row["question"], list(row["candidates"]), row["answer"]))


def _nextqa(row):
    candidates = [row[f"a{i}"] for i in range(5)]
    text, options, _ = _lettered(row["question"], candidates, None)
    return str(row["video"]), text, options, int(row["answer"])


def _videomme(row):
    options = list(row["options"])
    answer = "ABCD".index(row["answer"]) if row["answer"] in ("A", "B", "C", "D") else None
    return str(row["videoID"]), row["question"] + "\n" + "\n".join(options), [_option_text(o) for o in options], answer


def _egoschema(row):
    options = list(row["option"])
    # VLM2Vec joins the question and the options without a space after the question
    return (
        str(row["video_idx"]),
        row["question"] + " ".join(options),
        [_option_text(o) for o in options],
        int(row["answer"]),
    )


def _activitynetqa(row):
    options = ["yes", "no"]
    answer = options.index(row["answer"]) if row["answer"] in options else None
    return f"v_{row['video_name']}", row["question"] + "? (A) yes; (B) no.", options, answer


_QA_ROWS = {
    "MVBench": _mvbench,
    "Video-MME": _videomme,
    "NExTQA": _nextqa,
    "EgoSchema": _egoschema,
    "ActivityNetQA": _activitynetqa,
}
