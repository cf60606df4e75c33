"""Readers for MMEB-V2's own evaluation files, on a small copy written by the test in VLM2Vec's layout."""

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from transformers_rime import RimeEncoder
from transformers_rime.cli import main as rime
from transformers_rime.evaluation import read_mmeb_v2
from transformers_rime.evaluation.mmeb import VISDOC_CORPUS_INSTRUCTION, VISDOC_QUERY_INSTRUCTION
from transformers_rime.evaluation.mmeb_data import (
    frame_paths,
    read_mmeb_image_task,
    read_mmeb_video_retrieval_task,
    read_mmeb_visdoc_task,
)
from transformers_rime.testing import tiny_rime_model, tiny_rime_processor


COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "white": (250, 250, 250)}


def write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def png_bytes(rgb) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def mmeb_root(tmp_path):
    """Two image tasks, two video retrieval tasks and one VisDoc task, in the layout `read_mmeb_v2` documents."""
    root = tmp_path / "MMEB-V2"
    images = root / "image-tasks" / "MMEB"
    for name, rgb in COLORS.items():
        (images / "coco").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), rgb).save(images / "coco" / f"{name}.jpg")
    # text -> image, local pools that share images; one instruction for every row
    write_parquet(
        root / "image-query" / "MSCOCO_t2i" / "test-00000-of-00001.parquet",
        [
            {
                "qry_inst": "Find me an everyday image that matches the given caption:",
                "qry_text": f"a {positive} square",
                "qry_img_path": "",
                "tgt_inst": "<|image_1|> Represent the given image.",
                "tgt_text": ["", "", ""],
                "tgt_img_path": [f"coco/{positive}.jpg", f"coco/{other}.jpg", "coco/white.jpg"],
            }
            for positive, other in (("red", "green"), ("green", "blue"), ("blue", "red"))
        ],
    )
    # image -> class name; instructions differ between rows, so they stay in each row's text
    write_parquet(
        root / "image-query" / "ImageNet-1K" / "test-00000-of-00001.parquet",
        [
            {
                "qry_inst": f"<|image_1|> Represent the given image for classification ({i})",
                "qry_text": "",
                "qry_img_path": f"coco/{label}.jpg",
                "tgt_text": [label, "white", "green"] if label != "green" else [label, "white", "red"],
                "tgt_img_path": ["", "", ""],
            }
            for i, label in enumerate(("red", "green"))
        ],
    )
    # video retrieval: 12 frames per video, named so that a plain string sort would misorder them
    frames = root / "video-tasks" / "frames" / "video_ret"
    for task in ("MSR-VTT", "MSVD"):
        for video in ("v1", "v2"):
            (frames / task / video).mkdir(parents=True)
            for i in range(1, 13):
                Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(frames / task / video / f"frame_{i}.jpg")
    data = root / "video-tasks" / "data"
    data.mkdir(parents=True)
    (data / "msr-vtt.jsonl").write_text(
        "\n".join(
            json.dumps({"video_id": v, "video": f"{v}.mp4", "caption": c})
            for v, c in (("v1", "a dog runs"), ("v2", "a cat sleeps"), ("v1", "a puppy running"))
        )
    )
    (data / "msvd.jsonl").write_text(
        "\n".join(
            json.dumps({"video_id": v, "video": f"{v}.avi", "caption": [c, "second caption"]})
            for v, c in (("v1", "a man cooks"), ("v3", "no frames for this one"), ("v2", "a woman sings"))
        )
    )
    # VisDoc (BEIR): graded qrels, a zero grade, a query without qrels and a language column
    beir = root / "visdoc-tasks" / "data" / "docvqa_test_subsampled_beir"
    write_parquet(
        beir / "corpus" / "test-00000-of-00001.parquet",
        [
            {"corpus-id": f"page/{name}", "image": {"bytes": png_bytes(rgb), "path": None}}
            for name, rgb in COLORS.items()
        ],
    )
    write_parquet(
        beir / "queries" / "test-00000-of-00001.parquet",
        [
            {"query-id": "q1", "query": "the red page", "language": "english"},
            {"query-id": "q2", "query": "la page verte", "language": "french"},
            {"query-id": "q3", "query": "a query nobody judged", "language": "english"},
        ],
    )
    write_parquet(
        beir / "qrels" / "test-00000-of-00001.parquet",
        [
            {"query-id": "q1", "corpus-id": "page/red", "score": 2},
            {"query-id": "q1", "corpus-id": "page/white", "score": 1},
            {"query-id": "q1", "corpus-id": "page/blue", "score": 0},
            {"query-id": "q2", "corpus-id": "page/green", "score": 1},
        ],
    )
    return root


