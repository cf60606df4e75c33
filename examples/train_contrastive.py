"""Stage-1 RIME training: rewrite SFT + InfoNCE in both modes + Cross-Mode Alignment.

Offline demo, no download (a tiny random model learns synthetic pairs in about 10 seconds on a CPU):

    python examples/train_contrastive.py --output_dir /tmp/rime-tiny --max_steps 40 --learning_rate 1e-3

It prints the in-batch retrieval accuracy of all four query/document mode pairs before and after training.

The paper's recipe (reconstructed from UME-R1's released scripts; RIME's own values were not published):
Qwen2-VL-2B-Instruct, full fine-tuning with the vision tower frozen (merger trained), lr 5e-5, cosine schedule,
3% warm-up, no weight decay, gradient clipping 1, bf16, gradient checkpointing, temperature 0.02, 4 pairs per GPU x
4 accumulation steps x 64 GPUs, 5000 steps, dataset-homogeneous batches. On 8 nodes of 8 GPUs:

    accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml \\
        --num_machines 8 --num_processes 64 --machine_rank $RANK \\
        --main_process_ip $MASTER_ADDR --main_process_port 29500 \\
        examples/train_contrastive.py \\
        --model_name_or_path Qwen/Qwen2-VL-2B-Instruct \\
        --data_format rime_sft --data_path RIME-Train/RIME-SFT --media_root /data/MMEB-train \\
        --output_dir rime-2b-sft --bf16 --gradient_checkpointing \\
        --learning_rate 5e-5 --lr_scheduler_type cosine --warmup_ratio 0.03 --weight_decay 0 --max_grad_norm 1 \\
        --per_device_train_batch_size 4 --gradient_accumulation_steps 4 --max_steps 5000 \\
        --temperature 0.02 --homogeneous_batches --save_steps 500 --logging_steps 1

With DDP instead of DeepSpeed, `--cached_batch_size 8` lets each GPU hold a far larger batch (e.g.
`--per_device_train_batch_size 64`) at the memory cost of 8 items. `--use_lora` trains LoRA adapters (plus the
`<disc_emb>` / `<gen_emb>` embedding rows) instead of the full model. More launch commands:
`examples/accelerate/README.md`. Needs the `train` extra: `pip install -e ".[train]"`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from transformers_rime import RimeForEmbedding, RimeProcessor
from transformers_rime.training import RimeContrastiveConfig, RimeContrastiveTrainer


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "RIME checkpoint or Qwen-VL backbone (dir or Hub id); default: a tiny random model."},
    )
    tiny_family: str = field(default="qwen2_vl", metadata={"help": "Backbone family of the tiny random model."})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype when loading: auto, bfloat16, float32."})
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa, flash_attention_2 or eager."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the full model."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        metadata={"help": "Comma-separated module names to adapt (these match the language model only)."},
    )


@dataclass
class DataArguments:
    data_path: list[str] | None = field(
        default=None, metadata={"help": "Training files or folders; default: synthetic pairs made in memory."}
    )
    data_format: str = field(
        default="pairs", metadata={"help": "pairs (jsonl with the trainer's columns), rime_sft or ume_r1_sft."}
    )
    media_root: str | None = field(default=None, metadata={"help": "Folder that relative image paths start from."})
    max_samples_per_source: int | None = field(default=None, metadata={"help": "Cap rows per source dataset."})
    synthetic_pairs: int = field(default=32, metadata={"help": "Rows of the synthetic demo dataset."})
    synthetic_images: bool = field(default=False, metadata={"help": "Synthetic documents with images."})


def load_model(args: ModelArguments) -> tuple[RimeForEmbedding, RimeProcessor]:
    if args.model_name_or_path is None:
        from transformers_rime.testing import tiny_rime_model, tiny_rime_processor

        processor = tiny_rime_processor(args.tiny_family)
        return tiny_rime_model(args.tiny_family, processor=processor), processor
    # The processor adds <disc_emb> / <gen_emb> to a stock backbone's tokenizer; the model reads their ids from it.
    processor = RimeProcessor.from_pretrained(args.model_name_or_path)
    kwargs = {"dtype": getattr(torch, args.dtype) if args.dtype != "auto" else "auto"}
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    model = RimeForEmbedding.from_pretrained(args.model_name_or_path, tokenizer=processor.tokenizer, **kwargs)
    return model, processor


def load_data(args: DataArguments):
    if args.data_path is None:
        from transformers_rime.testing import color_object_pairs

        return color_object_pairs(args.synthetic_pairs, with_images=args.synthetic_images)
    from transformers_rime.data import read_pairs, read_rime_sft

    if args.data_format == "pairs":
        import datasets

        parts = [read_pairs(path, media_root=args.media_root) for path in args.data_path]
        return datasets.concatenate_datasets(parts)
    readers = {"rime_sft": read_rime_sft, "ume_r1_sft": read_rime_sft}  # the same layout
    if args.data_format not in readers:
        raise ValueError(f"Unknown --data_format {args.data_format!r}; use pairs, rime_sft or ume_r1_sft.")
    return readers[args.data_format](
        args.data_path, media_root=args.media_root, max_samples_per_source=args.max_samples_per_source
    )


def lora_config(args: ModelArguments, processor: RimeProcessor):
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_modules.split(","),
        # a backbone never trained with RIME has meaningless rows for the two new tokens: train them too
        trainable_token_indices={"embed_tokens": [processor.disc_emb_token_id, processor.gen_emb_token_id]},
    )


def accuracy_line(metrics: dict) -> str:
    pairs = ("disc->disc", "gen->gen", "gen->disc", "disc->gen")
    return "  ".join(
        f"{pair} {metrics[f'eval_accuracy/{pair}']:.2f}" for pair in pairs if f"eval_accuracy/{pair}" in metrics
    )


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, RimeContrastiveConfig))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    model, processor = load_model(model_args)
    dataset = load_data(data_args)
    demo = data_args.data_path is None
    trainer = RimeContrastiveTrainer(
        model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=dataset if demo else None,  # the demo measures how well it learned its pairs
        processing_class=processor,
        peft_config=lora_config(model_args, processor) if model_args.use_lora else None,
    )
    if demo:
        print("in-batch accuracy before:", accuracy_line(trainer.evaluate()))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if demo:
        print("in-batch accuracy after: ", accuracy_line(trainer.evaluate()))
    if trainer.is_world_process_zero():
        print(f"Saved to {training_args.output_dir} (load it with RimeEncoder.from_pretrained).")
    trainer.accelerator.end_training()  # destroys the process group: a live one can abort the exit


if __name__ == "__main__":
    main()
