"""Core speed and memory benchmark: RIME's embedding paths against plain transformers calls on the same batch.

Prints, from one run, ratios of
- disc: `RimeForEmbedding.forward` vs the raw backbone forward (`vlm.model`, no LM head) on the same batch;
- gen:  `generate_embeddings` vs plain greedy `generate` of the same number of tokens, and vs
        `generate(output_hidden_states=True)` (how UME-R1 reads the `<gen_emb>` state).

Times are medians of `--repeats` calls after one warm-up call, measured round-robin in one process (so a
background load slows every variant alike). Peak memory is measured once per variant in a process of its own
(CPU: the resident-set high-water mark above its level before the call; CUDA: `max_memory_allocated` above the
level before the call). The model has random weights, a real Qwen2-VL
vocabulary (151,936 tokens, so the LM head costs what it does in RIME-2B) and a reduced width and depth (see
`--hidden-size`, `--layers`) so the run fits a small CPU.

    python benchmarks/bench_core.py                       # CPU defaults
    python benchmarks/bench_core.py --device cuda --hidden-size 1536 --layers 28 --batch-size 16 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from memory import current_memory, peak_memory, sync


VARIANTS = ("raw_forward", "rime_disc", "plain_generate", "rime_gen", "generate_hidden_states")


def build(args):
    import torch

    from transformers_rime import RimeConfig, RimeForEmbedding
    from transformers_rime.testing import random_image, tiny_rime_processor, tiny_vlm_config

    torch.manual_seed(0)
    processor = tiny_rime_processor()
    processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}
    vlm_config = tiny_vlm_config(
        "qwen2_vl",
        processor.tokenizer,
        vocab_size=151936,
        hidden_size=args.hidden_size,
        intermediate_size=args.hidden_size * 4,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden_size // 64,
        num_key_value_heads=max(1, args.hidden_size // 256),
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
    )
    vlm_config.vision_config.hidden_size = args.hidden_size
    config = RimeConfig(vlm_config=vlm_config)
    processor.apply_token_ids(config)
    model = RimeForEmbedding(config).eval().to(device=args.device, dtype=getattr(torch, args.dtype))
    texts = [f"query {i}: " + "a red car parked on a quiet street " * (1 + i % 3) for i in range(args.batch_size)]
    images = [random_image(224, 224, seed=i) if i % 2 else None for i in range(args.batch_size)]
    gen_batch = processor(text=texts, images=images, mode="gen", return_tensors="pt").to(args.device)
    disc_batch = processor(text=texts, images=images, mode="disc", return_tensors="pt").to(args.device)
    for batch in (gen_batch, disc_batch):
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    return model, disc_batch, gen_batch


def make_calls(args):
    """The five variants as zero-argument callables over one model and batch."""
    import torch

    model, disc_batch, gen_batch = build(args)
    new_tokens = args.new_tokens
    gen_id = model.config.gen_emb_token_id
    # plain generate: the same tokens as RIME's path (the rewrite plus <gen_emb>), greedy, no early stop
    plain = dict(
        do_sample=False,
        max_new_tokens=new_tokens + 1,
        min_new_tokens=new_tokens + 1,
        eos_token_id=None,
        pad_token_id=0,
    )

    def rime_gen():
        out = model.generate_embeddings(**gen_batch, max_new_tokens=new_tokens)
        assert int(out.num_new_tokens.max()) <= new_tokens and (out.sequences == gen_id).any(1).all()
        return out.embeddings

    def generate_hidden_states():
        out = model.vlm.generate(**gen_batch, **plain, output_hidden_states=True, return_dict_in_generate=True)
        return torch.stack([step[-1][:, -1] for step in out.hidden_states[1:]])  # read every step's state

    calls = {
        "raw_forward": lambda: model.vlm.model(**disc_batch, use_cache=False).last_hidden_state,
        "rime_disc": lambda: model(**disc_batch).embeddings,
        "plain_generate": lambda: model.vlm.generate(**gen_batch, **plain),
        "rime_gen": rime_gen,
        "generate_hidden_states": generate_hidden_states,
    }
    return calls, int(gen_batch["input_ids"].shape[1])


def measure_memory(args) -> dict:
    """Peak memory of one call of `args.variant`, in a process of its own."""
    import torch

    torch.set_num_threads(args.threads)
    calls, _ = make_calls(args)
    before = current_memory(args.device, reset=True)
    with torch.inference_mode():
        calls[args.variant]()
    sync(args.device)
    return {"variant": args.variant, "peak_mib": (peak_memory(args.device) - before) / 2**20}


def measure_times(args) -> tuple[dict[str, float], int]:
    """Median time of every variant, measured round-robin in one process so background load hits all alike."""
    import torch

    torch.set_num_threads(args.threads)
    calls, prompt_tokens = make_calls(args)
    times = {name: [] for name in calls}
    with torch.inference_mode():
        for call in calls.values():  # warm-up
            call()
        for _ in range(args.repeats):
            for name, call in calls.items():
                sync(args.device)
                start = time.perf_counter()
                call()
                sync(args.device)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64, help="rewrite length (every row spends the budget)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant:
        print(json.dumps(measure_memory(args)))
        return

    peak = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--variant", variant] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "variant"
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        peak[variant] = json.loads(output.strip().splitlines()[-1])["peak_mib"]
    seconds, prompt_tokens = measure_times(args)

    print(
        f"device={args.device} dtype={args.dtype} hidden={args.hidden_size} layers={args.layers} vocab=151936 "
        f"batch={args.batch_size} prompt_tokens={prompt_tokens} new_tokens={args.new_tokens} "
        f"threads={args.threads} repeats={args.repeats}"
    )
    print(f"{'variant':<24}{'median s':>10}{'peak MiB':>10}")
    for name in VARIANTS:
        print(f"{name:<24}{seconds[name]:>10.4f}{peak[name]:>10.1f}")
    print()

    def ratio(a: str, b: str) -> str:
        return f"time x{seconds[a] / seconds[b]:.3f}   peak memory {peak[a]:.1f} vs {peak[b]:.1f} MiB"

    print(f"disc: rime / raw backbone forward             {ratio('rime_disc', 'raw_forward')}")
    print(f"gen:  rime / plain generate (same tokens)     {ratio('rime_gen', 'plain_generate')}")
    print(f"gen:  rime / generate(output_hidden_states)   {ratio('rime_gen', 'generate_hidden_states')}")


if __name__ == "__main__":
    main()
