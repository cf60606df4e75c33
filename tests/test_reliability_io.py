"""Never lose finished work, never use a silently wrong result: the evaluation cache's checksums, concurrent runs
on one folder, CLI output paths and arguments checked before the model loads, and `rime export`'s staging folder."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from transformers_rime import RimeEncoder
from transformers_rime.cli import main as rime
from transformers_rime.evaluation import RetrievalTask, evaluate, write_task
from transformers_rime.files import write_atomically, write_json
from transformers_rime.testing import tiny_rime_model, tiny_rime_processor


HARNESS_LOGGER = "transformers_rime.evaluation.harness"


@pytest.fixture(scope="module")
def encoder():
    processor = tiny_rime_processor()
    return RimeEncoder(tiny_rime_model(processor=processor), processor)


@pytest.fixture(scope="module")
def model_dir(encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    encoder.save_pretrained(path, model_card=False)
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: what is refused must be refused before."""

    def load(*args, **kwargs):
        raise AssertionError("model loaded")

    monkeypatch.setattr(RimeEncoder, "from_pretrained", load)


def task() -> RetrievalTask:
    return RetrievalTask(
        "colors",
        queries=["red automobile", "ebony kitten"],
        corpus=["a red car", "a black cat", "a blue chart"],
        relevance=[{0: 1}, {1: 1}],
        metric="hit@1",
    )


def run(encoder, **kwargs) -> dict:
    return evaluate(encoder, [task()], max_new_tokens=2, show_progress_bar=False, **kwargs)


@pytest.fixture(scope="module")
def clean(encoder):
    """The metrics of a run without any cache."""
    return run(encoder)["tasks"]["colors"]["metrics"]


