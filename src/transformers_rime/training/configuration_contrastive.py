"""Arguments of RIME's stage-1 trainer (SFT on rewrites + contrastive + Cross-Mode Alignment)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class RimeContrastiveConfig(TrainingArguments):
    r"""
    Configuration for [`RimeContrastiveTrainer`]: every `transformers.TrainingArguments` field plus RIME's.

    The loss is `lm_weight * LM(rewrite + <gen_emb>) + disc_weight * NCE(disc) + gen_weight * NCE(gen) +
    cma_weight * CMA`; a weight of 0 turns its term off (and, with `lm_weight`, `gen_weight` and `cma_weight` all
    0, no rewrite is needed and only disc prompts are run). The paper's recipe (reconstructed from UME-R1, see the
    project's research notes): Qwen2-VL-2B-Instruct, `learning_rate=5e-5`, cosine schedule, `warmup_ratio=0.03`,
    `temperature=0.02`, bf16, gradient checkpointing, vision tower frozen, 1024 pairs per optimizer step.

    Parameters:
        > Loss

        temperature (`float`, *optional*, defaults to `0.02`):
            Softmax temperature of every InfoNCE term (UME-R1's fixed logit scale 50).
        symmetric (`bool`, *optional*, defaults to `True`):
            Add the document-to-query direction to each InfoNCE term.
        lm_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the language-modelling loss on the rewrite and `<gen_emb>` tokens.
        disc_weight (`float`, *optional*, defaults to `1.0`):
            Weight of InfoNCE between disc queries and disc documents.
        gen_weight (`float`, *optional*, defaults to `1.0`):
            Weight of InfoNCE between gen queries and gen documents.
        cma_weight (`float`, *optional*, defaults to `1.0`):
            Weight of Cross-Mode Alignment, `1/2 [NCE(gen q, disc d) + NCE(disc q, gen d)]`.
        same_input_weight (`float`, *optional*, defaults to `0.0`):
            Weight, inside CMA, of the same-input term `1 - cos(gen(x), disc(x))`.
        gather_across_devices (`bool`, *optional*, defaults to `True`):
            Use every process's documents as negatives (gathered with gradients), so that 8 GPUs x 4 pairs train
            like one batch of 32.

        > Batching

        cached_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Cached-gradient (GradCache) training: embed the batch in chunks of this many items without keeping
            activations, take the loss gradient with respect to the embeddings, then re-run each chunk with
            gradients. Gradients equal the uncached ones; peak memory is that of one chunk, so the batch size is
            limited by time, not memory. Works on one process and with DDP; not with DeepSpeed or FSDP.
        homogeneous_batches (`bool`, *optional*, defaults to `False`):
            Draw every global batch (all processes together) from one source dataset, for harder in-batch negatives
            (UME-R1 and VLM2Vec do this). Needs a `source_column`; incomplete batches of a source are dropped each
            epoch (a different remainder every epoch).
        source_column (`str`, *optional*, defaults to `"source"`):
            Dataset column naming each row's source dataset.
        max_length (`int` or `None`, *optional*, defaults to `None`):
            Longest allowed sequence (prompt + rewrite) in tokens. Longer rows are an error, never truncated.

        > Model

        freeze_vision_tower (`bool`, *optional*, defaults to `True`):
            Freeze the vision encoder except its merger (the UME-R1 recipe trains the language model and the merger).
            Ignored when a `peft_config` is given (PEFT freezes what it does not adapt).

        > Overridden defaults of `TrainingArguments`

        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            The collator needs the raw columns.
        ddp_find_unused_parameters (`bool`, *optional*, defaults to `True`):
            A text-only batch leaves the vision merger unused; DDP must expect that.
        logging_steps (`float`, *optional*, defaults to `10`):
            Log every 10 steps (each loss term and the in-batch accuracy of all four mode pairs).
    """

    temperature: float = field(default=0.02, metadata={"help": "Softmax temperature of the InfoNCE terms."})
    symmetric: bool = field(default=True, metadata={"help": "Add the document-to-query direction to InfoNCE."})
    lm_weight: float = field(default=1.0, metadata={"help": "Weight of the LM loss on the rewrite."})
    disc_weight: float = field(default=1.0, metadata={"help": "Weight of InfoNCE in the disc space."})
    gen_weight: float = field(default=1.0, metadata={"help": "Weight of InfoNCE in the gen space."})
    cma_weight: float = field(default=1.0, metadata={"help": "Weight of Cross-Mode Alignment."})
    same_input_weight: float = field(default=0.0, metadata={"help": "Weight of CMA's same-input cosine term."})
    gather_across_devices: bool = field(
        default=True, metadata={"help": "Gather documents from every process as negatives (with gradients)."}
    )
    cached_batch_size: int | None = field(
        default=None, metadata={"help": "Items per chunk for cached-gradient (GradCache) training; None: off."}
    )
    homogeneous_batches: bool = field(
        default=False, metadata={"help": "Draw each global batch from a single source dataset."}
    )
    source_column: str = field(default="source", metadata={"help": "Column naming each row's source dataset."})
    max_length: int | None = field(default=None, metadata={"help": "Longest sequence in tokens (never truncated)."})
    freeze_vision_tower: bool = field(default=True, metadata={"help": "Freeze the vision encoder except its merger."})

    remove_unused_columns: bool = field(default=False, metadata={"help": "The collator needs the raw columns."})
    ddp_find_unused_parameters: bool | None = field(
        default=True, metadata={"help": "Text-only batches leave vision parameters unused."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})

    def __post_init__(self):
        super().__post_init__()
        weights = {name: getattr(self, name) for name in ("lm_weight", "disc_weight", "gen_weight", "cma_weight")}
        negative = [name for name, value in weights.items() if value < 0]
        if negative or self.same_input_weight < 0:
            raise ValueError(f"Loss weights must be >= 0; got {negative or ['same_input_weight']} negative.")
        if not any(weights.values()):
            raise ValueError("Every loss weight is 0: nothing to train.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if self.cached_batch_size is not None and self.cached_batch_size < 1:
            raise ValueError(f"cached_batch_size must be a positive integer or None, got {self.cached_batch_size}.")
        # A collated batch holds groups of chunks whose pixel tensors are indexed by patch, not by row, so accelerate
        # cannot slice it across processes; it would do so by default for an IterableDataset (dispatch_batches).
        accelerator_config = getattr(self, "accelerator_config", None)
        if accelerator_config is not None:
            if accelerator_config.split_batches or accelerator_config.dispatch_batches:
                raise ValueError(
                    "accelerator_config: split_batches and dispatch_batches cannot be used with RIME batches (their "
                    "pixel tensors cannot be split by row); each process reads its own batches."
                )
            accelerator_config.dispatch_batches = False

    @property
    def uses_rewrites(self) -> bool:
        """Whether any term needs the teacher-forced gen-mode sequence (the rewrite)."""
        return bool(self.lm_weight or self.gen_weight or self.cma_weight)

    @property
    def uses_gen_embeddings(self) -> bool:
        """Whether any term reads the generative embedding."""
        return bool(self.gen_weight or self.cma_weight)


__all__ = ["RimeContrastiveConfig"]
