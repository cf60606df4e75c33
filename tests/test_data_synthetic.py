"""The synthetic multimodal retrieval data: kinds, gold rewrites, and a held-out split of unseen combinations."""

import re

import pytest
from PIL import Image

from transformers_rime.data.synthetic import COLORS, HELDOUT_PAIRS, KINDS, SHAPES, synthetic_pairs, synthetic_tasks


PAIR = re.compile(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})")


def pairs_named(text: str) -> set[tuple[str, str]]:
    return set(PAIR.findall(text))


def test_every_kind_is_present_with_its_modalities_and_rewrites():
    rows = synthetic_pairs("train", per_kind=8, seed=0)
    assert len(rows) == 40 and [row["source"] for row in rows[:5]] == list(KINDS)  # interleaved kinds
    by_kind = {kind: [row for row in rows if row["source"] == kind] for kind in KINDS}
    assert all(isinstance(r["positive"], Image.Image) for r in by_kind["text_to_image"] + by_kind["text_to_page"])
    assert all(isinstance(r["query"], Image.Image) for r in by_kind["image_to_text"])
    assert all(set(r["query"]) == {"text", "image"} for r in by_kind["image_question_to_answer"])
    assert all(len(r["positive"]) == 4 for r in by_kind["text_to_video"])  # frame lists
    assert all(r["query_rewrite"] and r["positive_rewrite"] for r in rows)
    for kind in KINDS:  # no document twice within a kind: in-batch negatives are never copies of the positive
        assert len({r["positive_rewrite"] for r in by_kind[kind]}) == len(by_kind[kind])


def test_heldout_items_all_contain_an_unseen_pair_and_train_items_none():
    train = synthetic_pairs("train", per_kind=64, seed=0)
    heldout = [row for task in synthetic_tasks("heldout", per_kind=24, seed=1) for row in task.queries]
    for row in train:
        assert not pairs_named(row["query_rewrite"]) & HELDOUT_PAIRS, row["query_rewrite"]
    texts = [q if isinstance(q, str) else q.get("text", "") if isinstance(q, dict) else "" for q in heldout]
    captions = [t for t in texts if pairs_named(t)]
    assert len(captions) >= 48 and all(pairs_named(t) & HELDOUT_PAIRS for t in captions)
    assert len(HELDOUT_PAIRS) == 8 and {s for _, s in HELDOUT_PAIRS} == set(SHAPES)


def test_tasks_rank_each_query_against_its_kinds_documents_and_are_reproducible():
    tasks = synthetic_tasks("heldout", per_kind=16, seed=3)
    assert [t.name for t in tasks] == list(KINDS) and all(t.metric == "hit@1" for t in tasks)
    answers = tasks[KINDS.index("image_question_to_answer")]
    assert all(doc.startswith("the answer: the ") for doc in answers.corpus)
    assert all(len(t.corpus) == 16 and t.relevance == [{i: 1.0} for i in range(16)] for t in tasks)
    again = synthetic_tasks("heldout", per_kind=16, seed=3)
    assert [t.fingerprint() for t in tasks] == [t.fingerprint() for t in again]
    assert tasks[0].fingerprint() != synthetic_tasks("heldout", per_kind=16, seed=4)[0].fingerprint()
    with pytest.raises(ValueError, match="cannot make"):
        synthetic_tasks("heldout", per_kind=200)