def cached_sides(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.npy"))


def count_encodings(monkeypatch) -> list[str]:
    calls = []
    encode, generate = RimeEncoder.encode, RimeEncoder.generate
    monkeypatch.setattr(RimeEncoder, "encode", lambda self, *a, **k: calls.append("disc") or encode(self, *a, **k))
    monkeypatch.setattr(RimeEncoder, "generate", lambda self, *a, **k: calls.append("gen") or generate(self, *a, **k))
    return calls


# ---------------------------------------------------------------------------------------------- the cache


def test_the_cache_stores_a_checksum_and_shape_and_serves_a_second_run(encoder, clean, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    assert run(encoder, cache_dir=cache)["tasks"]["colors"]["metrics"] == clean
    sides = cached_sides(cache)
    assert len(sides) == 4  # queries and corpus, disc and gen
    for side in sides:
        record = json.loads(side.with_suffix(".json").read_text())
        assert record["shape"] == list(np.load(side).shape) and len(record["sha256"]) == 64
    calls = count_encodings(monkeypatch)
    assert run(encoder, cache_dir=cache)["tasks"]["colors"]["metrics"] == clean
    assert not calls
    assert not [path for path in tmp_path.rglob("*") if ".tmp" in path.name]


def test_a_damaged_cached_array_is_named_and_recomputed(encoder, clean, tmp_path, caplog, monkeypatch):
    cache = tmp_path / "cache"
    run(encoder, cache_dir=cache)
    damaged = cached_sides(cache)[0]
    data = bytearray(damaged.read_bytes())
    data[-8:] = bytes(255 - b for b in data[-8:])  # flip the bytes of the last embedding values: still loads
    damaged.write_bytes(bytes(data))
    calls = count_encodings(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=HARNESS_LOGGER):
        assert run(encoder, cache_dir=cache)["tasks"]["colors"]["metrics"] == clean
    assert len(calls) == 1  # only the damaged side
    assert str(damaged) in caplog.text and "checksum" in caplog.text
    caplog.clear()
    calls.clear()
    with caplog.at_level(logging.WARNING, logger=HARNESS_LOGGER):  # rewritten: trusted again
        assert run(encoder, cache_dir=cache)["tasks"]["colors"]["metrics"] == clean
    assert not calls and not caplog.text


@pytest.mark.parametrize("damage", ["truncated json", "json without checksum", "truncated npy", "wrong shape"])
def test_an_untrusted_cache_entry_is_recomputed_with_a_warning(encoder, clean, tmp_path, caplog, damage):
    cache = tmp_path / "cache"
    run(encoder, cache_dir=cache)
    side = cached_sides(cache)[-1]
    timing = side.with_suffix(".json")
    record = json.loads(timing.read_text())
    if damage == "truncated json":
        timing.write_text(timing.read_text()[:10])
        named = timing
    elif damage == "json without checksum":  # as an older version wrote it
        timing.write_text(json.dumps({k: v for k, v in record.items() if k not in ("sha256", "shape")}))
        named = timing
    elif damage == "truncated npy":
        side.write_bytes(side.read_bytes()[:100])
        named = side
    else:  # a consistent pair, but not the array this side needs
        import hashlib
        import io

        fewer = np.load(side)[:-1]
        buffer = io.BytesIO()
        np.save(buffer, fewer)
        side.write_bytes(buffer.getvalue())
        record.update(sha256=hashlib.sha256(buffer.getvalue()).hexdigest(), shape=list(fewer.shape))
        timing.write_text(json.dumps(record))
        named = side
    with caplog.at_level(logging.WARNING, logger=HARNESS_LOGGER):
        assert run(encoder, cache_dir=cache)["tasks"]["colors"]["metrics"] == clean
    assert str(named) in caplog.text and "recomputing" in caplog.text
    assert json.loads(timing.read_text())["shape"] == list(np.load(side).shape)  # rewritten whole


def test_an_unreadable_finished_task_is_run_again(encoder, clean, tmp_path, caplog):
    run(encoder, output_dir=tmp_path)
    done = tmp_path / "tasks" / "colors.json"
    done.write_text(done.read_text()[:-20])
    with caplog.at_level(logging.WARNING, logger=HARNESS_LOGGER):
        assert run(encoder, output_dir=tmp_path)["tasks"]["colors"]["metrics"] == clean
    assert str(done) in caplog.text
    assert json.loads(done.read_text())["metrics"] == clean


def test_a_failed_write_leaves_neither_a_temporary_nor_a_partial_file(tmp_path):
    target = tmp_path / "out" / "results.json"
    write_json(target, {"a": 1})

    def fail(temporary):
        temporary.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail)
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(target.parent) == ["results.json"]


def test_concurrent_runs_on_one_folder_both_finish_with_the_results_of_one(encoder, clean, tmp_path, monkeypatch):
    """Two runs (each with its own copy of the model: generation keeps state on it) writing the same files at the
    same moments: each rename waits for the other run's, so with shared temporary names the second rename would
    find its file gone."""
    barrier = threading.Barrier(2, timeout=60)
    replace = os.replace

    def synchronised_replace(source, destination, *args, **kwargs):
        if str(destination).startswith(str(tmp_path)):
            barrier.wait()
        return replace(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "replace", synchronised_replace)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(run, copy.deepcopy(encoder), output_dir=tmp_path) for _ in range(2)]
        results = [future.result() for future in futures]
    monkeypatch.setattr(os, "replace", replace)
    for result in results:
        assert result["tasks"]["colors"]["metrics"] == clean
    assert json.loads((tmp_path / "results.json").read_text())["scores"] == results[0]["scores"]
    assert not [path for path in tmp_path.rglob("*") if ".tmp" in path.name]
    (tmp_path / "tasks" / "colors.json").unlink()  # the cache written by both is consistent: reused as it is
    calls = count_encodings(monkeypatch)
    assert run(encoder, output_dir=tmp_path)["tasks"]["colors"]["metrics"] == clean
    assert not calls


def test_evaluate_threads_max_length_to_the_encoder(encoder):
    with pytest.raises(ValueError, match="max_length=2"):
        run(encoder, max_length=2)


# ---------------------------------------------------------------------------------------------- the CLI


