"""The main job, `rime demo --fast`: trains, evaluates in every mode pair, writes its reports and reloads the model."""

import json

from PIL import Image

from transformers_rime.cli import main as rime
from transformers_rime.quickstart import PAIRS


STAGES = {"untrained", "stage1", "stage2", "stage1_no_cma"}
# Documented training margins of the --fast run (100 stage-1 steps): measured at +0.29 (disc->disc) and +0.20 (mean
# of the four pairs) over the untrained model; chance is 1/16 per kind.
DISC_MARGIN, MEAN_MARGIN = 0.15, 0.08


def test_fast_quickstart_trains_evaluates_writes_and_reloads(tmp_path, capsys):
    assert rime(["demo", "--fast", "--output-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["stages"]) == STAGES
    assert all(set(scores) == set(PAIRS) for scores in results["stages"].values())
    assert all(0.0 <= v <= 1.0 for scores in results["stages"].values() for v in scores.values())
    untrained, stage1 = results["stages"]["untrained"], results["stages"]["stage1"]
    assert stage1["disc->disc"] >= untrained["disc->disc"] + DISC_MARGIN, results["stages"]
    assert sum(stage1.values()) / 4 >= sum(untrained.values()) / 4 + MEAN_MARGIN, results["stages"]
    assert results["rewrite_tokens_median"] >= 1 and results["seconds"] > 0
    assert results["reload_max_difference"] < 1e-4  # AutoModel and SentenceTransformer give RimeEncoder's embeddings
    assert len(results["refine_rl_rewards"]) == results["settings"]["rl_steps"]
    assert Image.open(tmp_path / "results.png").size[0] > 200
    assert (tmp_path / "model" / "config.json").is_file()
    out = capsys.readouterr().out
    assert "| held-out Hit@1 | disc->disc | disc->gen | gen->disc | gen->gen |" in out
