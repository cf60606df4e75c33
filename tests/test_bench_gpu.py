"""benchmarks/bench_gpu.py: its FLOP counter by hand, and a tiny CPU smoke run of the whole script."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_gpu():
    # The script is not part of the package: load it by path, with its directory importable for its sibling
    # `memory` module, as it is when run as a script.
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("bench_gpu", BENCHMARKS / "bench_gpu.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    yield module
    sys.modules.pop("bench_gpu", None)


def test_prefill_flops_by_hand(bench_gpu):
    text = bench_gpu.TextTower(hidden=4, layers=1, heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10)
    # q, o: 2 * 4 * 4 = 32; k, v: 2 * 4 * 2 = 16; MLP: 3 * 4 * 8 = 96
    assert bench_gpu.text_matmul_params(text) == 144
    # row of 3 tokens: 2 * 144 * 3 + 4 * 1 * 4 * 3**2 = 864 + 144; row of 2: 576 + 64
    assert bench_gpu.prefill_flops(text, [3, 2]) == 1008 + 640
    # the LM head on one position: 2 * 4 * 10
    assert bench_gpu.prefill_flops(text, [3], lm_head_positions=1) == 1008 + 80

    vision = bench_gpu.VisionTower(
        embed_dim=2,
        depth=1,
        mlp_ratio=2,
        patch_size=1,
        temporal_patch_size=1,
        merge_size=1,
        in_channels=1,
        out_hidden=4,
    )
    # per patch: patch embedding 1 * 2 = 2, block 4 * 2**2 + 2 * 2 * 4 = 32; per merged token: 2 * 2 + 2 * 4 = 12
    assert bench_gpu.vision_matmul_params(vision) == (34, 12)
    # one image of 4 patches: 2 * 34 * 4 + 4 * 1 * 2 * 4**2 + 2 * 12 * 4 = 272 + 128 + 96
    assert bench_gpu.prefill_flops(text, [3], vision, [4]) == 1008 + 496
    with pytest.raises(ValueError):
        bench_gpu.prefill_flops(text, [3], None, [4])


def test_weight_counts_match_the_built_model(bench_gpu, model):
    # The analytic counts must be the weights the Qwen2-VL modules actually multiply by.
    text, vision = bench_gpu.towers_from_config(model.config.vlm_config)

    def weights(module, kinds):
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, kinds))

    assert bench_gpu.text_matmul_params(text) == weights(model.text_decoder.layers, torch.nn.Linear)
    assert sum(bench_gpu.vision_matmul_params(vision)) == weights(
        model.vlm.model.visual, (torch.nn.Linear, torch.nn.Conv3d)
    )


def test_tiny_run_writes_every_measurement(bench_gpu, tmp_path, capsys):
    output = tmp_path / "gpu.json"
    argv = ["--tiny", "--batch-sizes", "1", "2", "--new-tokens", "4", "--repeats", "1", "--output", str(output)]
    bench_gpu.main(argv)
    printed = capsys.readouterr().out
    assert "| batch | prompt | mode |" in printed and "gen / disc items/s" in printed

    result = json.loads(output.read_text())
    assert set(result) == {"environment", "results", "ratios"}
    assert result["environment"]["settings"]["device"] == "cpu"
    rows = result["results"]
    assert {(r["batch_size"], r["prompt"], r["mode"]) for r in rows} == {
        (b, kind, mode) for b in (1, 2) for kind in ("text", "image") for mode in ("disc", "gen", "generate")
    }
    for row in rows:
        assert row["seconds"] > 0 and row["items_per_s"] > 0
        assert row["peak_mib"] is None  # only reported on CUDA
        if row["mode"] == "disc":
            assert row["prompt_tokens_per_s"] > 0 and row["tflops"] > 0 and 0 < row["mfu"] < 1
            assert (row["image_patches"] > 0) == (row["prompt"] == "image")
        else:
            assert row["new_tokens_per_s"] == pytest.approx(row["batch_size"] * 5 / row["seconds"])
    assert len(result["ratios"]) == 4
    assert all(r["gen_over_disc_items"] > 0 and r["gen_over_generate_time"] > 0 for r in result["ratios"])
