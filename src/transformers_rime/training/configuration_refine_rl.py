"""Arguments of RIME's stage-2 trainer (Refine-RL: GRPO on the rewrite, rewards anchored on disc embeddings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from ..rewards import EMBEDDING_REWARDS, REWARD_FUNCTIONS


ANCHOR_SOURCES = ("frozen", "online")


@dataclass
class RimeRefineRLConfig(GRPOConfig):
    r"""
    Configuration for [`RimeRefineRLTrainer`]: every `trl.GRPOConfig` field plus RIME's.

    Each rollout (a sampled rewrite ending in `<gen_emb>`) is rewarded by `reward_weights`-weighted `rewards`; the
    default pair is the format reward plus the softmax probability that the rollout's generative embedding
    retrieves its target among candidates whose *discriminative* embeddings serve as anchors. GRPO defaults follow
    the paper's recipe (reconstructed from UME-R1's released scripts): `num_generations=8`, `beta=0.04`,
    `epsilon=0.2`, `epsilon_high=0.28`, `learning_rate=1e-6`, `max_completion_length=128`.

    Parameters:
        > Rewards

        rewards (`list[str]`, *optional*, defaults to `["format", "anchor_retrieval"]`):
            Names of the reward functions in `transformers_rime.rewards.REWARD_FUNCTIONS`: `format`,
            `anchor_retrieval`, `margin`, `rank`, `length` and `rollout_contrast` (UME-R1's rollout-vs-rollout
            reward, needs `symmetric_rollouts`). Weights go in `reward_weights` (default: 1 each, summed as in
            UME-R1). More reward callables can be passed to the trainer's `reward_funcs`.
        reward_temperature (`float`, *optional*, defaults to `0.02`):
            Softmax temperature of `anchor_retrieval` (the stage-1 InfoNCE temperature). Not the sampling
            temperature, which is `temperature`.
        target_rewrite_length (`int`, *optional*, defaults to `64`):
            Length in tokens past which the `length` reward starts to penalise a rewrite.

        > Anchors and candidates

        anchor_source (`str`, *optional*, defaults to `"frozen"`):
            Where the candidates' discriminative embeddings come from: `"frozen"`, the model as it was when RL
            started (with LoRA: the adapter disabled; with full fine-tuning: a frozen copy, the reference model when
            `beta > 0`), so the anchors never drift; or `"online"`, the current policy. Either way they are computed
            once per generation batch, without gradient.
        use_dataset_negatives (`bool`, *optional*, defaults to `True`):
            Add each row's `negatives` (when the dataset has that column) to the candidate pool, next to the
            targets of the whole generation batch.
        gather_candidates_across_devices (`bool`, *optional*, defaults to `True`):
            Pool the candidates of every process, so that 8 GPUs score each rollout against 8x more candidates.
        symmetric_rollouts (`bool`, *optional*, defaults to `False`):
            Also roll out the document side of each pair (UME-R1 rolls out both): a document rollout is rewarded for
            retrieving its query among the batch's query anchors.

        > Model

        freeze_vision_tower (`bool`, *optional*, defaults to `True`):
            Keep the vision encoder frozen except its merger (as in stage 1). Ignored with LoRA.
        max_prompt_length (`int`, *optional*):
            Refuse prompts longer than this many tokens (TRL no longer truncates prompts, and RIME never cuts one):
            the error names the row. `None` accepts any length.
    """

    # RIME's GRPO defaults (TRL's own: beta 0.0, epsilon_high None, max_completion_length 512)
    beta: float = field(default=0.04, metadata={"help": "KL coefficient against the reference (initial) model."})
    epsilon_high: float | None = field(default=0.28, metadata={"help": "Upper clip bound (DAPO clip-higher)."})
    max_completion_length: int | None = field(default=128, metadata={"help": "Rewrite budget in tokens."})

    rewards: list[str] = field(
        default_factory=lambda: ["format", "anchor_retrieval"],
        metadata={"help": f"Reward functions by name: {', '.join(REWARD_FUNCTIONS)}."},
    )
    reward_temperature: float = field(default=0.02, metadata={"help": "Softmax temperature of anchor_retrieval."})
    target_rewrite_length: int = field(default=64, metadata={"help": "Length where the length reward starts."})
    anchor_source: str = field(default="frozen", metadata={"help": "frozen (initial model) or online (policy)."})
    use_dataset_negatives: bool = field(default=True, metadata={"help": "Add the rows' negatives as candidates."})
    gather_candidates_across_devices: bool = field(
        default=True, metadata={"help": "Pool the candidates of every process."}
    )
    symmetric_rollouts: bool = field(default=False, metadata={"help": "Also roll out the document side."})
    freeze_vision_tower: bool = field(default=True, metadata={"help": "Freeze the vision encoder except its merger."})
    max_prompt_length: int | None = field(default=None, metadata={"help": "Refuse longer prompts (tokens)."})

    def __post_init__(self):
        super().__post_init__()
        unknown = [name for name in self.rewards if name not in REWARD_FUNCTIONS]
        if unknown:
            raise ValueError(f"Unknown reward(s) {unknown}; choose from {', '.join(REWARD_FUNCTIONS)}.")
        if not self.rewards:
            raise ValueError("`rewards` is empty: Refine-RL needs at least one reward.")
        if self.anchor_source not in ANCHOR_SOURCES:
            raise ValueError(f"anchor_source must be one of {ANCHOR_SOURCES}, got {self.anchor_source!r}.")
        if "rollout_contrast" in self.rewards and not self.symmetric_rollouts:
            raise ValueError(
                "The rollout_contrast reward compares query and document rollouts: set symmetric_rollouts."
            )
        if self.reward_temperature <= 0:
            raise ValueError(f"reward_temperature must be positive, got {self.reward_temperature}.")

    @property
    def uses_embeddings(self) -> bool:
        """Whether some reward reads rollout embeddings (else no embedding forward is run)."""
        return any(name in EMBEDDING_REWARDS for name in self.rewards)


__all__ = ["RimeRefineRLConfig"]
