"""Rewards of Refine-RL (RIME's stage 2): plain functions, each usable as a TRL reward function.

- [`anchor_retrieval_reward`] (default): softmax probability of the target among candidates anchored by their
  discriminative embeddings; [`margin_reward`] and [`rank_reward`] are alternatives on the same scores.
- [`format_reward`] (default): the rollout is one `<rewrite>…</rewrite>` followed by `<gen_emb>`.
- [`length_reward`] (off by default): penalises rewrites past a target length.
- [`rollout_contrast_reward`]: UME-R1's rollout-vs-rollout reward, for comparison runs.

`REWARD_FUNCTIONS` maps the names used in `RimeRefineRLConfig.rewards` to them.
"""

from .retrieval import anchor_retrieval_reward, candidate_scores, margin_reward, rank_reward, rollout_contrast_reward
from .text import completion_text, format_reward, is_well_formed, length_reward


REWARD_FUNCTIONS = {
    "format": format_reward,
    "anchor_retrieval": anchor_retrieval_reward,
    "margin": margin_reward,
    "rank": rank_reward,
    "length": length_reward,
    "rollout_contrast": rollout_contrast_reward,
}
# rewards that read embeddings (the others only read text)
EMBEDDING_REWARDS = ("anchor_retrieval", "margin", "rank", "rollout_contrast")

__all__ = [
    "EMBEDDING_REWARDS",
    "REWARD_FUNCTIONS",
    "anchor_retrieval_reward",
    "candidate_scores",
    "completion_text",
    "format_reward",
    "is_well_formed",
    "length_reward",
    "margin_reward",
    "rank_reward",
    "rollout_contrast_reward",
]
