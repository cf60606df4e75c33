"""The synthetic multimodal retrieval data: kinds, gold rewrites, and a held-out split of unseen combinations."""

import itertools
import re

import pytest
from PIL import Image

from transformers_rime.data.synthetic import (
    COLORS,
    HELDOUT_PAIRS,
    KINDS,
    SHAPES,
    SyntheticPairStream,
    synthetic_pairs,
)
from transformers_rime.evaluation import synthetic_tasks


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


def test_hard_negatives_are_other_documents_of_the_same_kind():
    rows = synthetic_pairs("train", per_kind=6, seed=0, negatives=3)
    for row in rows:
        same_kind = [other["positive"] for other in rows if other["source"] == row["source"] and other is not row]
        assert len(row["negatives"]) == 3 and all(any(n is d for d in same_kind) for n in row["negatives"])
    with pytest.raises(ValueError, match="negatives must be in"):
        synthetic_pairs(per_kind=4, negatives=4)


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


def test_stream_blocks_have_distinct_documents_fresh_renders_and_no_heldout_pair():
    blocks = list(itertools.islice(SyntheticPairStream("train", batch_size=20, seed=0), 60))
    blocks = [blocks[i : i + 20] for i in range(0, 60, 20)]
    for block in blocks:
        assert [row["source"] for row in block[:5]] == list(KINDS)  # kinds take turns within a batch
        # a document's rewrite names it, so distinct rewrites mean no row's document is another row's
        assert len({row["positive_rewrite"] for row in block}) == 20
        assert not any(pairs_named(row["query_rewrite"]) & HELDOUT_PAIRS for row in block)
    images = [row["positive"].tobytes() for block in blocks for row in block if row["source"] == "text_to_image"]
    assert len(set(images)) == len(images)  # rendered as drawn: no image comes back
    first = next(iter(SyntheticPairStream("train", batch_size=20, seed=0)))
    assert first["query"] == blocks[0][0]["query"]  # reproducible from the seed


def test_homogeneous_stream_gives_one_kind_per_block_and_clear_errors():
    rows = list(itertools.islice(SyntheticPairStream(batch_size=6, kinds=KINDS[:2], homogeneous=True), 24))
    assert [row["source"] for row in rows[::6]] == [KINDS[0], KINDS[1]] * 2
    assert all(len({row["source"] for row in rows[i : i + 6]}) == 1 for i in range(0, 24, 6))
    with pytest.raises(ValueError, match="more than it has distinct"):  # 96 distinct videos in the train split
        next(itertools.islice(SyntheticPairStream(batch_size=200, kinds=("text_to_video",)), 199, None))
    with pytest.raises(ValueError, match="split"):
        SyntheticPairStream("test")
    with pytest.raises(ValueError, match="kinds"):
        SyntheticPairStream(kinds=("text_to_audio",))
