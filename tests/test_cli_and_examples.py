"""The `rime` command and the examples run end to end, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from transformers_rime.cli import main
from transformers_rime.testing import random_image, write_published_checkpoint


ROOT = Path(__file__).resolve().parents[1]


def test_rime_encode_and_search(tmp_path, capsys):
    model = write_published_checkpoint(tmp_path / "model")
    image = tmp_path / "img.png"
    random_image(seed=3).save(image)
    output = tmp_path / "q.npy"
    assert (
        main(
            [
                "encode",
                "--model",
                str(model),
                "--mode",
                "gen",
                "--max-new-tokens",
                "2",
                "--output",
                str(output),
                "a red car",
                str(image),
            ]
        )
        == 0
    )
    assert np.load(output).shape == (2, 64)
    (tmp_path / "q.txt").write_text("a red car\n")
    (tmp_path / "c.txt").write_text(f"a black cat\n{image}\na red car\n")
    capsys.readouterr()
    assert (
        main(
            [
                "search",
                "--model",
                str(model),
                "--queries",
                str(tmp_path / "q.txt"),
                "--corpus",
                str(tmp_path / "c.txt"),
                "--top-k",
                "2",
                "--query-mode",
                "gen",
                "--max-new-tokens",
                "2",
            ]
        )
        == 0
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["query"] == "a red car" and len(line["hits"]) == 2


def test_encode_example_runs_offline():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "encode.py"), "--max-new-tokens", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gen->disc" in result.stdout and "corpus index: (4, 64)" in result.stdout


def test_evaluate_example_runs_offline_and_reuses_finished_tasks(tmp_path):
    command = [sys.executable, str(ROOT / "examples" / "evaluate.py"), "--output-dir", str(tmp_path)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["scores"]["demo-text"]) == {"disc->disc", "disc->gen", "gen->disc", "gen->gen"}
    assert (tmp_path / "results.png").is_file() and "| demo-text |" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads((tmp_path / "results.json").read_text())["scores"] == results["scores"]


def test_export_example_loads_the_export_with_every_loader(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "export.py"), "--output-dir", str(tmp_path / "export")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    differences = [float(line.rsplit("=", 1)[1]) for line in result.stdout.splitlines() if "max |difference|" in line]
    assert len(differences) == 2 and max(differences) <= 1e-5
    assert (tmp_path / "export" / "README.md").exists() and (tmp_path / "export" / "modules.json").exists()


def test_rime_export_converts_a_published_checkpoint_with_a_card(tmp_path, capsys):
    published = write_published_checkpoint(tmp_path / "published")
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"metric": "Hit@1", "scores": {"overall": {"gen->disc": 0.5}}}))
    output = tmp_path / "export"
    args = ["export", "--model", str(published), "--output-dir", str(output), "--results", str(results)]
    assert main([*args, "--base-model", "leafyseay/RIME-2B"]) == 0
    assert "SentenceTransformer" in capsys.readouterr().out
    card = (output / "README.md").read_text()
    assert "base_model: leafyseay/RIME-2B" in card and "| overall | 0.5 |" in card
    assert json.loads((output / "config.json").read_text())["model_type"] == "rime"
    assert {"modules.json", "config_sentence_transformers.json", "model.safetensors"} <= set(os.listdir(output))
    assert main([*args[:-1], str(tmp_path / "missing.json")]) == 2


def _run_example(script: str, *args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "examples" / script), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_train_contrastive_example_runs_offline_and_saves_a_loadable_model(tmp_path):
    out = tmp_path / "tiny"
    result = _run_example(
        "train_contrastive.py",
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--learning_rate",
        "1e-3",
        "--disable_tqdm",
        "true",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "in-batch accuracy before: disc->disc" in result.stdout and "in-batch accuracy after:" in result.stdout
    from transformers_rime import RimeEncoder

    encoder = RimeEncoder.from_pretrained(str(out))
    assert encoder.encode(["red car"], mode="disc").shape == (1, 64)


def test_train_contrastive_example_reads_jsonl_with_lora_and_cached_batches(tmp_path):
    image = tmp_path / "img.png"
    random_image(seed=2).save(image)
    rows = [
        {
            "query": f"query {i}",
            "positive": {"text": f"doc {i}", "image": "img.png"},
            "query_rewrite": f"q {i}",
            "positive_rewrite": f"d {i}",
            "negative": f"decoy {i}",
        }
        for i in range(4)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows))
    out = tmp_path / "lora"
    result = _run_example(
        "train_contrastive.py",
        "--output_dir",
        str(out),
        "--data_path",
        str(data),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--cached_batch_size",
        "2",
        "--use_lora",
        "--lora_r",
        "4",
        "--disable_tqdm",
        "true",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # the adapter is merged into a complete export, which loads as the script says
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    from transformers_rime import RimeEncoder

    assert RimeEncoder.from_pretrained(str(out)).encode(["query 1"], mode="disc").shape == (1, 64)


def test_accelerate_configs_load_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {
        "multi_gpu": "MULTI_GPU",
        "deepspeed_zero2": "DEEPSPEED",
        "deepspeed_zero3": "DEEPSPEED",
        "fsdp": "FSDP",
    }
    for name, distributed_type in expected.items():
        config = load_config_from_file(str(ROOT / "examples" / "accelerate" / f"{name}.yaml"))
        assert (str(config.distributed_type), config.num_processes, str(config.mixed_precision)) == (
            f"DistributedType.{distributed_type}",
            8,
            "bf16",
        ), name