def test_image_task_pools_share_candidates_and_the_first_is_correct(mmeb_root):
    task = read_mmeb_image_task("MSCOCO_t2i", mmeb_root / "image-query" / "MSCOCO_t2i", mmeb_root / "image-tasks/MMEB")
    assert task.metric == "hit@1" and task.group == "image/RET" and task.pools is not None
    assert task.query_instruction == "Find me an everyday image that matches the given caption:"
    assert task.corpus_instruction == "Represent the given image."  # the image placeholder is dropped
    paths = [item["image"] for item in task.corpus]
    assert len(paths) == 4 and len(set(paths)) == 4  # red, green, white, blue: each image once
    assert all(item.keys() == {"image"} for item in task.corpus)  # empty candidate texts are not items
    names = [p.rsplit("/", 1)[1] for p in paths]
    assert [[names[c] for c in pool] for pool in task.pools] == [
        ["red.jpg", "green.jpg", "white.jpg"],
        ["green.jpg", "blue.jpg", "white.jpg"],
        ["blue.jpg", "red.jpg", "white.jpg"],
    ]
    assert [list(grades) for grades in task.relevance] == [[pool[0]] for pool in task.pools]
    assert task.queries[0] == {"text": "a red square"}


def test_image_task_keeps_row_instructions_in_the_text_when_they_differ(mmeb_root):
    task = read_mmeb_image_task(
        "ImageNet-1K", mmeb_root / "image-query" / "ImageNet-1K", mmeb_root / "image-tasks/MMEB"
    )
    assert task.query_instruction == ""  # not the processor's default: MMEB's rows carry their own
    assert task.queries[1]["text"] == "Represent the given image for classification (1)"
    assert task.queries[1]["image"].endswith("coco/green.jpg")
    assert [item["text"] for item in task.corpus] == ["red", "white", "green"]  # class names shared by both rows
    assert task.pools == [[0, 1, 2], [2, 1, 0]]


def test_video_retrieval_samples_frames_evenly_and_shares_videos(mmeb_root):
    task = read_mmeb_video_retrieval_task(
        "MSR-VTT",
        mmeb_root / "video-tasks/data/msr-vtt.jsonl",
        mmeb_root / "video-tasks/frames/video_ret/MSR-VTT",
        num_frames=4,
    )
    assert task.pools is None and len(task.corpus) == 2  # v1 is relevant to two captions, embedded once
    assert task.relevance == [{0: 1.0}, {1: 1.0}, {0: 1.0}]
    assert task.query_instruction == "Find a video that contains the following visual content:"
    # linspace(0, 11, 4) -> frames 1, 4, 8, 12 in natural order (frame_10 after frame_9)
    assert [f.rsplit("/", 1)[1] for f in task.corpus[0]["video"]] == [
        "frame_1.jpg",
        "frame_4.jpg",
        "frame_8.jpg",
        "frame_12.jpg",
    ]
    assert len(frame_paths(mmeb_root / "video-tasks/frames/video_ret/MSR-VTT/v1", 20)) == 12


def test_video_rows_without_frames_are_skipped_only_where_vlm2vec_skips(mmeb_root, caplog):
    msvd = read_mmeb_video_retrieval_task(
        "MSVD", mmeb_root / "video-tasks/data/msvd.jsonl", mmeb_root / "video-tasks/frames/video_ret/MSVD"
    )
    assert [q["text"] for q in msvd.queries] == ["a man cooks", "a woman sings"]  # first caption of the list
    assert "skipped 1 rows" in caplog.text
    (mmeb_root / "video-tasks/data/msr-vtt.jsonl").write_text(json.dumps({"video_id": "v9", "caption": "x"}))
    with pytest.raises(FileNotFoundError, match="msr-vtt.jsonl:1: no frames"):
        read_mmeb_video_retrieval_task(
            "MSR-VTT", mmeb_root / "video-tasks/data/msr-vtt.jsonl", mmeb_root / "video-tasks/frames/video_ret/MSR-VTT"
        )


