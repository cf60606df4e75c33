"""MMEB-V2's 78 tasks, pinned, and its score aggregation.

The task list, groups, main metrics and candidate pools follow VLM2Vec's official evaluation configs
(`experiments/public/eval/{image,video,visdoc}.yaml` and `experiments/report_score_v2.py`, `main` @ `6e1e1d4`,
2026-01-27). The leaderboard changed under its users before (task counts, the re-made VisDoc "-page" sets of
2025-11-03), so the list is pinned here and a result names the manifest version it was scored against.

Aggregation as in `report_score_v2.py`: a modality's score is the unweighted mean of its tasks' main metrics, and
`overall` is the mean over all 78 tasks, not the mean of the three modality means (image tasks are 36 of the 78).

```python
>>> len(MMEB_V2_TASKS), {m: sum(t.modality == m for t in MMEB_V2_TASKS) for m in ("image", "video", "visdoc")}
(78, {'image': 36, 'video': 18, 'visdoc': 24})

```
"""

from __future__ import annotations

from dataclasses import dataclass

from .harness import mean_by_pair


MMEB_V2_MANIFEST_VERSION = "VLM2Vec@6e1e1d4 (2026-01-27)"
VISDOC_QUERY_INSTRUCTION = "Find a document image that matches the given query:"
VISDOC_CORPUS_INSTRUCTION = "Understand the content of the provided document image."


@dataclass(frozen=True)
class MmebTask:
    """One MMEB-V2 task: its modality, meta-task, main metric and candidate pool (`local`: each query's own
    candidate list; `global`: the whole de-duplicated corpus). Instructions are given only where they are not
    already part of the task's data (MMEB-V1-derived image tasks carry them in the query text)."""

    name: str
    modality: str
    meta_task: str
    metric: str
    pool: str
    query_instruction: str | None = None
    corpus_instruction: str | None = None

    @property
    def group(self) -> str:
        return f"{self.modality}/{self.meta_task}"


def _tasks(modality: str, meta_task: str, metric: str, pool: str, names: str, **instructions) -> list[MmebTask]:
    return [MmebTask(name, modality, meta_task, metric, pool, **instructions) for name in names.split()]


_VISDOC = dict(query_instruction=VISDOC_QUERY_INSTRUCTION, corpus_instruction=VISDOC_CORPUS_INSTRUCTION)

MMEB_V2_TASKS: tuple[MmebTask, ...] = tuple(
    _tasks(
        "image",
        "CLS",
        "hit@1",
        "local",
        "ImageNet-1K N24News HatefulMemes VOC2007 SUN397 Place365 ImageNet-A ImageNet-R ObjectNet Country211",
    )
    + _tasks(
        "image",
        "QA",
        "hit@1",
        "local",
        "OK-VQA A-OKVQA DocVQA InfographicsVQA ChartQA Visual7W ScienceQA VizWiz GQA TextVQA",
    )
    + _tasks(
        "image",
        "RET",
        "hit@1",
        "local",
        "VisDial CIRR VisualNews_t2i VisualNews_i2t MSCOCO_t2i MSCOCO_i2t NIGHTS WebQA FashionIQ Wiki-SS-NQ OVEN EDIS",
    )
    + _tasks("image", "VG", "hit@1", "local", "MSCOCO RefCOCO RefCOCO-Matching Visual7W-Pointing")
    + _tasks("video", "CLS", "hit@1", "global", "K700 HMDB51 UCF101 Breakfast")
    + _tasks("video", "CLS", "hit@1", "local", "SmthSmthV2")
    + _tasks("video", "QA", "hit@1", "local", "MVBench Video-MME NExTQA EgoSchema ActivityNetQA")
    + _tasks("video", "RET", "hit@1", "global", "DiDeMo MSR-VTT MSVD VATEX YouCook2")
    + _tasks("video", "MRET", "hit@1", "local", "QVHighlight Charades-STA MomentSeeker")
    + _tasks(
        "visdoc",
        "VDRv1",
        "ndcg_linear@5",
        "global",
        "ViDoRe_arxivqa ViDoRe_docvqa ViDoRe_infovqa ViDoRe_tabfquad ViDoRe_tatdqa ViDoRe_shiftproject "
        "ViDoRe_syntheticDocQA_artificial_intelligence ViDoRe_syntheticDocQA_energy "
        "ViDoRe_syntheticDocQA_government_reports ViDoRe_syntheticDocQA_healthcare_industry",
        **_VISDOC,
    )
    + _tasks(
        "visdoc",
        "VDRv2",
        "ndcg_linear@5",
        "global",
        "ViDoRe_esg_reports_human_labeled_v2 ViDoRe_biomedical_lectures_v2_multilingual "
        "ViDoRe_economics_reports_v2_multilingual ViDoRe_esg_reports_v2_multilingual",
        **_VISDOC,
    )
    + _tasks(
        "visdoc",
        "VR",
        "ndcg_linear@5",
        "global",
        "VisRAG_ArxivQA VisRAG_ChartQA VisRAG_MP-DocVQA VisRAG_SlideVQA VisRAG_InfoVQA VisRAG_PlotQA",
        **_VISDOC,
    )
    + _tasks(
        "visdoc",
        "OOD",
        "ndcg_linear@5",
        "global",
        "ViDoSeek-page ViDoSeek-doc MMLongBench-page MMLongBench-doc",
        **_VISDOC,
    )
)
MMEB_V2_BY_NAME = {task.name: task for task in MMEB_V2_TASKS}


def mmeb_v2_scores(task_scores: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """MMEB-V2's aggregate rows from per-task scores (`{task: {"gen->disc": main metric, ...}}`).

    Returns `overall` (mean over the tasks given), one row per modality and one per `modality/meta-task`, each a
    mean over its tasks' scores, pair by pair. Unknown task names are an error; with fewer than the 78 tasks the
    rows average what is there and `overall` is renamed `overall (n/78 tasks)`, so a partial run never passes for a
    full one.

    ```python
    >>> rows = mmeb_v2_scores({"ImageNet-1K": {"disc->disc": 0.5}, "DiDeMo": {"disc->disc": 0.3}})
    >>> sorted(rows), rows["image"]
    (['image', 'image/CLS', 'overall (2/78 tasks)', 'video', 'video/RET'], {'disc->disc': 0.5})

    ```
    """
    unknown = sorted(set(task_scores) - set(MMEB_V2_BY_NAME))
    if unknown:
        raise ValueError(f"Not MMEB-V2 tasks: {unknown[:5]} (see MMEB_V2_TASKS for the names).")
    groups: dict[str, list[str]] = {}
    for name in task_scores:
        task = MMEB_V2_BY_NAME[name]
        groups.setdefault(task.modality, []).append(name)
        groups.setdefault(task.group, []).append(name)
    complete = len(task_scores) == len(MMEB_V2_TASKS)
    overall = "overall" if complete else f"overall ({len(task_scores)}/{len(MMEB_V2_TASKS)} tasks)"
    rows = {overall: list(task_scores), **{group: groups[group] for group in sorted(groups)}}
    return {row: mean_by_pair([task_scores[name] for name in members]) for row, members in rows.items()}


__all__ = [
    "MMEB_V2_BY_NAME",
    "MMEB_V2_MANIFEST_VERSION",
    "MMEB_V2_TASKS",
    "MmebTask",
    "mmeb_v2_scores",
]
