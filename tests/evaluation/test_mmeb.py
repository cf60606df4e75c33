"""The pinned MMEB-V2 manifest and its aggregation (overall = mean over the 78 tasks)."""

from collections import Counter

import numpy as np
import pytest

from transformers_rime.evaluation.mmeb import MMEB_V2_BY_NAME, MMEB_V2_TASKS, mmeb_v2_scores


def test_manifest_matches_the_published_task_groups():
    assert len(MMEB_V2_BY_NAME) == len(MMEB_V2_TASKS) == 78
    assert Counter(t.group for t in MMEB_V2_TASKS) == {
        "image/CLS": 10, "image/QA": 10, "image/RET": 12, "image/VG": 4,
        "video/CLS": 5, "video/QA": 5, "video/RET": 5, "video/MRET": 3,
        "visdoc/VDRv1": 10, "visdoc/VDRv2": 4, "visdoc/VR": 6, "visdoc/OOD": 4,
    }  # fmt: skip
    assert {t.metric for t in MMEB_V2_TASKS if t.modality != "visdoc"} == {"hit@1"}
    assert {t.metric for t in MMEB_V2_TASKS if t.modality == "visdoc"} == {"ndcg_linear@5"}
    global_pools = {t.name for t in MMEB_V2_TASKS if t.pool == "global"}
    assert global_pools == {"K700", "HMDB51", "UCF101", "Breakfast", "DiDeMo", "MSR-VTT", "MSVD", "VATEX",
                            "YouCook2"} | {t.name for t in MMEB_V2_TASKS if t.modality == "visdoc"}  # fmt: skip
    assert all(t.query_instruction for t in MMEB_V2_TASKS if t.modality == "visdoc")


def test_overall_is_the_mean_over_tasks_not_over_modalities():
    rng = np.random.default_rng(0)
    scores = {t.name: {"gen->disc": float(rng.random()), "disc->disc": float(rng.random())} for t in MMEB_V2_TASKS}
    rows = mmeb_v2_scores(scores)
    assert rows["overall"]["gen->disc"] == pytest.approx(np.mean([s["gen->disc"] for s in scores.values()]))
    image = [scores[t.name]["gen->disc"] for t in MMEB_V2_TASKS if t.modality == "image"]
    assert rows["image"]["gen->disc"] == pytest.approx(np.mean(image))
    modality_mean = np.mean([rows[m]["gen->disc"] for m in ("image", "video", "visdoc")])
    assert rows["overall"]["gen->disc"] != pytest.approx(modality_mean)
    assert len(rows) == 1 + 3 + 12


def test_partial_runs_say_so_and_unknown_tasks_fail():
    rows = mmeb_v2_scores({"ImageNet-1K": {"gen->gen": 0.4}, "CIRR": {"gen->gen": 0.2, "disc->disc": 0.1}})
    assert rows["overall (2/78 tasks)"] == {"gen->gen": pytest.approx(0.3)}  # pairs every task has
    with pytest.raises(ValueError, match="Not MMEB-V2 tasks"):
        mmeb_v2_scores({"ImageNet": {"gen->gen": 0.4}})