def test_visdoc_task_has_graded_relevance_and_writes_each_page_once(mmeb_root, caplog):
    folder = mmeb_root / "visdoc-tasks/data/docvqa_test_subsampled_beir"
    task = read_mmeb_visdoc_task("ViDoRe_docvqa", folder)
    assert task.metric == "ndcg_linear@5" and task.pools is None and task.group == "visdoc/VDRv1"
    assert (task.query_instruction, task.corpus_instruction) == (VISDOC_QUERY_INSTRUCTION, VISDOC_CORPUS_INSTRUCTION)
    assert [q["text"] for q in task.queries] == ["the red page", "la page verte"]  # q3 has no qrels
    assert "dropped 1 queries" in caplog.text
    red, white, green = 0, 3, 1
    assert task.relevance == [{red: 2.0, white: 1.0}, {green: 1.0}]  # grade 0 is not relevant
    pages = [item["image"] for item in task.corpus]
    assert all(p.startswith(str(mmeb_root / "visdoc-tasks" / "ViDoRe_docvqa")) for p in pages)
    assert np.asarray(Image.open(pages[red]))[0, 0].tolist() == list(COLORS["red"])
    written = [(p, os.stat(p).st_mtime_ns) for p in pages]
    again = read_mmeb_visdoc_task("ViDoRe_docvqa", folder)
    assert [item["image"] for item in again.corpus] == pages
    assert [os.stat(p).st_mtime_ns for p in pages] == [m for _, m in written]
    english = read_mmeb_visdoc_task("ViDoRe_docvqa", folder, language="english")
    assert [q["text"] for q in english.queries] == ["the red page"]


def test_read_mmeb_v2_names_unknown_tasks_and_missing_data(mmeb_root):
    with pytest.raises(ValueError, match=r"\['COCO'\] not MMEB-V2 tasks"):
        read_mmeb_v2(mmeb_root, ["MSCOCO_t2i", "COCO"])
    with pytest.raises(FileNotFoundError, match="No parquet, json or jsonl file under .*video-tasks/data/HMDB51"):
        read_mmeb_v2(mmeb_root, ["HMDB51"])
    with pytest.raises(FileNotFoundError, match="No parquet, json or jsonl file"):
        read_mmeb_v2(mmeb_root, ["CIRR"])


def test_rime_eval_runs_mmeb_tasks_and_writes_its_aggregates(mmeb_root, tmp_path, capsys):
    processor = tiny_rime_processor()
    RimeEncoder(tiny_rime_model(processor=processor), processor).save_pretrained(tmp_path / "model")
    names = ["MSCOCO_t2i", "ImageNet-1K", "MSR-VTT", "ViDoRe_docvqa"]
    code = rime(
        ["eval", "--model", str(tmp_path / "model"), "--mmeb-v2", str(mmeb_root), "--mmeb-tasks", *names]
        + ["--output-dir", str(tmp_path / "out"), "--query-modes", "disc", "--corpus-modes", "disc"]
    )
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(names) <= set(results["scores"])
    assert results["tasks"]["ViDoRe_docvqa"]["metric"] == "ndcg_linear@5"
    aggregates = json.loads((tmp_path / "out" / "mmeb_v2.json").read_text())["scores"]
    assert set(aggregates) == {"overall (4/78 tasks)", "image", "image/CLS", "image/RET", "video", "video/RET"} | {
        "visdoc",
        "visdoc/VDRv1",
    }
    mean = np.mean([results["scores"][name]["disc->disc"] for name in names])
    assert aggregates["overall (4/78 tasks)"]["disc->disc"] == pytest.approx(mean)
    assert "MMEB-V2 aggregates" in capsys.readouterr().out
    assert rime(["eval", "--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "o2")]) == 2

    # the harness's results.json goes straight into a model card
    export = tmp_path / "export"
    assert (
        rime(
            ["export", "--model", str(tmp_path / "model"), "--output-dir", str(export)]
            + ["--results", str(tmp_path / "out" / "results.json")]
        )
        == 0
    )
    card = (export / "README.md").read_text()
    assert "ViDoRe_docvqa" in card and f"| {results['scores']['ViDoRe_docvqa']['disc->disc']:.4g} |" in card
