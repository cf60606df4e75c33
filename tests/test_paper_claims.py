"""benchmarks/paper_claims.py: how it reads a generation's answer, its claim criterion, and its report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def study():
    # not part of the package: load the script by path (registered, as dataclasses look their module up)
    spec = importlib.util.spec_from_file_location("paper_claims", BENCHMARKS / "paper_claims.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("paper_claims", None)


def test_final_answer_reads_a_chain_answer_or_an_untagged_rewrite(study):
    assert study.final_answer("<think>count: 1, 2.</think><answer>2 red stars</answer>") == "2 red stars"
    assert study.final_answer("<rewrite>3  red stars</rewrite>") == "3 red stars"
    assert study.final_answer("<think>unfinished count 1, 2, 3") == "unfinished count 1, 2, 3"


def test_a_claim_holds_only_beyond_twice_the_seed_spread(study):
    assert study.beats([0.8, 0.82, 0.78], [0.5, 0.52, 0.48])
    assert not study.beats([0.6, 0.8, 0.4], [0.5, 0.5, 0.5])  # a mean margin of 0.1 against a spread of 0.2
    assert not study.beats([0.5, 0.5, 0.5], [0.6, 0.6, 0.6])


def _run(seed: int, gen: float) -> dict:
    kinds = ("counting", "negation")
    hits = {
        kind: {"disc->disc": 0.5, "disc->gen": 0.5, "gen->disc": gen + seed / 100, "gen->gen": 0.5} for kind in kinds
    }
    sensitivity = {"overall": {"hit@1": {"gen->disc": {"own": 0.8, "swapped": 0.2, "removed": 0.4}},
                               "cosine": {"swapped": 0.6, "removed": 0.7}}}  # fmt: skip
    figures = {
        "hit@1": hits,
        "exact_match": dict.fromkeys(kinds, 0.5),
        "tokens_per_item": dict.fromkeys(kinds, 6.0),
        "unfinished": dict.fromkeys(kinds, 0.25),
        "items_per_second": {kind: {"gen": 100.0, "disc": 300.0} for kind in kinds},
        "sensitivity": sensitivity,
    }
    curves = {"rewards": [0.1, 0.2, 0.3, 0.4], "unfinished": [0.5, 0.2, 0.1, 0.0]}
    return {
        "seed": seed,
        "settings": {"eval_per_kind": 32, "rl_steps": 4},
        "rewrite": figures,
        "refine_rl": figures | {"curves": curves},
        "chain": figures | {"tokens_per_item": dict.fromkeys(kinds, 60.0)},
        "no_cma": figures,
        "seconds": 100.0,
    }


def test_report_states_each_kind_verdict_and_the_curves(study):
    text = study.report([_run(seed, gen=0.9) for seed in range(3)])
    assert "| counting | 0.500 ± 0.000 | 0.500 ± 0.000 | 0.910 ± 0.010 | 0.500 ± 0.000 | gen->disc |" in text
    assert "step 1: 0.100" in text and "step 4: 0.000" in text
    assert (
        "| 60.0 ± 0.0 | 0.250 ± 0.000 |" in text
        and "| stage 1 | 0.800 ± 0.000 | 0.200 ± 0.000 | 0.400 ± 0.000 |" in text
    )
    close = study.report([_run(seed, gen=0.5) for seed in range(3)])
    assert "| counting | 0.500 ± 0.000 | 0.500 ± 0.000 | 0.510 ± 0.010 | 0.500 ± 0.000 | no |" in close


def test_report_leaves_out_the_parts_a_study_did_not_run(study):
    runs = [{k: v for k, v in _run(seed, gen=0.9).items() if k not in ("chain", "no_cma")} for seed in range(3)]
    text = study.report(runs)
    assert "**Refine-RL** (4 GRPO steps" in text and "| stage 2 |" in text
    assert "chain of thought" not in text and "CMA ablation" not in text
    older = [_run(seed, gen=0.9) for seed in range(3)]
    for run in older:  # a run made before the unfinished share was recorded
        del run["chain"]["unfinished"]
    assert "| 60.0 ± 0.0 | n/a |" in study.report(older)
