"""`rime index` (sharded, resumable, distributed corpus embedding with FAISS) and `rime search --index`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from transformers_rime import RimeEncoder
from transformers_rime.cli import main
from transformers_rime.corpus_index import CorpusIndex, index_corpus
from transformers_rime.testing import random_image, tiny_rime_model, tiny_rime_processor


COLORS = ["red", "black", "blue", "white", "green", "yellow", "purple", "orange"]
THINGS = ["car", "cat", "chart", "chair", "fox", "bike", "boat", "lamp"]


def write_corpus(folder: Path, size: int, images: int = 2) -> Path:
    """`size` lines with unique ids; the last `images` lines hold an image with a relative path."""
    (folder / "media").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(size):
        row = {"id": f"doc-{i}", "text": f"a {COLORS[i % 8]} {THINGS[(i // 8) % 8]} number {i}"}
        if i >= size - images:
            random_image(40 + i, 32, seed=i).save(folder / "media" / f"img{i}.png")
            row["image"] = f"media/img{i}.png"
        rows.append(row)
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    processor = tiny_rime_processor()
    RimeEncoder(tiny_rime_model(processor=processor), processor).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoder(saved_model) -> RimeEncoder:
    return RimeEncoder.from_pretrained(saved_model, device="cpu")


def index_args(model: Path, corpus: Path, output: Path, *extra) -> list[str]:
    return ["index", "--model", str(model), "--corpus", str(corpus), "--output-dir", str(output), *map(str, extra)]


def stored(folder: Path) -> tuple[list, np.ndarray]:
    """The ids and embeddings an index holds, in corpus order, from its shard files."""
    sidecars = sorted((folder / "shards").glob("shard-*.json"))
    ids = [i for path in sidecars for i in json.loads(path.read_text())["ids"]]
    embeddings = np.concatenate([np.load(path.with_suffix(".npy")) for path in sidecars])
    assert json.loads((folder / "items.json").read_text())["ids"] == ids
    return ids, embeddings


def test_a_killed_run_resumes_with_nothing_lost_or_duplicated(tmp_path, saved_model):
    corpus = write_corpus(tmp_path, 32)
    args = index_args(saved_model, corpus, tmp_path / "idx", "--mode", "gen", "--shard-size", 4)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "transformers_rime.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
        try:
            deadline = time.monotonic() + 120
            while not list((tmp_path / "idx" / "shards").glob("shard-*.json")):
                assert process.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.005)
            process.send_signal(signal.SIGKILL)  # a gen-mode shard takes a while: the kill lands mid-way
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    killed = sorted((tmp_path / "idx" / "shards").glob("shard-*.json"))
    assert 1 <= len(killed) < 8
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert not manifest["complete"] and not (tmp_path / "idx" / "index.faiss").exists()

    assert main(args) == 0  # resumes
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["finished_shards"] == list(range(8))
    assert not [p for p in (tmp_path / "idx" / "shards").iterdir() if p.name.startswith(".")]  # no temporaries
    assert main(index_args(saved_model, corpus, tmp_path / "whole", "--mode", "gen", "--shard-size", 4)) == 0
    ids, embeddings = stored(tmp_path / "idx")
    expected_ids, expected = stored(tmp_path / "whole")
    assert ids == expected_ids == [f"doc-{i}" for i in range(32)]
    np.testing.assert_allclose(embeddings, expected, atol=1e-6)
    assert CorpusIndex.load(tmp_path / "idx").index.ntotal == 32


def test_two_processes_split_the_shards_and_match_one_process(tmp_path, saved_model, run_two_processes):
    corpus = write_corpus(tmp_path, 22)
    run_two_processes(
        "-m", "transformers_rime.cli", *index_args(saved_model, corpus, tmp_path / "two", "--shard-size", 4)
    )
    assert main(index_args(saved_model, corpus, tmp_path / "one", "--shard-size", 4)) == 0
    two, one = json.loads((tmp_path / "two" / "manifest.json").read_text()), stored(tmp_path / "one")
    assert (
        two["processes"] == 2 and two["complete"] and two["corpus"] == {"path": str(corpus), "items": 22, "shards": 6}
    )
    ids, embeddings = stored(tmp_path / "two")
    writers = [json.loads(p.read_text())["written_by"] for p in sorted((tmp_path / "two" / "shards").glob("*.json"))]
    assert [w["rank"] for w in writers] == [0, 1, 0, 1, 0, 1] and {w["processes"] for w in writers} == {2}
    assert ids == one[0]
    np.testing.assert_allclose(embeddings, one[1], atol=1e-6)
    # shards are named by their place in the corpus: one process finishes what two left (here: two lost shards)
    for index in (1, 4):
        (tmp_path / "two" / "shards" / f"shard-{index:06d}.json").unlink()
    assert main(index_args(saved_model, corpus, tmp_path / "two", "--shard-size", 4)) == 0
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["processes"] == 1 and manifest["finished_shards"] == list(range(6))
    np.testing.assert_allclose(stored(tmp_path / "two")[1], one[1], atol=1e-6)


def test_changed_settings_or_model_never_mix_into_an_old_index(tmp_path, saved_model, capsys):
    corpus = write_corpus(tmp_path, 10)
    output = tmp_path / "idx"
    assert main(index_args(saved_model, corpus, output, "--shard-size", 4)) == 0
    before = stored(output)
    other_model = tmp_path / "other-model"
    processor = tiny_rime_processor()
    RimeEncoder(tiny_rime_model(processor=processor, seed=1), processor).save_pretrained(other_model)
    refusals = {
        "mode": index_args(saved_model, corpus, output, "--shard-size", 4, "--mode", "gen", "--max-new-tokens", 2),
        "shard_size": index_args(saved_model, corpus, output, "--shard-size", 5),
        "model fingerprint": index_args(other_model, corpus, output, "--shard-size", 4),
    }
    for what, args in refusals.items():
        capsys.readouterr()
        assert main(args) == 2, what
        error = capsys.readouterr().err
        assert what in error and "--overwrite" in error, error
    ids, embeddings = stored(output)  # untouched
    assert ids == before[0] and np.array_equal(embeddings, before[1])
    # the query side must be the index's model too
    (tmp_path / "q.txt").write_text("a red car\n")
    search = ["search", "--index", str(output), "--queries", str(tmp_path / "q.txt")]
    assert main([*search, "--model", str(other_model)]) == 2
    assert "another model" in capsys.readouterr().err
    # --overwrite rebuilds with the new settings
    assert main([*refusals["mode"], "--overwrite"]) == 0
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["settings"]["mode"] == "gen" and manifest["settings"]["max_new_tokens"] == 2
    assert len(list((output / "shards").glob("*.json"))) == 3
    assert not np.allclose(stored(output)[1], before[1])
    # a folder that is not an index is never written into
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    assert main(index_args(saved_model, corpus, tmp_path / "notes", "--overwrite")) == 2
    assert os.listdir(tmp_path / "notes") == ["todo.txt"]


def test_approximate_indexes_report_their_recall_against_exact_search(tmp_path, saved_model, encoder, capsys):
    corpus = write_corpus(tmp_path, 160, images=0)
    manifest = index_corpus(
        encoder, corpus, tmp_path / "ivf", shard_size=64, index_type="ivf", nlist=4, nprobe=1, show_progress_bar=False
    )
    ivf = manifest["faiss"]
    assert (ivf["type"], ivf["nlist"], ivf["nprobe"], ivf["recall_queries"]) == ("ivf", 4, 1, 160)
    assert 0.0 < ivf["recall_at_10"] <= 1.0
    assert "recall@10 of the ivf index against exact search" in capsys.readouterr().err
    # another FAISS index over the same shards: nothing is embedded again
    assert main(index_args(saved_model, corpus, tmp_path / "ivf", "--shard-size", 64, "--index-type", "hnsw")) == 0
    output = capsys.readouterr()
    assert "all 3 shards already embedded" in output.err and "hnsw FAISS index, recall@10" in output.out
    hnsw = json.loads((tmp_path / "ivf" / "manifest.json").read_text())["faiss"]
    assert hnsw["type"] == "hnsw" and hnsw["recall_at_10"] >= 0.9 and hnsw["ef_search"] == 128
    assert (
        "recall_at_10"
        not in index_corpus(encoder, corpus, tmp_path / "flat", shard_size=64, show_progress_bar=False)["faiss"]
    )
    # the approximate index searches like the exact one on what it finds
    queries = encoder.encode(["a red car number 3", "a green fox"], role="query")
    exact, approximate = (
        CorpusIndex.load(tmp_path / "flat").search(queries, 5),
        CorpusIndex.load(tmp_path / "ivf").search(queries, 5),
    )
    assert [h.corpus_id for h in exact[0]][:1] == [h.corpus_id for h in approximate[0]][:1]


def test_a_changed_corpus_line_re_embeds_only_its_shard(tmp_path, encoder):
    corpus = write_corpus(tmp_path, 10, images=0)
    index_corpus(encoder, corpus, tmp_path / "idx", shard_size=4, show_progress_bar=False)
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "idx" / "shards").glob("*.json")}
    lines = corpus.read_text().splitlines()
    lines[5] = json.dumps({"id": "doc-5", "text": "an entirely new fifth document"})
    corpus.write_text("\n".join([*lines, json.dumps({"id": "doc-10", "text": "one more"})]) + "\n")
    index_corpus(encoder, corpus, tmp_path / "idx", shard_size=4, show_progress_bar=False)
    again = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "idx" / "shards").glob("*.json")}
    # shard 0 kept; shard 1 (the changed line) and shard 2 (the new line) embedded again
    assert again["shard-000000.json"] == written["shard-000000.json"]
    assert again["shard-000001.json"] != written["shard-000001.json"]
    assert again["shard-000002.json"] != written["shard-000002.json"]
    ids, embeddings = stored(tmp_path / "idx")
    assert ids == [f"doc-{i}" for i in range(11)]
    items = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    np.testing.assert_allclose(embeddings, encoder.encode(items, role="document"), atol=1e-5)


@pytest.mark.parametrize("query_mode", ["disc", "gen"])
def test_search_with_an_index_ranks_as_the_encoder_does(tmp_path, saved_model, encoder, capsys, query_mode):
    corpus = write_corpus(tmp_path, 12)
    assert main(index_args(saved_model, corpus, tmp_path / "idx", "--shard-size", 5)) == 0
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    items = [{**{k: v for k, v in row.items() if k != "id"}} for row in rows]
    for item in items:
        if "image" in item:
            item["image"] = str(tmp_path / item["image"])
    random_image(50, 40, seed=11).save(tmp_path / "media" / "query.png")
    (tmp_path / "q.txt").write_text("a red car number 0\n\na blue chair\n")
    (tmp_path / "q.jsonl").write_text(
        '"a green fox"\n{"id": "q-img", "text": "this one", "image": "media/query.png"}\n'
    )
    expected_queries = {
        "q.txt": ["a red car number 0", "a blue chair"],
        "q.jsonl": ["a green fox", {"text": "this one", "image": str(tmp_path / "media" / "query.png")}],
    }
    common = [
        "--model",
        str(saved_model),
        "--index",
        str(tmp_path / "idx"),
        "--top-k",
        "4",
        "--query-mode",
        query_mode,
    ]
    common += ["--max-new-tokens", "3"]
    for name, queries in expected_queries.items():
        capsys.readouterr()
        assert main(["search", "--queries", str(tmp_path / name), *common]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        reference = encoder.search(queries, items, top_k=4, query_mode=query_mode, max_new_tokens=3)
        assert len(lines) == len(queries)
        for line, hits in zip(lines, reference):
            assert [h["corpus_id"] for h in line["hits"]] == [rows[h.corpus_id]["id"] for h in hits]
            np.testing.assert_allclose([h["score"] for h in line["hits"]], [h.score for h in hits], atol=1e-5)
            for hit in line["hits"]:  # the corpus line, without its id
                assert hit["document"] == {k: v for k, v in rows[int(hit["corpus_id"][4:])].items() if k != "id"}
    assert lines[1]["query_id"] == "q-img" and lines[1]["query"] == {"text": "this one", "image": "media/query.png"}
    assert "query_id" not in lines[0] and lines[0]["query"] == "a green fox"


def test_search_refuses_an_unfinished_index_and_mixing_corpus_and_index(tmp_path, saved_model, capsys):
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "manifest.json").write_text(
        json.dumps({"complete": False, "finished_shards": [0], "corpus": {"shards": 3}})
    )
    (tmp_path / "q.txt").write_text("a red car\n")
    search = ["search", "--model", str(saved_model), "--queries", str(tmp_path / "q.txt")]
    assert main([*search, "--index", str(tmp_path / "idx")]) == 2
    assert "unfinished (1 of 3 shards)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*search, "--index", str(tmp_path / "idx"), "--corpus", str(tmp_path / "q.txt")])
    assert exit_info.value.code == 2


BAD_LINES = {
    "not JSON": ('{"id": "x", "text": ', "not JSON"),
    "missing id": ('{"text": "no id here"}', "missing 'id'"),
    "duplicate id": ('{"id": "doc-2", "text": "again"}', "duplicate id 'doc-2' (first on line 3)"),
    "missing image": ('{"id": "x", "image": "media/nowhere.png"}', "image file not found"),
    "unknown key": ('{"id": "x", "txt": "typo"}', "unknown key(s) ['txt']"),
}


@pytest.mark.parametrize("case", BAD_LINES)
def test_a_bad_corpus_line_is_named_before_any_shard_is_written(tmp_path, saved_model, capsys, case):
    corpus = write_corpus(tmp_path, 10, images=0)
    lines = corpus.read_text().splitlines()
    lines.insert(6, BAD_LINES[case][0])  # line 7, in the 4th shard of 2
    corpus.write_text("\n".join(lines) + "\n")
    assert main(index_args(saved_model, corpus, tmp_path / "idx", "--shard-size", 2)) == 2
    error = capsys.readouterr().err
    assert f"{corpus}:7: " in error or f"{corpus}:7 " in error, error
    assert BAD_LINES[case][1] in error, error
    assert not list(tmp_path.glob("idx/shards/*")) and not (tmp_path / "idx" / "manifest.json").exists()


def test_a_line_that_fails_to_decode_stops_before_its_shard_with_earlier_shards_kept(tmp_path, encoder):
    corpus = write_corpus(tmp_path, 6, images=0)
    lines = corpus.read_text().splitlines()
    lines[4] = json.dumps({"id": "doc-4", "text": "a " * 200})  # parses, but the prompt is too long
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{corpus}:5: the prompt is \d+ tokens, longer than max_length=100"):
        index_corpus(encoder, corpus, tmp_path / "idx", shard_size=2, max_length=100, show_progress_bar=False)
    assert sorted(p.name for p in (tmp_path / "idx" / "shards").glob("*.json")) == [
        "shard-000000.json",
        "shard-000001.json",
    ]
    assert not torch.distributed.is_initialized()
