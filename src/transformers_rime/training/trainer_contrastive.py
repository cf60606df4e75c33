"""Stage-1 RIME training: rewrite SFT + InfoNCE in both modes + Cross-Mode Alignment, on `transformers.Trainer`."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from transformers import Trainer
from transformers.utils import logging

from ..losses import ModeEmbeddings, is_distributed, rime_contrastive_loss
from ..models.rime.configuration_rime import MODES
from ..models.rime.modeling_rime import RimeForEmbedding
from ..models.rime.processing_rime import RimeProcessor
from .checkpoints import NEEDS_PROCESSOR, RimeCheckpointMixin, load_model_to_train
from .collator import RimeContrastiveCollator
from .configuration_contrastive import RimeContrastiveConfig
from .grad_cache import RandomState, cached_gradient_surrogate, leaf
from .sampler import SourceHomogeneousSampler


logger = logging.get_logger(__name__)

DISC, GEN = MODES
# (query mode, document mode) pairs whose in-batch top-1 accuracy is logged
MODE_PAIRS = ((DISC, DISC), (GEN, GEN), (GEN, DISC), (DISC, GEN))


@dataclass
class ChunkEmbeddings:
    """What one forward over a chunk gives: disc `(n, D)`, gen `(n, D)` (or None) and its summed LM loss."""

    disc: torch.Tensor
    gen: torch.Tensor | None
    lm_sum: torch.Tensor | None
    lm_tokens: int


def in_batch_accuracy(query: torch.Tensor, document: torch.Tensor) -> torch.Tensor:
    """Share of queries whose best-scoring document (among the batch's positives) is their own.

    ```python
    >>> float(in_batch_accuracy(torch.eye(3), torch.eye(3)[[0, 2, 1]]))  # rows 1 and 2 swapped
    0.3333333432674408

    ```
    """
    scores = query.float() @ document[: len(query)].float().T
    return (scores.argmax(dim=1) == torch.arange(len(query), device=query.device)).float().mean()


def freeze_vision_tower(model: RimeForEmbedding) -> int:
    """Freeze the vision encoder of a RIME model except its merger(s); return how many tensors were frozen."""
    frozen = 0
    for name, parameter in model.vlm.model.visual.named_parameters():
        if "merger" not in name and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen += 1
    return frozen


class RimeContrastiveTrainer(RimeCheckpointMixin, Trainer):
    r"""
    Trainer for RIME's first stage: teaches a Qwen-VL model to write rewrites and to embed in both modes, in one
    shared space.

    Each step embeds the batch's queries, positives and (optional) hard negatives. An item with a rewrite is one
    teacher-forced gen-mode sequence (`prompt ... <disc_emb> gen-instruction <rewrite>...</rewrite><gen_emb>`), and
    one forward over it yields its disc embedding, its gen embedding and the LM loss on the rewrite. The loss is
    `lm_weight * LM + disc_weight * NCE(disc) + gen_weight * NCE(gen) + cma_weight * CMA` (see
    [`~transformers_rime.losses.rime_contrastive_loss`]); each term and the in-batch top-1 accuracy of all four
    query/document mode pairs are logged.

    Args:
        model ([`RimeForEmbedding`], `peft.PeftModel` or `str`):
            The model, or a checkpoint to load with `RimeForEmbedding.from_pretrained`.
        args ([`RimeContrastiveConfig`], *optional*):
            Training configuration; defaults to `RimeContrastiveConfig("rime-contrastive")`.
        data_collator (*optional*):
            Defaults to a [`RimeContrastiveCollator`] over `processing_class`.
        train_dataset, eval_dataset (*optional*):
            Rows with `query`, `positive` and optional `negative(s)`, `*_rewrite(s)`, `*_instruction`, `source`
            (see [`RimeContrastiveCollator`] and `transformers_rime.data`).
        processing_class ([`RimeProcessor`], *optional*):
            Builds the prompts; loaded from `model` when that is a path. It adopts the model's instructions and tags.
        peft_config (`peft.PeftConfig`, *optional*):
            Train adapters instead of the full model (e.g. `LoraConfig(target_modules=["q_proj", "v_proj"])`). Add
            `trainable_token_indices` for `<disc_emb>` / `<gen_emb>` when starting from a backbone whose rows for
            them were never trained.
        kwargs:
            Passed on to `transformers.Trainer` (`callbacks`, `optimizers`, ...).

    `save_model()` and every checkpoint write what `RimeEncoder.save_pretrained` writes (a LoRA adapter merged in),
    which loads with `RimeEncoder`, `AutoModel` and `SentenceTransformer`; a checkpoint also keeps the unmerged
    adapter in `adapter/`, which `train(resume_from_checkpoint=...)` continues from (see [`RimeCheckpointMixin`]).

    Example:

    ```python
    >>> from transformers_rime.testing import tiny_rime_model, tiny_rime_processor
    >>> processor = tiny_rime_processor()
    >>> rows = [{"query": f"item {i}", "positive": f"the item {i}", "query_rewrite": f"item {i}",
    ...          "positive_rewrite": f"item number {i}"} for i in range(4)]
    >>> args = RimeContrastiveConfig("/tmp/rime-doctest", max_steps=1, per_device_train_batch_size=4,
    ...                              report_to="none", use_cpu=True, save_strategy="no")
    >>> trainer = RimeContrastiveTrainer(tiny_rime_model(processor=processor), args=args, train_dataset=rows,
    ...                                  processing_class=processor)
    >>> result = trainer.train()  # prints the final log: each loss term and the four mode-pair accuracies
    {'train_runtime': ..., 'lm': ..., 'disc_nce': ..., 'gen_nce': ..., 'cma': ..., 'accuracy/disc->disc': ...}
    >>> result.global_step
    1

    ```
    """

    _tag_names = ["rime", "contrastive"]
    # compute_loss returns the mean over the micro-batch; the Trainer divides it by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: RimeForEmbedding | nn.Module | str,
        args: RimeContrastiveConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class: RimeProcessor | None = None,
        peft_config=None,
        **kwargs,
    ):
        args = args if args is not None else RimeContrastiveConfig("rime-contrastive")
        if not isinstance(args, RimeContrastiveConfig):
            raise TypeError(f"args must be a RimeContrastiveConfig, got {type(args).__name__}.")
        if isinstance(model, str):
            model, processing_class = load_model_to_train(model, processing_class)
        if processing_class is None:
            raise ValueError(NEEDS_PROCESSOR)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        processing_class.adopt_config(base.config)
        self.rime_model = base  # what checkpoints save (merged with the adapter, if any) and resuming loads into
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        elif args.freeze_vision_tower and isinstance(base, RimeForEmbedding):
            freeze_vision_tower(base)
        if data_collator is None:
            data_collator = RimeContrastiveCollator(
                processing_class,
                chunk_size=args.cached_batch_size,
                max_length=args.max_length,
                with_rewrites=args.uses_rewrites,
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self._check_cached_training_supported()
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def _check_cached_training_supported(self) -> None:
        if self.args.cached_batch_size is not None and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            raise ValueError(
                "cached_batch_size (cached-gradient training) cannot run under DeepSpeed or FSDP: it back-propagates "
                "through each chunk separately, which ZeRO's gradient partitioning refuses ('gradient computed twice "
                "for this partition'). Use DDP for cached training, or drop cached_batch_size and rely on "
                "gather_across_devices for a large batch."
            )

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.cached_batch_size is not None and torch.is_grad_enabled():
            loss, terms, groups = self._cached_loss(model, inputs)
        else:
            chunks = [(name, self._embed_chunk(model, chunk)) for name, group in inputs.items() for chunk in group]
            loss, terms, groups = self._objective(chunks)
        self._record_metrics("train" if model.training else "eval", terms, groups)
        return (loss, {}) if return_outputs else loss

    def _embed_chunk(self, model, chunk) -> ChunkEmbeddings:
        """One forward over a chunk; `labels` mark teacher-forced gen-mode sequences."""
        features = dict(chunk)
        labels = features.pop("labels", None)
        use_lm = labels is not None and self.args.lm_weight != 0
        out = model(
            **features,
            labels=labels if use_lm else None,
            return_gen_embeddings=labels is not None and self.args.uses_gen_embeddings,
        )
        tokens = int((labels[:, 1:] != -100).sum()) if use_lm else 0
        return ChunkEmbeddings(out.embeddings, out.gen_embeddings, out.loss * tokens if use_lm else None, tokens)

    def _objective(self, chunks: list[tuple[str, ChunkEmbeddings]], lm_normalizer: float | None = None):
        """The weighted loss over the step's chunk embeddings (see `rime_contrastive_loss`).

        `lm_normalizer` is `_lm_normalizer(chunks)`, computed here unless the caller already has it.
        """
        groups = {}
        for name in dict.fromkeys(name for name, _ in chunks):
            parts = [c for group, c in chunks if group == name]
            gens = [c.gen for c in parts]
            gen = torch.cat(gens) if all(g is not None for g in gens) else None
            groups[name] = ModeEmbeddings(torch.cat([c.disc for c in parts]), gen)
        lm_loss = None
        if self.args.lm_weight != 0:
            lm_sums = [c.lm_sum for _, c in chunks if c.lm_sum is not None]
            if lm_normalizer is None:
                lm_normalizer = self._lm_normalizer(chunks)
            lm_loss = sum(lm_sums, torch.zeros((), device=self.args.device)) * lm_normalizer
        args = self.args
        loss, terms = rime_contrastive_loss(
            groups["query"],
            groups["positive"],
            groups.get("negative"),
            lm_loss=lm_loss,
            lm_weight=args.lm_weight,
            disc_weight=args.disc_weight,
            gen_weight=args.gen_weight,
            cma_weight=args.cma_weight,
            same_input_weight=args.same_input_weight,
            temperature=args.temperature,
            symmetric=args.symmetric,
            gather_across_processes=args.gather_across_devices and is_distributed(),
        )
        return loss, terms, groups

    def _lm_normalizer(self, chunks: list[tuple[str, ChunkEmbeddings]]) -> float:
        """Factor turning this process's summed token losses into its share of the mean over all processes' tokens.

        With DDP averaging gradients over processes, `sum * world_size / all tokens` on each process makes the
        result the exact token mean of the global batch, however the tokens are spread over processes.
        """
        tokens = sum(c.lm_tokens for _, c in chunks)
        scale = 1
        if is_distributed():
            tokens = int(self.accelerator.reduce(torch.tensor(tokens, device=self.args.device), reduction="sum"))
            scale = self.accelerator.num_processes
        if tokens == 0:
            raise ValueError("lm_weight is non-zero but the batch has no labelled rewrite token.")
        return scale / tokens

    def _cached_loss(self, model, inputs):
        """GradCache: embed chunks without graphs, cache d(loss)/d(embeddings), replay chunks in backward."""
        chunks, states = [], []
        with torch.no_grad():
            for name, group in inputs.items():
                for chunk in group:
                    states.append(RandomState.capture())
                    chunks.append((name, chunk, self._embed_chunk(model, chunk)))
        leaves = [(name, ChunkEmbeddings(leaf(e.disc), leaf(e.gen), e.lm_sum, e.lm_tokens)) for name, _, e in chunks]
        # one token count (a collective under DDP) serves the loss and the replay
        lm_normalizer = self._lm_normalizer(leaves) if self.args.lm_weight != 0 else 0.0
        loss, terms, groups = self._objective(leaves, lm_normalizer)
        if loss.requires_grad:  # false only when the LM term is the whole loss (it is not cached)
            loss.backward()
        replay = partial(self._replay_chunks, model, [c for _, c, _ in chunks], states, leaves, lm_normalizer)
        total = loss.detach().clone().requires_grad_()
        total.register_hook(replay)
        return total, terms, groups

    def _replay_chunks(self, model, chunks, states, leaves, lm_normalizer, grad_output):
        """Backward hook of the cached loss: re-embed each chunk with gradients and back-propagate its share."""
        for index, (chunk, state, (_, cached)) in enumerate(zip(chunks, states, leaves)):
            # DDP reduces gradients once, after the last chunk
            sync = contextlib.nullcontext() if index == len(chunks) - 1 else self.accelerator.no_sync(model)
            # autograd runs hooks with gradients disabled; the replay needs them
            with sync, state.replay(), torch.enable_grad(), self.compute_loss_context_manager():
                out = self._embed_chunk(model, chunk)
                surrogate = cached_gradient_surrogate([out.disc, out.gen], [cached.disc, cached.gen])
                if out.lm_sum is not None:
                    surrogate = surrogate + self.args.lm_weight * out.lm_sum * lm_normalizer
                (surrogate * grad_output).backward()

    # ------------------------------------------------------------------ evaluation and logging

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _record_metrics(self, mode: str, terms: dict, groups: dict[str, ModeEmbeddings]) -> None:
        names = list(terms)
        values = [terms[name].detach().float() for name in names]
        query, positive = groups["query"], groups["positive"]
        for query_mode, document_mode in MODE_PAIRS:
            q, d = getattr(query, query_mode), getattr(positive, document_mode)
            if q is not None and d is not None:
                names.append(f"accuracy/{query_mode}->{document_mode}")
                values.append(in_batch_accuracy(q.detach(), d.detach()))
        gathered = self.accelerator.gather(torch.stack(values)[None]).mean(dim=0)  # (num_metrics,)
        for name, value in zip(names, gathered.tolist()):
            self._metrics[mode][name].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for name, values in self._metrics[mode].items():
            logs[prefix + name] = sum(values) / len(values)
        self._metrics[mode].clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ sampling

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.args.homogeneous_batches:
            return super()._get_train_sampler(dataset)
        column = self.args.source_column
        try:
            sources = dataset[column] if hasattr(dataset, "column_names") else [row[column] for row in dataset]
        except KeyError:
            raise ValueError(f"homogeneous_batches needs a `{column}` column in the training rows.") from None
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        block = self.args.per_device_train_batch_size * self.args.world_size
        return SourceHomogeneousSampler(list(sources), block_size=block, seed=seed)


__all__ = ["RimeContrastiveTrainer", "freeze_vision_tower", "in_batch_accuracy"]
