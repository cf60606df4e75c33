"""Stage-2 RIME training: Refine-RL, GRPO on the rewrite with rewards anchored on discriminative embeddings.

`RimeRefineRLTrainer` is a thin `GRPOTrainer` subclass: it turns RIME pairs into TRL rows and adds embedding columns
to TRL's reward call. The pairs and candidate pools are `candidates.CandidatePool`'s, the set-up before TRL is
`refine_rl_setup`'s, and the TRL internals it overrides or calls are listed in `trl_compat`.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass

import torch

from ..losses.distributed import gather_with_grad
from ..models.rime.configuration_rime import MODES
from ..models.rime.inputs_rime import RimeInput
from ..models.rime.modeling_rime import RimeForEmbedding
from ..models.rime.processing_rime import RimeProcessor
from ..teacher_forcing import left_pad
from .candidates import CandidatePool
from .checkpoints import NEEDS_PROCESSOR, RimeCheckpointMixin, load_model_to_train
from .configuration_refine_rl import RimeRefineRLConfig
from .refine_rl_setup import make_reference_loadable, reward_functions, rollout_dataset
from .rollouts import PairedRepeatSampler, eval_mode, gen_embedding_ids, patch_offsets
from .trainer_contrastive import freeze_vision_tower
from .trl_compat import check_trl_version


check_trl_version()

from trl import GRPOTrainer  # noqa: E402  (after the version check, so an untested TRL fails with a clear message)
from trl.models import prepare_deepspeed  # noqa: E402


DISC, GEN = MODES


@dataclass
class PromptEncoding:
    """TRL's tokenisation of the current generation batch's prompts, kept for the embedding forward."""

    prompt_ids: list[list[int]]
    images: list[list | None]
    fields: dict


class RimeRefineRLTrainer(RimeCheckpointMixin, GRPOTrainer):
    r"""
    Refine-RL: GRPO on RIME's rewrite, rewarded by how well the rollout's generative embedding retrieves its target
    among candidates anchored by their discriminative embeddings.

    The policy handed to TRL is the stock Qwen-VL backbone inside the [`RimeForEmbedding`] (TRL needs a plain causal
    LM that can generate). For each generation batch:

    1. the pairs' queries (and documents, with `symmetric_rollouts`) become gen-mode prompts built by
       [`RimeProcessor`], and TRL samples `num_generations` rewrites per prompt; `<gen_emb>` ends a rollout;
    2. one forward of the policy over prompt + rollout (without gradient, the same kind of pass TRL runs for its
       log-probs) reads each rollout's gen embedding at its `<gen_emb>`, appended when the rollout did not write it
       (as at inference); the reading goes through `RimeForEmbedding.forward`, so inference, stage 1 and stage 2
       read embeddings at the same place;
    3. one forward over the batch's candidates (every target, plus the rows' `negatives`, each distinct item once,
       compared by content) gives their disc embeddings, the anchors: from the model as it was when RL started
       (`anchor_source="frozen"`) or the current policy (`"online"`), computed once per batch without gradient;
    4. the reward functions (`args.rewards`, plus any `reward_funcs`) score each rollout; besides TRL's arguments
       they receive `gen_embeddings`, `anchor_embeddings`, `positive_index` and `finished` per rollout (and, with
       `symmetric_rollouts`, `partner_embeddings` / `partner_is_positive` for UME-R1's reward).

    Everything else (sampling, advantages, the clipped loss, the KL to the reference, vLLM rollouts with
    `use_vllm=True`, logging) is TRL's. Logged on top of TRL's metrics: `rollouts/finished` (share of rollouts that
    wrote `<gen_emb>`) and `rollouts/anchor_top1` (share whose target ranks first).

    Args:
        model ([`RimeForEmbedding`] or `str`):
            The stage-1 model, or a checkpoint path (RIME or published backbone layout).
        args ([`RimeRefineRLConfig`], *optional*):
            Training arguments; defaults to `RimeRefineRLConfig("rime-refine-rl")`.
        train_dataset (`datasets.Dataset` or `list[dict]`):
            Pairs with `query` and `positive` items (text, image path, PIL image, frame list or dict) and optional
            `query_instruction`, `positive_instruction`, `negatives` (list of items); other scalar columns (such as
            `source` or `solution`) are passed on to the reward functions. See `transformers_rime.data.read_pairs`
            and `read_rime_rl`.
        eval_dataset (`datasets.Dataset` or `list[dict]`, *optional*):
            Same format.
        processing_class ([`RimeProcessor`], *optional*):
            Required unless `model` is a path (then loaded from it).
        reward_funcs (callable or `list`, *optional*):
            Extra TRL reward functions, after the ones named in `args.rewards`.
        callbacks, optimizers:
            As in `transformers.Trainer`.
        peft_config (`peft.PeftConfig`, *optional*):
            Train a LoRA adapter on the backbone (TRL applies it); the frozen anchors and the reference are then the
            model with the adapter disabled, so no copy of the model is kept.

    Example:

    ```python
    >>> from transformers_rime.testing import color_object_pairs, tiny_rime_model, tiny_rime_processor
    >>> processor = tiny_rime_processor()
    >>> args = RimeRefineRLConfig("/tmp/rime-rl-doctest", max_steps=1, per_device_train_batch_size=4,
    ...                           num_generations=2, max_completion_length=6, bf16=False, use_cpu=True,
    ...                           report_to="none", save_strategy="no", logging_steps=1, beta=0.0)
    >>> trainer = RimeRefineRLTrainer(tiny_rime_model(processor=processor), args=args,
    ...                               train_dataset=color_object_pairs(4), processing_class=processor)
    >>> result = trainer.train()  # doctest: +ELLIPSIS
    {...'rewards/anchor_retrieval_reward/mean': ...}
    >>> result.global_step
    1

    ```
    """

    _tag_names = ["trl", "grpo", "rime", "refine-rl"]

    def __init__(
        self,
        model: RimeForEmbedding | str,
        args: RimeRefineRLConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class: RimeProcessor | None = None,
        reward_funcs=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
    ):
        args = args if args is not None else RimeRefineRLConfig("rime-refine-rl")
        if not isinstance(args, RimeRefineRLConfig):
            raise TypeError(f"args must be a RimeRefineRLConfig, got {type(args).__name__}.")
        if isinstance(model, (str, os.PathLike)):
            model, processing_class = load_model_to_train(model, processing_class, share_tokenizer=True)
        if not isinstance(model, RimeForEmbedding):
            raise TypeError(f"model must be a RimeForEmbedding or a checkpoint path, got {type(model).__name__}.")
        if not isinstance(processing_class, RimeProcessor):
            # An AutoProcessor fallback could silently return a bare tokenizer and make the run text-only.
            raise ValueError(NEEDS_PROCESSOR)
        processing_class.adopt_config(model.config)
        self.rime_model = model
        self._gen_emb_id = model.config.gen_emb_token_id
        self._end_ids = model.stop_token_ids()  # the tokens inference turns into <gen_emb>
        if args.freeze_vision_tower and peft_config is None:
            freeze_vision_tower(model)

        self._candidates = CandidatePool(instruction_for=processing_class.instruction_for, gather=self._gather)
        symmetric = args.symmetric_rollouts
        train_rows = rollout_dataset(train_dataset, self._candidates, symmetric, "train_dataset")
        eval_rows = None
        if eval_dataset is not None:
            eval_rows = rollout_dataset(eval_dataset, self._candidates, symmetric, "eval_dataset")

        policy = model.vlm
        # The frozen anchor model of a full fine-tune is a copy taken now, before any update (with beta > 0, TRL's
        # reference model is that initial model already and is used instead).
        full_finetune = peft_config is None
        self._own_anchor_model = None
        if full_finetune and args.anchor_source == "frozen" and args.uses_embeddings and args.beta == 0.0:
            self._own_anchor_model = copy.deepcopy(model).requires_grad_(False).eval()
        if full_finetune and args.beta != 0.0:
            make_reference_loadable(policy, args)

        # TRL ends a rollout at any of the model's eos ids: <gen_emb> and every token that ends a rewrite at
        # inference, so rollouts stop where inference stops. Restored below, so the model keeps generating as before
        # outside RL.
        original_eos = policy.generation_config.eos_token_id
        policy.generation_config.eos_token_id = [self._gen_emb_id, *self._end_ids]
        try:
            super().__init__(
                model=policy,
                reward_funcs=reward_functions(args, processing_class, reward_funcs),
                args=args,
                train_dataset=train_rows,
                eval_dataset=eval_rows,
                processing_class=processing_class,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
            )
        finally:
            policy.generation_config.eos_token_id = original_eos
        self._prompt_encoding: PromptEncoding | None = None
        if args.symmetric_rollouts and eval_rows is not None:
            self._check_paired_eval_batches()
        if self._own_anchor_model is not None:
            self._own_anchor_model = self._prepare_frozen(self._own_anchor_model)

    # ------------------------------------------------------------------ setup

    def _prepare_frozen(self, model: RimeForEmbedding) -> RimeForEmbedding:
        """Place the frozen anchor copy like TRL places its reference model."""
        if self.is_deepspeed_enabled:
            model.vlm = prepare_deepspeed(model.vlm, self.accelerator).module
            return model
        return self.accelerator.prepare_model(model, evaluation_mode=True)

    def _gather(self, objects: list, tensor: torch.Tensor) -> tuple[list, torch.Tensor]:
        """Every process's objects and tensor rows, in process order (the candidate pool's `Gather`)."""
        if self.accelerator.num_processes == 1:
            return list(objects), tensor
        from accelerate.utils import gather_object

        return gather_object(objects), gather_with_grad(tensor)[0]

    def _get_train_sampler(self, dataset=None):
        if not self.args.symmetric_rollouts:
            return super()._get_train_sampler(dataset)
        prompts_per_batch = self.args.generation_batch_size // self.num_generations
        if prompts_per_batch % 2:
            raise ValueError(
                "symmetric_rollouts keeps each pair's query and document in one generation batch: "
                f"generation_batch_size / num_generations ({prompts_per_batch}) must be even."
            )
        dataset = dataset if dataset is not None else self.train_dataset
        return PairedRepeatSampler(
            num_pairs=len(dataset) // 2,
            num_generations=self.num_generations,
            pairs_per_batch=prompts_per_batch // 2,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )

    def _check_paired_eval_batches(self) -> None:
        """With `symmetric_rollouts`, an evaluation batch (all processes) must hold whole pairs, each side rolled out
        `num_generations_eval` times; checked when the trainer is built, before any training."""
        rows = self.args.per_device_eval_batch_size * self.accelerator.num_processes
        if rows % (2 * self.num_generations_eval):
            raise ValueError(
                "symmetric_rollouts keeps each pair's query and document in one evaluation batch: "
                f"per_device_eval_batch_size x processes ({rows}) must be a multiple of 2 x num_generations_eval "
                f"({2 * self.num_generations_eval})."
            )

    def _get_eval_sampler(self, eval_dataset):
        if not self.args.symmetric_rollouts:
            return super()._get_eval_sampler(eval_dataset)
        # one pair at a time: whole pairs fill each batch, as in training, and no pair is dropped
        return PairedRepeatSampler(
            num_pairs=len(eval_dataset) // 2,
            num_generations=self.num_generations_eval,
            pairs_per_batch=1,
            seed=self.args.seed,
        )

    # ------------------------------------------------------------------ rollouts

    def _rollout_item(self, row: dict) -> tuple[RimeInput, str | None, str]:
        """The item a TRL row rolls out (its pair's query or, for a document row, its positive), its instruction and
        its role."""
        item = self._candidates.rollout_item(row)
        return item.item, item.instruction, item.role

    def _with_prompt(self, row: dict) -> dict:
        """A TRL row: the gen-mode conversation RimeProcessor builds for this side, and its images."""
        processor = self.processing_class
        item, instruction, role = self._rollout_item(row)
        where = f"pair {row['pair_index']} ({row['side']})"
        instruction = processor.instruction_for(role, instruction)
        images, video = processor.load_media(item, where)  # TRL renders the conversation itself
        if video is not None:
            raise ValueError(
                f"{where}: Refine-RL cannot roll out a video the way the model embeds it (TRL's GRPOTrainer passes "
                "only images to generation). Drop video rows from RL, or feed frames as images everywhere with "
                "`video_as_images=True` on the processor."
            )
        messages = processor.build_messages(item.text, len(images), GEN, instruction)
        return {**row, "prompt": messages, "images": images}

    def _generate_and_score_completions(self, inputs):
        return super()._generate_and_score_completions([self._with_prompt(row) for row in inputs])

    def _tokenize_prompts(self, prompts: list):
        prompt_ids, images, fields = super()._tokenize_prompts(prompts)
        if images is not None:
            # TRL marks a text-only row of a mixed batch with None, which the processor's later call rejects
            # ("only a single or a list of entries is supported"); an empty list means the same and passes.
            images = [row_images or [] for row_images in images]
        limit = self.args.max_prompt_length
        if limit is not None:
            too_long = [(i, len(ids)) for i, ids in enumerate(prompt_ids) if len(ids) > limit]
            if too_long:
                raise ValueError(
                    f"Prompt longer than max_prompt_length={limit} (batch rows and lengths: {too_long[:5]}). Nothing "
                    "is truncated: shorten the text, lower the image pixel budget or raise max_prompt_length."
                )
        rows = len(prompt_ids)
        self._prompt_encoding = PromptEncoding([list(ids) for ids in prompt_ids], images or [None] * rows, fields)
        return prompt_ids, images, fields

    # ------------------------------------------------------------------ rewards

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        sequences, finished = zip(
            *(
                gen_embedding_ids(p, c, self._gen_emb_id, self._end_ids)
                for p, c in zip(self._prompt_encoding.prompt_ids, completion_ids_list)
            )
        )
        self._log_metric("rollouts/finished", sum(finished) / len(finished))
        columns = {"finished": list(finished)}
        if self.args.uses_embeddings:
            columns.update(self._embedding_columns(inputs, list(sequences)))
        rows = [{**row, **{k: v[i] for k, v in columns.items()}} for i, row in enumerate(inputs)]
        return super()._calculate_rewards(rows, prompts, completions, completion_ids_list)

    def _embedding_columns(self, inputs: list[dict], sequences: list[list[int]]) -> dict[str, list]:
        gen = self._rollout_embeddings(sequences)  # (N, D)
        keys, anchors = self._anchor_embeddings(inputs)  # pool over every process
        scored, top1 = self._candidates.score(inputs, gen, keys, anchors)
        self._log_metric("rollouts/anchor_top1", top1)
        columns = {"gen_embeddings": list(gen), **scored}
        if self.args.symmetric_rollouts:
            columns.update(self._candidates.partners(inputs, gen))
        return columns

    def _rollout_embeddings(self, sequences: list[list[int]]) -> torch.Tensor:
        """Gen embeddings of the rollouts, `(N, D)`: the policy's last-layer state at each sequence's `<gen_emb>`."""
        fields = self._prompt_encoding.fields
        grid = fields.get("image_grid_thw")
        grid = torch.as_tensor(grid) if grid is not None else None
        pixels = torch.as_tensor(fields["pixel_values"]) if "pixel_values" in fields else None
        image_token = self.processing_class.tokenizer.convert_tokens_to_ids(self.processing_class.image_token)
        images_per_row = [len(images or []) for images in self._prompt_encoding.images]
        image_starts, patch_starts = patch_offsets(grid if grid is not None else torch.zeros(0, 3), images_per_row)
        size = self.args.per_device_train_batch_size if self.model.training else self.args.per_device_eval_batch_size
        pad_id = self.processing_class.tokenizer.pad_token_id
        chunks = []
        with torch.no_grad(), eval_mode(self.rime_model):
            for start in range(0, len(sequences), size):
                end = min(start + size, len(sequences))
                ids = left_pad(sequences[start:end], pad_id)
                mask = left_pad([[1] * len(s) for s in sequences[start:end]], 0)
                batch = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": (ids == image_token).long()}
                if grid is not None and image_starts[end] > image_starts[start]:
                    batch["pixel_values"] = pixels[patch_starts[start] : patch_starts[end]]
                    batch["image_grid_thw"] = grid[image_starts[start] : image_starts[end]]
                batch = self._prepare_inputs_for_model(batch)
                with self.accelerator.autocast():
                    out = self.rime_model(**batch, return_gen_embeddings=True)
                chunks.append(out.gen_embeddings.float())
        return torch.cat(chunks)

    def _prepare_inputs_for_model(self, batch: dict) -> dict:
        device = self.accelerator.device
        dtype = self.rime_model.vlm.dtype
        floats = ("pixel_values", "pixel_values_videos")
        return {k: (v.to(device, dtype) if k in floats else v.to(device)) for k, v in batch.items()}

    def _anchor_model(self):
        """The model the anchors come from, and a context to enter around its forward."""
        if self.args.anchor_source == "online":
            return self.rime_model, contextlib.nullcontext()
        unwrapped = self.accelerator.unwrap_model(self.model)
        if hasattr(unwrapped, "disable_adapter"):  # LoRA: the initial model is the base, adapter off
            return self.rime_model, unwrapped.disable_adapter()
        if self._own_anchor_model is not None:
            return self._own_anchor_model, contextlib.nullcontext()
        # beta > 0: TRL's reference model is the initial model
        reference = self.accelerator.unwrap_model(self.ref_model)
        return RimeForEmbedding(self.rime_model.config, vlm=reference), contextlib.nullcontext()

    def _candidate_key(self, pair_index: int, slot: str) -> tuple[str, str]:
        """`(role, content fingerprint)` of one side of a pair (`slot`: `"query"`, `"positive"`, `"negative k"`)."""
        return self._candidates.key(pair_index, slot)

    def _anchor_embeddings(self, inputs: list[dict]) -> tuple[list[tuple[str, str]], torch.Tensor]:
        """Disc embeddings of the batch's candidates, without gradient: `(keys, (C, D))`, keys `(role, fingerprint)`.

        The pool picks the candidates (see `CandidatePool`); each distinct one is embedded once per process, then
        the pools of all processes are merged (`gather_candidates_across_devices`), each candidate kept once.
        """
        processor = self.processing_class
        candidates = self._candidates.batch_candidates(inputs, self.args.use_dataset_negatives)
        prepared = []
        for candidate in candidates:
            item = candidate.item
            instruction = processor.instruction_for(item.role, item.instruction)
            prepared.append(processor.prepare_item(item.item, DISC, instruction, candidate.where))
        batch = processor.collate(prepared)
        batch = self._prepare_inputs_for_model({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
        model, context = self._anchor_model()
        with torch.no_grad(), eval_mode(model), context, self.accelerator.autocast():
            anchors = model(**batch).embeddings.float()
        across = self.args.gather_candidates_across_devices
        return self._candidates.merge([c.key for c in candidates], anchors, across_processes=across)


__all__ = ["RimeRefineRLTrainer", "check_trl_version"]
