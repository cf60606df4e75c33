"""Share of a Refine-RL (GRPO) step spent computing rewards.

Runs `RimeRefineRLTrainer` for a few steps on synthetic image + text pairs and times, inside the same run, each
training step and each call of the reward computation (`_calculate_rewards`: the no-grad embedding forward over
prompt + rollout, the anchor forward over the candidates, the reward functions and their gathering), split into
its parts. The first step (warm-up) is dropped. Goal: rewards take at most 10% of a step.

    python benchmarks/bench_refine_rl.py                                           # CPU defaults
    python benchmarks/bench_refine_rl.py --device cuda --hidden-size 1536 --layers 28 --dtype bfloat16 \\
        --completion-length 128 --rollouts 64
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from memory import sync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rollouts", type=int, default=32, help="rollouts per step (prompts x generations)")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers_rime.testing import color_object_pairs, tiny_rime_processor
    from transformers_rime.training import RimeRefineRLConfig, RimeRefineRLTrainer

    processor = tiny_rime_processor()
    model = _sized_model(processor, args.hidden_size, args.layers).to(args.device, getattr(torch, args.dtype))
    timings: dict[str, list[float]] = defaultdict(list)

    class TimedTrainer(RimeRefineRLTrainer):
        def _timed(self, name, function, *a):
            sync(args.device)
            start = time.perf_counter()
            out = function(*a)
            sync(args.device)
            timings[name].append(time.perf_counter() - start)
            return out

        def training_step(self, *a, **k):
            return self._timed("step", super().training_step, *a, **k)

        def _calculate_rewards(self, *a):
            return self._timed("rewards (all)", super()._calculate_rewards, *a)

        def _rollout_embeddings(self, *a):
            return self._timed("  rollout embedding forward", super()._rollout_embeddings, *a)

        def _anchor_embeddings(self, *a):
            return self._timed("  anchor forward", super()._anchor_embeddings, *a)

    config = RimeRefineRLConfig(
        "/tmp/bench-refine-rl",
        max_steps=args.steps,
        per_device_train_batch_size=args.rollouts,
        num_generations=args.generations,
        max_completion_length=args.completion_length,
        generation_kwargs={"min_new_tokens": args.completion_length},  # every rollout the same length
        bf16=args.dtype == "bfloat16",
        use_cpu=args.device == "cpu",
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        beta=0.04,
    )
    rows = color_object_pairs(64, with_images=True)
    trainer = TimedTrainer(model, args=config, train_dataset=rows, processing_class=processor)
    trainer.train()
    steps = timings["step"][1:]
    total = sum(steps)
    print(
        f"device {args.device}, hidden {args.hidden_size} x {args.layers} layers, {args.rollouts} rollouts of "
        f"{args.completion_length} tokens per step, {len(steps)} timed steps"
    )
    print(f"{'part':32s} {'s/step':>8s} {'share':>7s}")
    print(f"{'GRPO step':32s} {total / len(steps):8.3f} {1:7.1%}")
    for name in ("rewards (all)", "  rollout embedding forward", "  anchor forward"):
        part = sum(timings[name][1:])
        print(f"{name:32s} {part / len(steps):8.3f} {part / total:7.1%}")
    share = sum(timings["rewards (all)"][1:]) / total
    print(f"reward share of a GRPO step: {share:.1%} (goal <= 10%: {'met' if share <= 0.10 else 'NOT met'})")


def _sized_model(processor, hidden_size: int, layers: int):
    """A random Qwen2-VL RIME model of the given text size (head dim 16 as in the tiny test models)."""
    from transformers_rime import RimeConfig, RimeForEmbedding
    from transformers_rime.testing import tiny_vlm_config

    heads = hidden_size // 16
    vlm_config = tiny_vlm_config(
        "qwen2_vl",
        processor.tokenizer,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        intermediate_size=4 * hidden_size,
        num_attention_heads=heads,
        num_key_value_heads=heads,
    )
    vlm_config.vision_config.hidden_size = hidden_size  # the merger projects into the text width
    config = RimeConfig(vlm_config=vlm_config)
    processor.apply_token_ids(config)
    return RimeForEmbedding(config).eval()


if __name__ == "__main__":
    main()
