"""The harness on two CPU processes (torchrun, gloo): each embeds half of every side, the results are one run's."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from transformers_rime import RimeEncoder
from transformers_rime.evaluation import evaluate, write_task
from transformers_rime.testing import tiny_rime_model, tiny_rime_processor


WORKER = Path(__file__).with_name("distributed_eval_worker.py")
sys.path.insert(0, str(WORKER.parent))
from distributed_eval_worker import task  # noqa: E402


def test_two_processes_shard_the_encoding_and_match_one_process(tmp_path, run_two_processes):
    run_two_processes(WORKER, tmp_path)
    # 3 queries and 5 documents, each side in both modes: rank 0 takes the first half (rounded up) of each side
    assert json.loads((tmp_path / "embedded.json").read_text()) == [[2, 2, 3, 3], [1, 1, 2, 2]]
    distributed = json.loads((tmp_path / "results.json").read_text())
    processor = tiny_rime_processor()
    encoder = RimeEncoder(tiny_rime_model(processor=processor), processor)
    single = evaluate(encoder, [task()], output_dir=tmp_path / "single", max_new_tokens=4, show_progress_bar=False)
    for pair, metrics in single["tasks"]["colors"]["metrics"].items():
        assert distributed["tasks"]["colors"]["metrics"][pair] == pytest.approx(metrics)
    cached_files = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(cached_files) == 4  # 2 sides x 2 modes, under the same model fingerprint as the single process
    for cached in cached_files:  # gathered in order: the same embeddings as one process
        np.testing.assert_allclose(
            np.load(cached), np.load(tmp_path / "single" / cached.relative_to(tmp_path)), atol=1e-5
        )


def test_rime_eval_under_torchrun_scores_as_one_process(tmp_path, run_two_processes):
    processor = tiny_rime_processor()
    encoder = RimeEncoder(tiny_rime_model(processor=processor), processor)
    encoder.save_pretrained(tmp_path / "model")
    write_task(task(), tmp_path / "colors")
    run_two_processes(
        "-m",
        "transformers_rime.cli",
        "eval",
        "--model",
        tmp_path / "model",
        "--tasks",
        tmp_path / "colors",
        "--output-dir",
        tmp_path / "out",
        "--max-new-tokens",
        4,
    )
    distributed = json.loads((tmp_path / "out" / "results.json").read_text())
    single = evaluate(encoder, [task()], output_dir=tmp_path / "single", max_new_tokens=4, show_progress_bar=False)
    for pair, metrics in single["tasks"]["colors"]["metrics"].items():
        assert distributed["tasks"]["colors"]["metrics"][pair] == pytest.approx(metrics)
