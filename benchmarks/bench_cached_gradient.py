"""Cached-gradient (GradCache) vs plain training steps: peak memory and step time at growing batch sizes.

One training step of `RimeContrastiveTrainer` (every loss term on: LM on the rewrite, disc and gen InfoNCE, CMA;
forward, loss and backward, no optimizer update) on text pairs, for each batch size, uncached and with
`cached_batch_size=--chunk`. Each measurement runs in a process of its own: peak memory is the first step's
high-water mark above the level before it (CPU: resident set; CUDA: `max_memory_allocated`), the time is a second
step's. It prints a table and the goal's ratio: the peak of a cached batch of the largest size over the peak of an
uncached batch of the smallest size (goal: batch 1024 within 1.3x of batch 64).

    python benchmarks/bench_cached_gradient.py                                    # CPU defaults
    python benchmarks/bench_cached_gradient.py --device cuda --hidden-size 1536 --layers 28 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from memory import current_memory, peak_memory, sync


WORDS = ["red", "car", "black", "cat", "chart", "chair", "blue", "street", "kitchen", "fox", "green", "dog"]


def rows(batch_size: int) -> list[dict]:
    """Distinct query/document pairs of ~20-token texts and ~8-token rewrites."""
    out = []
    for i in range(batch_size):
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(8)]
        out.append(
            {
                "query": f"query {i}: " + " ".join(words),
                "positive": f"document {i} about " + " ".join(reversed(words)),
                "query_rewrite": " ".join(words[:4]),
                "positive_rewrite": " ".join(words[4:]),
            }
        )
    return out


def measure(args) -> dict:
    """Peak memory of one step and time of the next, for `args.mode` at `args.batch`, in this process."""
    import torch
    from transformers.utils import logging

    from transformers_rime import RimeConfig, RimeForEmbedding
    from transformers_rime.testing import tiny_rime_processor, tiny_vlm_config
    from transformers_rime.training import RimeContrastiveCollator, RimeContrastiveConfig, RimeContrastiveTrainer

    logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    processor = tiny_rime_processor()
    text = {
        "hidden_size": args.hidden_size,
        "intermediate_size": 4 * args.hidden_size,
        "num_hidden_layers": args.layers,
        # head size 16 keeps the tiny config's rotary sections valid
        "num_attention_heads": args.hidden_size // 16,
        "num_key_value_heads": max(1, args.hidden_size // 32),
    }
    config = RimeConfig(vlm_config=tiny_vlm_config("qwen2_vl", processor.tokenizer, **text))
    processor.apply_token_ids(config)
    model = RimeForEmbedding(config).to(args.device, getattr(torch, args.dtype)).train()
    cached = args.mode == "cached"
    training_args = RimeContrastiveConfig(
        "/tmp/rime-bench-cached",
        report_to="none",
        use_cpu=args.device == "cpu",
        cached_batch_size=args.chunk if cached else None,
        gradient_checkpointing=args.gradient_checkpointing,
        per_device_train_batch_size=args.batch,
    )
    trainer = RimeContrastiveTrainer(model, training_args, processing_class=processor)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    # uncached batches are chunked too, by the same chunk size: the same forwards, one backward over all of them
    inputs = trainer._prepare_inputs(RimeContrastiveCollator(processor, chunk_size=args.chunk)(rows(args.batch)))

    def step():
        loss = trainer.compute_loss(model, inputs)
        trainer.accelerator.backward(loss)
        model.zero_grad(set_to_none=True)

    before = current_memory(args.device, reset=True)
    step()
    sync(args.device)
    peak = peak_memory(args.device) - before
    start = time.perf_counter()
    step()
    sync(args.device)
    return {"peak_mib": peak / 2**20, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--chunk", type=int, default=64, help="cached_batch_size")
    parser.add_argument("--max-uncached", type=int, default=1024, help="skip uncached batches above this size")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=("cached", "uncached"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.mode:
        print(json.dumps(measure(args)))
        return

    results = {}
    base = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k in ("device", "dtype", "hidden_size", "layers", "chunk", "threads")
    ]
    base += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    base += ["--batch-sizes", *map(str, args.batch_sizes)]
    for batch in args.batch_sizes:
        for mode in ("uncached", "cached"):
            if mode == "uncached" and batch > args.max_uncached:
                continue
            command = [sys.executable, __file__, *base, f"--mode={mode}", f"--batch={batch}"]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[mode, batch] = json.loads(output.strip().splitlines()[-1])
            print(f"  measured {mode:8s} batch {batch:5d}: {results[mode, batch]}", file=sys.stderr)

    print(f"device {args.device}, {args.dtype}, hidden {args.hidden_size}, {args.layers} layers, chunk {args.chunk}")
    print("| batch | uncached peak MiB | cached peak MiB | uncached s/step | cached s/step |")
    print("|---|---|---|---|---|")
    for batch in args.batch_sizes:
        u, c = results.get(("uncached", batch)), results[("cached", batch)]
        u_peak, u_time = (f"{u['peak_mib']:.0f}", f"{u['seconds']:.2f}") if u else ("-", "-")
        print(f"| {batch} | {u_peak} | {c['peak_mib']:.0f} | {u_time} | {c['seconds']:.2f} |")
    smallest, largest = min(args.batch_sizes), max(args.batch_sizes)
    ratio = results[("cached", largest)]["peak_mib"] / results[("uncached", smallest)]["peak_mib"]
    print(f"peak(cached, batch {largest}) / peak(uncached, batch {smallest}) = {ratio:.2f}  (goal <= 1.3)")
    for batch in args.batch_sizes:
        if ("uncached", batch) in results:
            u, c = results[("uncached", batch)], results[("cached", batch)]
            print(
                f"batch {batch}: cached/uncached peak {c['peak_mib'] / u['peak_mib']:.2f}, "
                f"time {c['seconds'] / u['seconds']:.2f}"
            )


if __name__ == "__main__":
    main()
