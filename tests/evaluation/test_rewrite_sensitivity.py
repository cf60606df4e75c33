"""The rewrite-sensitivity diagnostic: its pure pieces, a model built to ignore its rewrite (no drop), a tiny trained
model that reads it (a clear drop), and `rime diagnose`."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from transformers_rime import RimeEncoder, RimeForEmbedding
from transformers_rime.cli import main as rime
from transformers_rime.evaluation import RetrievalTask, evaluate, format_rewrite_sensitivity, rewrite_sensitivity
from transformers_rime.evaluation.sensitivity import (
    check_tasks,
    mean_over_tasks,
    paired_cosines,
    random_derangement,
    rewrite_drops,
)
from transformers_rime.evaluation.tasks import write_task
from transformers_rime.quickstart import tiny_stage1_model
from transformers_rime.testing import color_object_refine_rl_pairs, tiny_rime_processor, tiny_tokenizer


# Query rewrites in the documents' words ("red car" -> "crimson automobile"): a model trained on them reads its gen
# embedding from the rewrite (see `tiny_stage1_model`).
ROWS = color_object_refine_rl_pairs(16)
BUDGET = 12  # new tokens; the trained model's rewrites take 8 with their tags


class RewriteBlindModel(RimeForEmbedding):
    """A RIME model whose gen embedding is read at `<disc_emb>`, which comes before the rewrite: under causal attention
    nothing written after it can change it, so the gen embedding ignores the rewrite by construction."""

    def forward(self, *args, return_gen_embeddings: bool = False, **kwargs):
        output = super().forward(*args, **kwargs)
        return dataclasses.replace(output, gen_embeddings=output.embeddings) if return_gen_embeddings else output

    def generate_embeddings(self, *args, **kwargs):
        output = super().generate_embeddings(*args, **kwargs)
        return dataclasses.replace(output, embeddings=output.disc_embeddings)


def word_level_processor(rows: list[dict]):
    """The tiny processor with a tokenizer that has learnt the rows' words and the default prompt, so that a rewrite
    is a few tokens and a prompt about 80: the short training below learns to write rewrites."""
    base = tiny_rime_processor()
    prompts = [
        base.tokenizer.decode(base(text=["x"], mode="gen", role=role, return_tensors="pt")["input_ids"][0])
        for role in ("query", "document")
    ]
    texts = [
        text
        for row in rows
        for text in (
            row["query"],
            row["positive"],
            row["query_rewrite"],
            row["positive_rewrite"],
            f"<rewrite>{row['query_rewrite']}</rewrite><gen_emb>",
        )
    ]
    return tiny_rime_processor(tokenizer=tiny_tokenizer(extra_texts=texts * 5 + prompts * 20, vocab_size=600))


def colors_task(rows: list[dict], name: str = "colors") -> RetrievalTask:
    return RetrievalTask(
        name,
        queries=[row["query"] for row in rows],
        corpus=[row["positive"] for row in rows],
        relevance=[{index: 1.0} for index in range(len(rows))],
    )


@pytest.fixture(scope="module")
def trained() -> RimeEncoder:
    # 250 steps (about 30 s on one thread): at 150-200 some rewrites are still only "<rewrite>"; with training seeds
    # 0, 1 and 2 the drop own - swapped measured 0.56-0.88 (gen->disc) and the swapped cosine 0.32-0.64.
    processor = word_level_processor(color_object_refine_rl_pairs(64))  # every pair's words
    model, processor = tiny_stage1_model(ROWS, processor=processor, steps=250, dataloader_pin_memory=False)
    return RimeEncoder(model, processor)


@pytest.fixture(scope="module")
def blind(trained) -> RimeEncoder:
    model = RewriteBlindModel(trained.model.config)
    model.load_state_dict(trained.model.state_dict())
    return RimeEncoder(model.eval(), trained.processor)


@pytest.fixture(scope="module")
def figures(trained, blind) -> dict:
    """The diagnostic of both models, on one task of the 16 training pairs."""
    run = dict(max_new_tokens=BUDGET, batch_size=16, show_progress_bar=False)
    return {
        "trained": rewrite_sensitivity(trained, [colors_task(ROWS)], **run),
        "blind": rewrite_sensitivity(blind, [colors_task(ROWS)], **run),
    }


# ---------------------------------------------------------------------------------------------- the pure pieces


@pytest.mark.parametrize("n", [2, 3, 5, 16])
def test_a_derangement_moves_every_element_and_depends_only_on_its_seed(n):
    for seed in range(20):
        partners = random_derangement(n, seed)
        assert sorted(partners.tolist()) == list(range(n)) and (partners != np.arange(n)).all()
        assert partners.tolist() == random_derangement(n, seed).tolist()
    if n > 2:  # of 2 elements, the swap is the only derangement
        assert len({tuple(random_derangement(n, seed)) for seed in range(20)}) > 1


def test_derangements_are_drawn_uniformly():
    """Of 4 elements there are 9 derangements; rejection sampling draws each about as often."""
    drawn = [tuple(random_derangement(4, seed)) for seed in range(900)]
    possible = [p for p in itertools.permutations(range(4)) if all(p[i] != i for i in range(4))]
    counts = [drawn.count(p) for p in possible]
    assert len(possible) == 9 and sum(counts) == 900 and min(counts) > 60 and max(counts) < 140, counts


def test_a_derangement_needs_two_elements():
    with pytest.raises(ValueError, match="at least 2"):
        random_derangement(1)


def test_paired_cosines_are_row_by_row_and_scale_free():
    a = np.array([[3.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0], [-2.0, -2.0], [1.0, 0.0]])
    np.testing.assert_allclose(paired_cosines(a, b), [1.0, -1.0, 0.0])
    with pytest.raises(ValueError, match="one shape"):
        paired_cosines(a, b[:2])


def test_drops_and_the_mean_over_tasks():
    assert rewrite_drops({"own": 1.0, "swapped": 0.25, "removed": 1.0}) == {"swapped": 0.75, "removed": 0.0}
    row = {
        "num_queries": 4,
        "identical_swaps": 1,
        "hit@1": {"gen->disc": {"own": 1.0, "swapped": 0.0, "removed": 0.5}},
        "cosine": {"swapped": 0.2, "removed": 0.6},
    }
    other = {**row, "identical_swaps": 0, "cosine": {"swapped": 0.4, "removed": 1.0}}
    overall = mean_over_tasks({"a": row, "b": other})
    assert overall["num_tasks"] == 2 and overall["num_queries"] == 8 and overall["identical_swaps"] == 1
    assert overall["drop"] == {"gen->disc": {"swapped": 1.0, "removed": 0.5}}
    assert overall["cosine"] == pytest.approx({"swapped": 0.3, "removed": 0.8})


def test_the_table_has_a_row_per_task_and_pair_and_an_overall_row():
    per_task = {
        "hit@1": {pair: {"own": 1.0, "swapped": 0.25, "removed": 0.5} for pair in ("gen->disc", "gen->gen")},
        "cosine": {"swapped": 0.5, "removed": 0.75},
        "num_queries": 4,
        "identical_swaps": 1,
    }
    per_task["drop"] = {pair: rewrite_drops(hits) for pair, hits in per_task["hit@1"].items()}
    tasks = {"a": per_task, "b": per_task}
    results = {"max_new_tokens": 8, "tasks": tasks, "overall": mean_over_tasks(tasks)}
    lines = format_rewrite_sensitivity(results).splitlines()
    assert lines[0].startswith("| task | queries | pair | own | swapped | removed | own − swapped")
    assert lines[2] == "| a | 4 | gen->disc | 1.000 | 0.250 | 0.500 | +0.750 | +0.500 | 0.500 | 0.750 |"
    assert [line.split(" | ")[0] for line in lines[2:8]] == ["| a", "| a", "| b", "| b", "| overall", "| overall"]
    assert "2 of 8 swaps between identical rewrites" in lines[-1] and "budget 8 tokens" in lines[-1]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([], "at least one task"),
        ([colors_task(ROWS[:1])], "'colors' has 1 query; swapping rewrites needs at least 2"),
        ([colors_task(ROWS[:2]), colors_task(ROWS[2:4])], "unique"),
        (
            [RetrievalTask("bad", queries=["a", {"txt": "b"}], corpus=["x"], relevance=[{0: 1}, {0: 1}])],
            r"task 'bad' query 1: unknown key",
        ),
    ],
)
def test_tasks_the_diagnostic_cannot_run_on_are_refused_before_model_work(tasks, message):
    with pytest.raises(ValueError, match=message):
        check_tasks(tasks)
    with pytest.raises(ValueError, match=message):
        rewrite_sensitivity(object(), tasks)  # no encoder method is reached


# ------------------------------------------------------------------------------------------- the two tiny models


def _row(results: dict) -> dict:
    return results["tasks"]["colors"]


def test_a_model_whose_gen_embedding_ignores_its_rewrite_shows_no_drop(figures):
    blind, trained = _row(figures["blind"]), _row(figures["trained"])
    for pair in ("gen->disc", "gen->gen"):
        hits = blind["hit@1"][pair]
        assert hits["own"] == hits["swapped"] == hits["removed"], hits
        assert blind["drop"][pair] == {"swapped": 0.0, "removed": 0.0}
    assert blind["cosine"]["swapped"] > 0.999 and blind["cosine"]["removed"] > 0.999
    # the failure is invisible in the usual score: the blind model still retrieves well from its prompt alone
    assert blind["hit@1"]["gen->disc"]["own"] >= 0.75
    # it wrote the same (distinct) rewrites as the trained model; only where its embedding is read differs
    assert blind["identical_swaps"] == trained["identical_swaps"] == 0


def test_a_trained_model_that_reads_its_rewrite_shows_a_clear_drop(figures):
    trained, blind = _row(figures["trained"]), _row(figures["blind"])
    for pair in ("gen->disc", "gen->gen"):
        assert trained["hit@1"][pair]["own"] >= 0.9, trained["hit@1"]
        assert trained["drop"][pair]["swapped"] >= 0.2, trained["hit@1"]
    assert trained["cosine"]["swapped"] < 0.9 and trained["cosine"]["swapped"] < blind["cosine"]["swapped"] - 0.1
    assert trained["unfinished_share"] == 0.0 and figures["trained"]["max_new_tokens"] == BUDGET
    overall = figures["trained"]["overall"]
    assert overall["hit@1"] == trained["hit@1"] and overall["cosine"] == trained["cosine"]


def test_own_is_the_usual_gen_mode_score(trained, figures):
    usual = evaluate(trained, [colors_task(ROWS)], query_modes=("gen",), max_new_tokens=BUDGET, batch_size=16)
    for pair in ("gen->disc", "gen->gen"):
        assert _row(figures["trained"])["hit@1"][pair]["own"] == usual["scores"]["colors"][pair]


# --------------------------------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def saved_model(trained, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("model")
    trained.save_pretrained(folder, model_card=False)
    return str(folder)


def test_rime_diagnose_prints_the_table_and_writes_the_figures(saved_model, figures, tmp_path, capsys):
    write_task(colors_task(ROWS), tmp_path / "tasks" / "colors")
    write_task(colors_task(ROWS[:8], "first8"), tmp_path / "tasks" / "first8")
    out = tmp_path / "out"
    arguments = ["--model", saved_model, "--tasks", str(tmp_path / "tasks"), "--output-dir", str(out)]
    assert rime(["diagnose", *arguments, "--max-new-tokens", str(BUDGET), "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "| colors | 16 | gen->disc |" in printed and "| overall | 24 | gen->gen |" in printed
    written = json.loads((out / "rewrite_sensitivity.json").read_text())
    assert sorted(written["tasks"]) == ["colors", "first8"] and written["max_new_tokens"] == BUDGET
    # the reloaded model gives the figures of the one in memory
    assert written["tasks"]["colors"]["hit@1"] == _row(figures["trained"])["hit@1"]
    assert written["tasks"]["colors"]["cosine"] == pytest.approx(_row(figures["trained"])["cosine"], abs=1e-4)
    assert [p.name for p in out.iterdir()] == ["rewrite_sensitivity.json"]  # no temporary file left


def test_rime_diagnose_refuses_bad_input_before_loading_the_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(RimeEncoder, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    write_task(colors_task(ROWS[:1], "single"), tmp_path / "single")
    (tmp_path / "not-a-task").mkdir()
    (tmp_path / "a-file").write_text("")
    base = ["diagnose", "--model", "unused", "--output-dir", str(tmp_path / "out"), "--tasks"]
    for folders, message in (
        ([tmp_path / "missing"], f"{tmp_path / 'missing'}: no such folder"),
        ([tmp_path / "not-a-task"], f"{tmp_path / 'not-a-task'} holds no task"),
        ([tmp_path / "single"], "'single' has 1 query"),
    ):
        assert rime([*base, *map(str, folders)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rime diagnose: ") and message in err, err
    arguments = ["diagnose", "--model", "unused", "--tasks", str(tmp_path / "single")]
    assert rime([*arguments, "--output-dir", str(tmp_path / "a-file")]) == 2
    assert "--output-dir" in capsys.readouterr().err
