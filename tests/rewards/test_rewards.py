"""Refine-RL rewards against hand-computed values."""

import math

import pytest
import torch

from transformers_rime.rewards import (
    REWARD_FUNCTIONS,
    anchor_retrieval_reward,
    format_reward,
    length_reward,
    margin_reward,
    rank_reward,
    rollout_contrast_reward,
)


# three unit anchors and two rollouts: scores of rollout 0 are (0.6, 0.8, 0), of rollout 1 (1, 0, 0)
ANCHORS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
ROLLOUTS = torch.tensor([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0]])


def test_anchor_retrieval_reward_is_the_softmax_probability_of_the_positive():
    rewards = anchor_retrieval_reward(ROLLOUTS, ANCHORS, [0, 0], temperature=0.1)
    expected_0 = math.exp(6) / (math.exp(6) + math.exp(8) + math.exp(0))
    expected_1 = math.exp(10) / (math.exp(10) + 2 * math.exp(0))
    assert rewards == pytest.approx([expected_0, expected_1], rel=1e-5)


def test_anchor_retrieval_reward_ties_and_single_candidate():
    tie = torch.tensor([[1.0, 0.0]])
    assert anchor_retrieval_reward(tie, torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 1.0]]), [1]) == pytest.approx(
        [1 / 3]
    )
    assert anchor_retrieval_reward(tie, torch.tensor([[0.3, 0.9]]), [0]) == pytest.approx([1.0])


def test_embedding_rewards_accept_per_row_pools_as_trl_passes_them():
    """TRL hands reward functions one value per rollout: vectors and (possibly different) anchor matrices."""
    per_row = anchor_retrieval_reward(list(ROLLOUTS), [ANCHORS, ANCHORS[:1]], [1, 0], temperature=0.1)
    expected_0 = math.exp(8) / (math.exp(6) + math.exp(8) + math.exp(0))
    assert per_row == pytest.approx([expected_0, 1.0], rel=1e-5)


def test_margin_reward():
    assert margin_reward(ROLLOUTS, ANCHORS, [0, 0]) == pytest.approx([0.6 - 0.8, 1.0 - 0.0])
    assert margin_reward(ROLLOUTS, ANCHORS, [1, 2]) == pytest.approx([0.8 - 0.6, 0.0 - 1.0])
    # no negative: the hardest one counts as orthogonal
    assert margin_reward(ROLLOUTS[:1], ANCHORS[1:2], [0]) == pytest.approx([0.8])


def test_rank_reward_counts_ties_against_the_positive():
    assert rank_reward(ROLLOUTS, ANCHORS, [0, 0]) == [0.5, 1.0]
    assert rank_reward(ROLLOUTS, ANCHORS, [2, 2]) == [1 / 3, 1 / 3]  # rollout 1: anchors 1 and 2 tie at 0
    assert rank_reward(ROLLOUTS[:1], ANCHORS[:1], [0]) == [1.0]


def test_positive_index_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="outside its 3 candidates"):
        anchor_retrieval_reward(ROLLOUTS, ANCHORS, [0, 3])
    with pytest.raises(ValueError, match="2 rows but 1 positive"):
        rank_reward(ROLLOUTS, ANCHORS, [0])


def test_rollout_contrast_reward_matches_ume_r1_formula():
    partners = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    positive = torch.tensor([True, True, False, False])
    # rollout 0: scores (0.6, 0.96, 0.8, 0); top-2 = {1, 2}: one positive of two; means 0.78 vs 0.4
    # rollout 1: scores (1, 0.8, 0, 0): top-2 = both positives; means 0.9 vs 0
    rewards = rollout_contrast_reward(ROLLOUTS, partners, positive)
    assert rewards == pytest.approx([0.5 * (0.78 - 0.4), 1.0 * (0.9 - 0.0)])
    # every partner a positive: the negative mean is 0
    assert rollout_contrast_reward(ROLLOUTS[1:], partners[:2], torch.tensor([True, True])) == pytest.approx([0.9])
    with pytest.raises(ValueError, match="at least one"):
        rollout_contrast_reward(ROLLOUTS[1:], partners, torch.zeros(4, dtype=torch.bool))


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<rewrite>a red car</rewrite><gen_emb>", 1.0),
        ("  <rewrite> a red car </rewrite>\n<gen_emb>\n", 1.0),
        ([{"role": "assistant", "content": "<rewrite>a red car</rewrite><gen_emb>"}], 1.0),
        ("<rewrite>a red car</rewrite>", 0.0),  # unfinished: ended its turn before <gen_emb>
        ("<rewrite>a red car", 0.0),  # unfinished: ran out of tokens
        ("<rewrite>  </rewrite><gen_emb>", 0.0),  # empty rewrite
        ("<rewrite>a</rewrite><rewrite>b</rewrite><gen_emb>", 0.0),  # two rewrites
        ("Sure! <rewrite>a red car</rewrite><gen_emb>", 0.0),  # text before the rewrite
        ("<rewrite>a red car</rewrite> extra <gen_emb>", 0.0),  # text between the tags and <gen_emb>
        ("<rewrite>a red car</rewrite><gen_emb><gen_emb>", 0.0),
    ],
)
def test_format_reward(completion, expected):
    assert format_reward([completion]) == [expected]


def test_format_reward_follows_custom_tags():
    assert format_reward(["[r]x[/r]<e>"], rewrite_start="[r]", rewrite_end="[/r]", gen_emb_token="<e>") == [1.0]


def test_length_reward():
    completions = ["a b c", "a b c d e f", "a " * 20]
    assert length_reward(completions, target_length=4) == [0.0, -0.5, -1.0]
    # with token ids (what TRL passes) the tokens are counted, not the words
    assert length_reward(["x", "y"], completion_ids=[[1] * 4, [1] * 5], target_length=4) == [0.0, -0.25]
    with pytest.raises(ValueError, match="positive"):
        length_reward(["x"], target_length=0)


def test_every_reward_is_registered_by_name():
    assert set(REWARD_FUNCTIONS) == {"format", "anchor_retrieval", "margin", "rank", "length", "rollout_contrast"}