def test_rime_encode_refuses_unwritable_outputs_before_loading_the_model(tmp_path, no_model, capsys):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    for output, reason in (
        (tmp_path / "a-folder", "is a folder"),
        (tmp_path / "a-file" / "q.npy", "a-file exists and is not a folder"),
        (tmp_path / "a-file" / "deeper" / "q.npy", "cannot create the folder"),
    ):
        assert rime(["encode", "--model", "unused", "--output", str(output), "a red car"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rime encode: --output") and reason in err, err


def test_rime_encode_creates_the_folder_and_writes_exactly_at_output(model_dir, tmp_path, capsys):
    output = tmp_path / "new" / "folder" / "embeddings.bin"
    assert rime(["encode", "--model", str(model_dir), "--output", str(output), "a red car", "a cat"]) == 0
    assert np.load(output).shape == (2, 64)
    assert os.listdir(output.parent) == ["embeddings.bin"]  # no .npy added, no temporary left


def test_rime_eval_refuses_unwritable_folders_before_loading_the_model(tmp_path, no_model, capsys):
    write_task(task(), tmp_path / "tasks" / "colors")
    (tmp_path / "a-file").write_text("")
    base = ["eval", "--model", "unused", "--tasks", str(tmp_path / "tasks")]
    assert rime([*base, "--output-dir", str(tmp_path / "a-file")]) == 2
    assert "--output-dir" in capsys.readouterr().err
    arguments = [*base, "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "a-file" / "c")]
    assert rime(arguments) == 2
    assert "--cache-dir" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["search", "--queries", "q", "--corpus", "c", "--top-k", "0"], "--top-k: must be >= 1, got 0"),
        (["encode", "--output", "o", "x", "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
        (["encode", "--output", "o", "x", "--max-length", "0"], "--max-length: must be >= 1, got 0"),
        (["eval", "--output-dir", "o", "--tasks", "t", "--max-length", "ten"], "expected a whole number, got 'ten'"),
        (["encode", "--output", "o", "x", "--max-new-tokens", "-1"], "--max-new-tokens: must be >= 0, got -1"),
    ],
)
def test_bad_numbers_are_refused_by_the_parser(arguments, message, no_model, capsys):
    with pytest.raises(SystemExit) as exit:
        rime([arguments[0], "--model", "unused", *arguments[1:]])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_a_prompt_over_max_length_is_an_error_naming_the_item_not_a_traceback(model_dir, tmp_path, capsys):
    output = tmp_path / "q.npy"
    model = ["--model", str(model_dir), "--max-length", "3"]
    assert rime(["encode", *model, "--output", str(output), "a red car"]) == 2
    err = capsys.readouterr().err
    assert "rime encode: " in err and "max_length=3" in err and re.search(r"\b(input|item) 0\b", err)
    assert "Traceback" not in err and not output.exists()

    (tmp_path / "q.txt").write_text("a red car\n")
    (tmp_path / "c.txt").write_text("a black cat\n")
    assert rime(["search", *model, "--queries", str(tmp_path / "q.txt"), "--corpus", str(tmp_path / "c.txt")]) == 2
    assert "max_length=3" in capsys.readouterr().err

    write_task(task(), tmp_path / "tasks" / "colors")
    arguments = ["eval", *model, "--tasks", str(tmp_path / "tasks"), "--output-dir", str(tmp_path / "out")]
    assert rime([*arguments, "--max-new-tokens", "2"]) == 2
    assert "max_length=3" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()


def test_rime_export_refuses_a_file_or_a_non_empty_folder_before_loading_the_model(tmp_path, no_model, capsys):
    (tmp_path / "a-file").write_text("")
    assert rime(["export", "--model", "unused", "--output-dir", str(tmp_path / "a-file")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    (tmp_path / "previous").mkdir()
    (tmp_path / "previous" / "config.json").write_text("{}")
    assert rime(["export", "--model", "unused", "--output-dir", str(tmp_path / "previous")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert os.listdir(tmp_path / "previous") == ["config.json"]


def test_rime_export_fills_an_empty_folder_and_replaces_a_previous_export_with_overwrite(model_dir, tmp_path):
    output = tmp_path / "exports" / "rime"
    output.mkdir(parents=True)
    assert rime(["export", "--model", str(model_dir), "--output-dir", str(output)]) == 0
    assert (output / "config.json").is_file() and (output / "README.md").is_file()
    (output / "stale.txt").write_text("from before")
    assert rime(["export", "--model", str(model_dir), "--output-dir", str(output), "--overwrite"]) == 0
    assert (output / "config.json").is_file() and not (output / "stale.txt").exists()
    assert os.listdir(output.parent) == ["rime"]  # no staging or old folder left
    assert RimeEncoder.from_pretrained(output, device="cpu").embedding_dim == 64


@pytest.mark.parametrize("previous", [False, True])
def test_a_failed_export_leaves_no_half_written_export(model_dir, tmp_path, monkeypatch, previous):
    output = tmp_path / "exports" / "rime"
    if previous:  # a previous export stays as it was
        output.mkdir(parents=True)
        (output / "config.json").write_text('{"previous": true}')
    (tmp_path / "exports").mkdir(exist_ok=True)

    def save_then_fail(self, save_directory, **kwargs):
        self.model.save_pretrained(save_directory)  # the weights and config.json are written...
        assert (Path(save_directory) / "config.json").is_file()
        raise OSError("disk full")  # ...then the rest fails

    monkeypatch.setattr(RimeEncoder, "save_pretrained", save_then_fail)
    arguments = ["export", "--model", str(model_dir), "--output-dir", str(output)]
    with pytest.raises(OSError, match="disk full"):
        rime([*arguments, "--overwrite"] if previous else arguments)
    if previous:
        assert json.loads((output / "config.json").read_text()) == {"previous": True}
        assert os.listdir(output.parent) == ["rime"]
    else:
        assert not output.exists() and os.listdir(output.parent) == []
