"""MMEB-V2's video classification, QA and moment retrieval tasks, read from a small copy written by the test in
the layout `read_mmeb_v2` documents (Hub snapshots as parquet, json or jsonl; frame folders)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from transformers_rime import RimeEncoder
from transformers_rime.cli import main as rime
from transformers_rime.evaluation import MMEB_V2_TASKS, read_mmeb_v2
from transformers_rime.evaluation.mmeb_video import (
    QA_INSTRUCTION,
    read_mmeb_moment_retrieval_task,
    read_mmeb_video_classification_task,
)
from transformers_rime.testing import tiny_rime_model, tiny_rime_processor


def write_frames(folder, count=3, shade=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (16, 16), (shade, 10 * i, 0)).save(folder / f"{i:04d}.jpeg")


def write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")


def names(task, items):
    return [task.corpus[c].get("text") or task.corpus[c]["video"][0].split("/")[-2] for c in items]


@pytest.fixture
def video_root(tmp_path):
    root = tmp_path / "MMEB-V2"
    data, frames = root / "video-tasks" / "data", root / "video-tasks" / "frames"
    # classification: the snapshot holds a train split too, which must not be read
    write_parquet(
        data / "HMDB51" / "data" / "test-00000-of-00001.parquet",
        [{"video_id": v, "pos_text": label} for v, label in (("a", "run"), ("b", "clap"), ("c", "run"))],
    )
    write_parquet(data / "HMDB51" / "data" / "train-00000-of-00001.parquet", [{"video_id": "z", "pos_text": "x"}])
    write_parquet(
        data / "SmthSmthV2" / "test-00000-of-00001.parquet",
        [
            {"video_id": 7, "pos_text": "Opening something", "neg_text": ["Closing something", "Opening something"]},
            {"video_id": 8, "pos_text": "Closing something", "neg_text": ["Folding something", "Closing something"]},
        ],
    )
    for video in ("a", "b", "c"):
        write_frames(frames / "video_cls" / "HMDB51" / video, count=12)
    for video in ("7", "8"):
        write_frames(frames / "video_cls" / "SSv2" / video)
    # QA, one dataset each in its own columns and file format
    (data / "MVBench" / "json").mkdir(parents=True)
    (data / "MVBench" / "json" / "action_count.json").write_text(
        json.dumps([{"video": "c1.mp4", "question": "How many jumps?", "candidates": ["2", "3", "4"], "answer": "3"}])
    )
    (data / "MVBench" / "json" / "scene_transition.json").write_text(
        json.dumps(
            [
                {"video": "s1.mp4", "question": "Where to?", "candidates": ["beach", "park"], "answer": "park"},
                {"video": "s2.mp4", "question": "Where?", "candidates": ["x", "y"], "answer": "not an option"},
            ]
        )
    )
    write_parquet(
        data / "Video-MME" / "videomme" / "test-00000-of-00001.parquet",
        [
            {
                "videoID": "vm1",
                "question": "What colour is the car?",
                "options": ["A. Red.", "B. Blue.", "C. Green.", "D. White."],
                "answer": "B",
            }
        ],
    )
    nextqa_row = {"video": 4010, "question": "why did the boy fall", "answer": 2, "qid": 1}
    write_parquet(
        data / "NExTQA" / "MC" / "test-00000-of-00001.parquet",
        [{**nextqa_row, **{f"a{i}": f"reason {i}" for i in range(5)}}],
    )
    write_parquet(data / "NExTQA" / "OE" / "test-00000-of-00001.parquet", [{"video": 1, "question": "open"}])
    write_parquet(
        data / "EgoSchema" / "Subset" / "test-00000-of-00001.parquet",
        [
            {
                "video_idx": "e1",
                "question": "What is C doing?",
                "option": ["A. cooking.", "B. cleaning."],
                "answer": "1",
            }
        ],
    )
    write_jsonl(
        data / "ActivityNetQA.jsonl",
        [
            {"video_name": "abc", "question": "is the man outdoors", "answer": "no", "question_id": "q1"},
            {"video_name": "abd", "question": "is it raining", "answer": "yes", "question_id": "q2"},
        ],
    )
    for task, videos in (
        ("MVBench", ["action_count/c1.mp4", "scene_transition/s1.mp4", "scene_transition/s2.mp4"]),
        ("Video-MME", ["vm1"]),
        ("NExTQA", ["4010"]),
        ("EgoSchema", ["e1"]),
        ("ActivityNetQA", ["v_abc", "v_abd"]),
    ):
        for video in videos:
            write_frames(frames / "video_qa" / task / video)
    # moment retrieval: clip folders beside the query folder; MomentSeeker's three kinds of query
    write_parquet(
        data / "QVHighlight" / "test-00000-of-00001.parquet", [{"query": "a dog jumps", "video_path": "x/qv1.mp4"}]
    )
    for folder, shade in (("query", 0), ("positive_0", 200), ("negative_0", 50), ("negative_1", 90)):
        write_frames(frames / "video_mret" / "QVHighlight" / "qv1" / folder, shade=shade)
    write_jsonl(
        data / "MomentSeeker" / "test.jsonl",
        [
            {
                "query": "the goal",
                "input_frames": "",
                "positive_frames": [{"output_path": "clips/m1/p.mp4"}],
                "negative_frames": [{"output_path": "clips/m1/n.mp4"}, {"output_path": "clips/shared.mp4"}],
            },
            {
                "query": "this player later",
                "input_frames": "m2/frame.jpg",
                "positive_frames": [{"output_path": "clips/shared.mp4"}],
                "negative_frames": [{"output_path": "clips/m1/p.mp4"}],
            },
            {
                "query": "what happens next",
                "input_frames": "m3/context.mp4",
                "positive_frames": [{"output_path": "clips/m1/n.mp4"}],
                "negative_frames": [{"output_path": "clips/shared.mp4"}],
            },
        ],
    )
    seeker = frames / "video_mret" / "MomentSeeker"
    for clip in ("clips_m1_p", "clips_m1_n", "clips_shared", "m3_context"):
        write_frames(seeker / "video_frames" / clip)
    (seeker / "query_m2").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(seeker / "query_m2" / "frame.jpg")
    return root


def test_global_classification_ranks_every_video_against_all_class_names(video_root, caplog):
    (task,) = read_mmeb_v2(video_root, ["HMDB51"], num_frames=4)
    assert task.pools is None and task.group == "video/CLS" and task.metric == "hit@1"
    assert [item["text"] for item in task.corpus] == ["run", "clap"]  # train split ("x") not read
    assert task.relevance == [{0: 1.0}, {1: 1.0}, {0: 1.0}]
    assert task.query_instruction.startswith("What actions") and task.corpus_instruction == ""
    assert [f.rsplit("/", 1)[1] for f in task.queries[0]["video"]] == [
        "0000.jpeg",
        "0003.jpeg",
        "0007.jpeg",
        "0011.jpeg",
    ]
    assert "2 class names (from the rows) where the dataset has 51" in caplog.text

    folder = video_root / "video-tasks" / "data" / "HMDB51"
    (folder / "labels.txt").write_text("clap\nrun\nwave\n")
    (task,) = read_mmeb_v2(video_root, ["HMDB51"])
    assert [item["text"] for item in task.corpus] == ["clap", "run", "wave"]  # a class without a test video too
    assert task.relevance == [{1: 1.0}, {0: 1.0}, {1: 1.0}]
    with pytest.raises(ValueError, match="row 2: class 'clap' is not among the 1 labels"):
        read_mmeb_video_classification_task(
            "HMDB51", folder, video_root / "video-tasks/frames/video_cls/HMDB51", labels=["run"]
        )


def test_ssv2_ranks_each_video_against_its_own_options(video_root):
    (task,) = read_mmeb_v2(video_root, ["SmthSmthV2"])
    assert task.pools is not None
    assert [names(task, pool) for pool in task.pools] == [
        ["Closing something", "Opening something"],
        ["Folding something", "Closing something"],
    ]
    assert [names(task, grades) for grades in task.relevance] == [["Opening something"], ["Closing something"]]


def test_video_qa_tasks_write_the_question_and_options_as_vlm2vec_does(video_root, caplog):
    tasks = {
        t.name: t for t in read_mmeb_v2(video_root, ["MVBench", "Video-MME", "NExTQA", "EgoSchema", "ActivityNetQA"])
    }
    assert all(t.query_instruction == QA_INSTRUCTION and t.corpus_instruction == "" for t in tasks.values())
    assert all(t.group == "video/QA" and t.pools is not None for t in tasks.values())

    mvbench = tasks["MVBench"]  # subset from the file name; the row whose answer is no option is skipped
    assert [q["text"] for q in mvbench.queries] == [
        "How many jumps?\nOptions:\n(A) 2\n(B) 3\n(C) 4",
        "Where to?\nOptions:\n(A) beach\n(B) park",
    ]
    assert mvbench.queries[1]["video"][0].split("/")[-3:-1] == ["scene_transition", "s1.mp4"]
    assert [names(mvbench, g) for g in mvbench.relevance] == [["(B) 3"], ["(B) park"]]
    assert "skipped 1 rows whose answer is not one of their options" in caplog.text

    videomme = tasks["Video-MME"]
    assert videomme.queries[0]["text"] == "What colour is the car?\nA. Red.\nB. Blue.\nC. Green.\nD. White."
    assert names(videomme, videomme.pools[0]) == ["Red", "Blue", "Green", "White"]
    assert names(videomme, videomme.relevance[0]) == ["Blue"]

    nextqa = tasks["NExTQA"]  # only the MC configuration
    assert len(nextqa.queries) == 1 and names(nextqa, nextqa.relevance[0]) == ["(C) reason 2"]
    assert nextqa.queries[0]["text"].endswith("(E) reason 4")

    egoschema = tasks["EgoSchema"]
    assert egoschema.queries[0]["text"] == "What is C doing?A. cooking. B. cleaning."
    assert names(egoschema, egoschema.relevance[0]) == ["cleaning"]

    activitynet = tasks["ActivityNetQA"]  # one shared yes / no corpus
    assert [item["text"] for item in activitynet.corpus] == ["yes", "no"]
    assert activitynet.pools == [[0, 1], [0, 1]] and activitynet.relevance == [{1: 1.0}, {0: 1.0}]
    assert activitynet.queries[0]["text"] == "is the man outdoors? (A) yes; (B) no."
    assert activitynet.queries[0]["video"][0].split("/")[-2] == "v_abc"


def test_moment_retrieval_ranks_the_query_against_its_clips(video_root):
    (task,) = read_mmeb_v2(video_root, ["QVHighlight"])
    assert task.group == "video/MRET" and task.queries[0]["text"] == "a dog jumps"
    assert task.queries[0]["video"][0].split("/")[-2] == "query"
    assert names(task, task.pools[0]) == ["negative_0", "negative_1", "positive_0"]
    assert names(task, task.relevance[0]) == ["positive_0"]


def test_momentseeker_reads_text_image_and_video_queries_and_shares_clips(video_root):
    frame_root = video_root / "video-tasks/frames/video_mret/MomentSeeker"
    task = read_mmeb_moment_retrieval_task("MomentSeeker", video_root / "video-tasks/data/MomentSeeker", frame_root)
    text, image, video = task.queries
    assert text == {"text": "Find the clip that corresponds to the given text: the goal"}
    assert image["text"].startswith("Select the video clip") and image["image"].endswith("query_m2/frame.jpg")
    assert video["text"].endswith("video segment: what happens next") and len(video["video"]) == 3
    assert task.query_instruction == "" and task.corpus_instruction.startswith("Understand")
    assert len(task.corpus) == 3  # three distinct clips across the rows
    assert [names(task, p) for p in task.pools] == [
        ["clips_m1_p", "clips_m1_n", "clips_shared"],
        ["clips_shared", "clips_m1_p"],
        ["clips_m1_n", "clips_shared"],
    ]
    assert [names(task, g) for g in task.relevance] == [["clips_m1_p"], ["clips_shared"], ["clips_m1_n"]]


def test_missing_frames_name_the_row(video_root):
    for frame in (video_root / "video-tasks/frames/video_qa/NExTQA/4010").iterdir():
        frame.unlink()
    with pytest.raises(FileNotFoundError, match="test-00000-of-00001.parquet, row 1: no frames in .*4010"):
        read_mmeb_v2(video_root, ["NExTQA"])


def test_every_mmeb_task_has_a_reader():
    from transformers_rime.evaluation.mmeb_data import _VISDOC
    from transformers_rime.evaluation.mmeb_video import (
        MOMENT_RETRIEVAL,
        VIDEO_CLASSIFICATION,
        VIDEO_QA,
        VIDEO_RETRIEVAL,
    )

    video = {*VIDEO_RETRIEVAL, *VIDEO_CLASSIFICATION, *VIDEO_QA, *MOMENT_RETRIEVAL}
    readable = [t for t in MMEB_V2_TASKS if t.modality == "image" or t.name in video or t.name in _VISDOC]
    assert len(readable) == len(MMEB_V2_TASKS) == 78


def test_rime_eval_scores_video_tasks_in_all_four_mode_pairs(video_root, tmp_path):
    processor = tiny_rime_processor()
    RimeEncoder(tiny_rime_model(processor=processor), processor).save_pretrained(tmp_path / "model")
    names_ = ["HMDB51", "ActivityNetQA", "QVHighlight"]
    code = rime(
        ["eval", "--model", str(tmp_path / "model"), "--mmeb-v2", str(video_root), "--mmeb-tasks", *names_]
        + ["--output-dir", str(tmp_path / "out"), "--max-new-tokens", "4"]
    )
    assert code == 0
    scores = json.loads((tmp_path / "out" / "results.json").read_text())["scores"]
    for name in names_:
        assert set(scores[name]) >= {"disc->disc", "disc->gen", "gen->disc", "gen->gen"}
        assert all(0.0 <= scores[name][pair] <= 1.0 for pair in ("disc->disc", "gen->gen"))
    aggregates = json.loads((tmp_path / "out" / "mmeb_v2.json").read_text())["scores"]
    assert set(aggregates) == {"overall (3/78 tasks)", "video", "video/CLS", "video/QA", "video/MRET"}
    assert aggregates["video"]["disc->disc"] == pytest.approx(np.mean([scores[n]["disc->disc"] for n in names_]))
