"""Stage-2 RIME training: Refine-RL (GRPO on the rewrite, rewards anchored on discriminative embeddings).

Offline demo, no download: a tiny random model is first trained with stage 1 on synthetic pairs (about 45 s), then
Refine-RL runs on 8 of those pairs, each with 6 hard negatives, and the mean anchor-retrieval reward of the first and
last steps is printed:

    python examples/train_refine_rl.py --output_dir /tmp/rime-tiny-rl --max_steps 30 \\
        --per_device_train_batch_size 64 --max_completion_length 16 --temperature 0.7 \\
        --rewards anchor_retrieval --mask_truncated_completions --learning_rate 1e-4 \\
        --lr_scheduler_type constant --beta 0 --logging_steps 1 --bf16 False

(64 rollouts = 8 prompts x 8 rollouts per step, each scored against the 8 targets and their 48 hard negatives.)
These flags are the setting the test suite checks (tests/training/test_refine_rl_reward_rise.py); with the default
`format` reward added, the tiny policy first learns to close its rewrites, whatever they say, and the retrieval
reward stalls.

The paper's recipe (reconstructed from UME-R1's released scripts; RIME's own values were not published): start from
the stage-1 model, G = 8 rollouts, beta 0.04, clip 0.2 / 0.28, lr 1e-6, temperature 1.0, 2 prompts per GPU x 2
accumulation steps x 64 GPUs, one epoch, bf16, checkpoints every 50 steps. On 8 nodes of 8 GPUs:

    accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml \\
        --num_machines 8 --num_processes 64 --machine_rank $RANK \\
        --main_process_ip $MASTER_ADDR --main_process_port 29500 \\
        examples/train_refine_rl.py \\
        --model_name_or_path rime-2b-sft \\
        --data_format rime_rl --data_path RIME-Train/RIME-RL/RIME-rl.json --media_root /data/MMEB-train \\
        --output_dir rime-2b-rl --bf16 --gradient_checkpointing \\
        --per_device_train_batch_size 16 --gradient_accumulation_steps 2 --num_generations 8 \\
        --learning_rate 1e-6 --beta 0.04 --epsilon 0.2 --epsilon_high 0.28 --max_completion_length 128 \\
        --num_train_epochs 1 --save_steps 50 --logging_steps 1

(`per_device_train_batch_size` counts rollouts: 16 = 2 prompts x 8 rollouts.) Single node: drop the four
`--num_machines ... --main_process_port` flags and use `--num_processes 8`. `--use_lora` trains a LoRA adapter (the
anchors and the KL reference are then the model with the adapter off, so no copy of the model is kept).
`--symmetric_rollouts` also rolls out the document side (UME-R1 does); `--rewards format rollout_contrast` with it
reproduces UME-R1's reward for comparison. vLLM rollouts are TRL's own switch: install vLLM in TRL's supported range
and add `--use_vllm --vllm_mode colocate` (never required; untested here). Needs the `rl` extra:
`pip install -e ".[train,rl]"`. More launch commands: `examples/accelerate/README.md`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import HfArgumentParser

from transformers_rime import RimeForEmbedding, RimeProcessor
from transformers_rime.training import (
    RimeRefineRLConfig,
    RimeRefineRLTrainer,
)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Stage-1 RIME checkpoint (dir or Hub id); default: a tiny model trained here first."},
    )
    dtype: str = field(default="auto", metadata={"help": "Weights dtype when loading: auto, bfloat16, float32."})
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa, flash_attention_2 or eager."})
    use_lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of the full model."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_target_modules: str = field(
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        metadata={"help": "Comma-separated module names to adapt (these match the language model only)."},
    )
    tiny_stage1_steps: int = field(default=500, metadata={"help": "Stage-1 steps of the tiny demo model."})


@dataclass
class DataArguments:
    data_path: list[str] | None = field(
        default=None,
        metadata={
            "help": "Training files or folders; required with --model_name_or_path (the demo makes its own pairs)."
        },
    )
    data_format: str = field(default="rime_rl", metadata={"help": "rime_rl (RIME-Train RL json) or pairs (jsonl)."})
    media_root: str | None = field(default=None, metadata={"help": "Folder that relative image paths start from."})
    synthetic_pairs: int = field(default=8, metadata={"help": "Pairs the demo's RL stage trains on (at most 32)."})
    hard_negatives: int = field(
        default=3, metadata={"help": "Demo: documents per row sharing the color (and as many sharing the object)."}
    )


def load_data(args: DataArguments):
    from transformers_rime.data import read_pairs, read_rime_rl

    if args.data_format == "rime_rl":
        return read_rime_rl(args.data_path, media_root=args.media_root)
    if args.data_format == "pairs":
        import datasets

        return datasets.concatenate_datasets([read_pairs(p, media_root=args.media_root) for p in args.data_path])
    raise ValueError(f"Unknown --data_format {args.data_format!r}; use rime_rl or pairs.")


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, RimeRefineRLConfig))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    demo = model_args.model_name_or_path is None
    # checked before any loading: the demo's synthetic pairs only suit its own tiny model
    if not demo and not data_args.data_path:
        parser.error("--data_path is required with --model_name_or_path (without both, the demo runs).")
    if not demo and data_args.data_format not in ("rime_rl", "pairs"):
        parser.error(f"--data_format {data_args.data_format!r}: use rime_rl or pairs.")
    if demo:
        from transformers_rime.quickstart import tiny_stage1_model
        from transformers_rime.testing import color_object_refine_rl_pairs

        model, processor = tiny_stage1_model(
            color_object_refine_rl_pairs(32),
            steps=model_args.tiny_stage1_steps,
            output_dir=f"{training_args.output_dir}/stage1",
        )
        dataset = color_object_refine_rl_pairs(data_args.synthetic_pairs, hard_negatives=data_args.hard_negatives)
    else:
        processor = RimeProcessor.from_pretrained(model_args.model_name_or_path)
        kwargs = {"dtype": getattr(torch, model_args.dtype) if model_args.dtype != "auto" else "auto"}
        if model_args.attn_implementation:
            kwargs["attn_implementation"] = model_args.attn_implementation
        model = RimeForEmbedding.from_pretrained(
            model_args.model_name_or_path, tokenizer=processor.tokenizer, **kwargs
        )
        dataset = load_data(data_args)
    peft_config = None
    if model_args.use_lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            target_modules=model_args.lora_target_modules.split(","),
        )
    trainer = RimeRefineRLTrainer(
        model, args=training_args, train_dataset=dataset, processing_class=processor, peft_config=peft_config
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    rewards = [
        h["rewards/anchor_retrieval_reward/mean"]
        for h in trainer.state.log_history
        if "reward" in h and "rewards/anchor_retrieval_reward/mean" in h
    ]
    if trainer.is_world_process_zero():
        if rewards:
            quarter = max(1, len(rewards) // 4)
            print(
                f"mean anchor-retrieval reward: first {quarter} steps {np.mean(rewards[:quarter]):.3f}, "
                f"last {quarter} steps {np.mean(rewards[-quarter:]):.3f}"
            )
        print(f"Saved to {training_args.output_dir} (load it with RimeEncoder.from_pretrained).")
    trainer.accelerator.end_training()  # destroys the process group: a live one can abort the exit


if __name__ == "__main__":
    main()
