"""GPU benchmark: disc prefill MFU, gen throughput and items/s per mode, at several batch sizes, in one run.

The model is a RIME model with random weights and the sizes of Qwen2-VL-2B: text tower hidden 1536, 28 layers,
12 heads (2 key/value heads), MLP 8960, vocabulary 151,936; vision tower width 1280, 32 blocks, 16 heads, patch
14, 2x2 merge. It runs in bf16 with SDPA attention. Every size is a flag. The tokenizer and processor are the tiny
offline ones of `transformers_rime.testing` (nothing is downloaded); only the token ids they produce differ from
the real tokenizer's, and the cost of a forward depends on the sequence length, not on the ids.

For each batch size and each prompt kind (text only, or one image plus a short text) it measures
- `disc`: a `torch.no_grad()` `RimeForEmbedding.forward` (one prefill, no LM head): items/s, prompt tokens/s,
  achieved TFLOP/s and MFU (analytic FLOPs, see `prefill_flops`, over `--peak-tflops`);
- `gen`: `generate_embeddings` with a rewrite forced to exactly `--new-tokens` tokens, then `<gen_emb>`:
  items/s and new tokens/s (rewrite + `<gen_emb>`);
- `generate`: plain greedy `vlm.generate` of the same new tokens, the reference for `gen`;
and prints gen items/s / disc items/s per batch size. Times are medians of `--repeats` calls after `--warmup`
calls of every variant, measured round-robin per batch size in one process, with `torch.cuda.synchronize()` around
every timer. On CUDA, each variant's `torch.cuda.max_memory_allocated` (weights included) is reported too.

    python benchmarks/bench_gpu.py --output gpu.json                        # H200: 2B sizes, cuda, bf16, SDPA
    python benchmarks/bench_gpu.py --batch-sizes 1 8 32 128 --new-tokens 64 --image-size 448 --peak-tflops 989
    python benchmarks/bench_gpu.py --tiny --batch-sizes 1 2 --new-tokens 4  # CPU smoke run: tiny model, fp32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from memory import current_memory, peak_memory, sync


# The defaults: Qwen2-VL-2B's towers (its published config.json) on one CUDA GPU in bf16.
QWEN2_VL_2B = {
    "device": "cuda",
    "dtype": "bfloat16",
    "attn": "sdpa",
    "hidden_size": 1536,
    "layers": 28,
    "heads": 12,
    "kv_heads": 2,
    "intermediate_size": 8960,
    "vocab_size": 151936,
    "mrope_section": [16, 24, 24],
    "rope_theta": 1e6,
    "vision_embed_dim": 1280,
    "vision_depth": 32,
    "vision_heads": 16,
    "patch_size": 14,
    "merge_size": 2,
    "text_tokens": 128,
    "image_size": 448,
}
# `--tiny`: a model small enough that the whole run takes seconds on one CPU thread (the test runs it).
TINY = {
    **QWEN2_VL_2B,
    "device": "cpu",
    "dtype": "float32",
    "hidden_size": 64,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 512,
    "mrope_section": [2, 3, 3],
    "rope_theta": 1e4,
    "vision_embed_dim": 32,
    "vision_depth": 2,
    "vision_heads": 2,
    "text_tokens": 16,
    "image_size": 56,
}
PROMPT_KINDS = ("text", "image")
MODES = ("disc", "gen", "generate")
IMAGE_PROMPT_TEXT = "what is shown in this picture?"


# --------------------------------------------------------------------------- analytic FLOPs (pure functions)


@dataclass(frozen=True)
class TextTower:
    """The sizes of a Qwen2-VL text tower that its FLOPs depend on."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int


@dataclass(frozen=True)
class VisionTower:
    """The sizes of a Qwen2-VL vision tower (ViT with a 2-layer MLP patch merger) that its FLOPs depend on."""

    embed_dim: int
    depth: int
    mlp_ratio: float
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    in_channels: int
    out_hidden: int


def text_matmul_params(text: TextTower) -> int:
    """Weights of the decoder layers' matrix multiplies: q/k/v/o projections and the gated MLP.

    Embedding, LM head, norms and biases are left out: the first two are counted separately (the embedding is a
    lookup, the head runs only where logits are asked for) and the others cost no matrix multiply.
    """
    q_width, kv_width = text.heads * text.head_dim, text.kv_heads * text.head_dim
    attention = 2 * text.hidden * q_width + 2 * text.hidden * kv_width  # q, o and k, v
    mlp = 3 * text.hidden * text.intermediate  # gate, up, down
    return text.layers * (attention + mlp)


def vision_matmul_params(vision: VisionTower) -> tuple[int, int]:
    """(weights applied once per patch, weights applied once per merged token) of the vision tower."""
    patch_embed = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2 * vision.embed_dim
    mlp_width = int(vision.embed_dim * vision.mlp_ratio)
    block = 4 * vision.embed_dim**2 + 2 * vision.embed_dim * mlp_width  # qkv + proj, fc1 + fc2
    merged = vision.embed_dim * vision.merge_size**2  # the merger concatenates merge x merge patches
    merger = merged * merged + merged * vision.out_hidden
    return patch_embed + vision.depth * block, merger


def prefill_flops(
    text: TextTower,
    sequence_lengths: Sequence[int],
    vision: VisionTower | None = None,
    image_patches: Sequence[int] = (),
    lm_head_positions: int = 0,
) -> float:
    """Forward FLOPs of one prefill, counted analytically (the PaLM / nanoGPT convention).

    Per row of `s` real tokens the text tower costs `2 * P * s` for its matrix multiplies (`P` from
    `text_matmul_params`) plus `4 * layers * q_width * s**2` for attention scores and their weighted sum, not
    halved for the causal mask. Each image of `n` patches costs `2 * n * P_patch + 4 * depth * embed_dim * n**2`
    in the vision tower (full attention within the image) and `2 * P_merge` per merged token. The LM head costs
    `2 * hidden * vocab` per position it runs on (none in the disc forward). Padding is not counted: the result
    is the useful work, so MFU does not reward padding.
    """
    q_width = text.heads * text.head_dim
    weights = text_matmul_params(text)
    flops = sum(2 * weights * s + 4 * text.layers * q_width * s * s for s in sequence_lengths)
    if image_patches:
        if vision is None:
            raise ValueError("image_patches given without a vision tower")
        per_patch, per_merged = vision_matmul_params(vision)
        for n in image_patches:
            flops += 2 * per_patch * n + 4 * vision.depth * vision.embed_dim * n * n
            flops += 2 * per_merged * (n // vision.merge_size**2)
    return float(flops + 2 * text.hidden * text.vocab * lm_head_positions)


def towers_from_config(vlm_config) -> tuple[TextTower, VisionTower]:
    """Read the two towers' sizes off a built Qwen2-VL config (so the count follows what actually ran)."""
    t, v = vlm_config.text_config, vlm_config.vision_config
    text = TextTower(
        hidden=t.hidden_size,
        layers=t.num_hidden_layers,
        heads=t.num_attention_heads,
        kv_heads=t.num_key_value_heads,
        head_dim=getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads,
        intermediate=t.intermediate_size,
        vocab=t.vocab_size,
    )
    vision = VisionTower(
        embed_dim=v.embed_dim,
        depth=v.depth,
        mlp_ratio=v.mlp_ratio,
        patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size,
        merge_size=v.spatial_merge_size,
        in_channels=v.in_channels,
        out_hidden=v.hidden_size,
    )
    return text, vision


# --------------------------------------------------------------------------- model and batches


@contextlib.contextmanager
def default_dtype(dtype):
    """Create parameters directly in `dtype`: a 2B model initialised in fp32 on the CPU would take minutes."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_processor(args):
    from transformers_rime.testing import tiny_rime_processor

    processor = tiny_rime_processor()
    image = processor.image_processor
    image.patch_size, image.merge_size = args.patch_size, args.merge_size
    # allow the requested image size through unresized (it is rounded to a multiple of patch x merge)
    pixels = args.image_size**2
    image.size = {"shortest_edge": min(pixels, (args.patch_size * args.merge_size) ** 2), "longest_edge": pixels}
    return processor


def build_model(args, processor):
    import torch

    from transformers_rime import RimeConfig, RimeForEmbedding
    from transformers_rime.testing import tiny_vlm_config

    vision = {
        "embed_dim": args.vision_embed_dim,
        "depth": args.vision_depth,
        "num_heads": args.vision_heads,
        "mlp_ratio": 4,
        "patch_size": args.patch_size,
        "spatial_merge_size": args.merge_size,
        "hidden_size": args.hidden_size,  # the merger's output width is the text width
    }
    vlm_config = tiny_vlm_config(
        "qwen2_vl",
        processor.tokenizer,
        vision_overrides=vision,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta, "mrope_section": args.mrope_section},
    )
    config = RimeConfig(vlm_config=vlm_config, attn_implementation=args.attn)
    processor.apply_token_ids(config)
    torch.manual_seed(0)
    with torch.device(args.device), default_dtype(getattr(torch, args.dtype)):
        model = RimeForEmbedding(config)
    return model.eval()


def prompt_text(tokenizer, tokens: int, row: int) -> str:
    """About `tokens` tokens of text; rows differ (as in a real batch) only by a leading number."""
    words = "a red car parked on a quiet street next to a black cat sleeping on a wooden chair "
    ids = tokenizer(words * (tokens // 4 + 1), add_special_tokens=False)["input_ids"][:tokens]
    return f"{row} " + tokenizer.decode(ids)


def make_batches(args, processor, model, batch_size: int, kind: str) -> dict:
    """The disc and gen batches of one batch size and prompt kind, on the model's device and dtype."""
    from transformers_rime.testing import random_image

    if kind == "text":
        texts = [prompt_text(processor.tokenizer, args.text_tokens, i) for i in range(batch_size)]
        images = None
    else:
        texts = [f"{i} {IMAGE_PROMPT_TEXT}" for i in range(batch_size)]
        images = [random_image(args.image_size, args.image_size, seed=i) for i in range(batch_size)]
    batches = {}
    for mode in ("disc", "gen"):
        batch = processor(text=texts, images=images, mode=mode, return_tensors="pt").to(model.device)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
        batches[mode] = batch
    return batches


# --------------------------------------------------------------------------- the three calls


def disc_call(model, batch) -> Callable:
    return lambda: model(**batch).embeddings


def gen_call(model, batch, new_tokens: int) -> Callable:
    """`generate_embeddings` whose rewrite is exactly `new_tokens` long.

    A random model could pick `<gen_emb>` or an end-of-turn token early and finish after fewer steps; banning them
    until `new_tokens` tokens are written makes every row spend the whole budget, after which RIME's own logits
    processor forces `<gen_emb>`. The cost then matches plain `generate` of `new_tokens + 1` tokens plus one step.
    """
    from transformers import LogitsProcessorList, MinNewTokensLengthLogitsProcessor

    banned = {model.config.gen_emb_token_id, *model.stop_token_ids()}
    prompt_length = batch["input_ids"].shape[1]
    force = MinNewTokensLengthLogitsProcessor(prompt_length, new_tokens, sorted(banned), device=model.device)

    def call():
        out = model.generate_embeddings(
            **batch, max_new_tokens=new_tokens, logits_processor=LogitsProcessorList([force])
        )
        assert out.sequences.shape[1] == new_tokens + 1, "the rewrite was not forced to its full length"
        return out.embeddings

    return call


def generate_call(model, batch, new_tokens: int) -> Callable:
    """Plain greedy `generate` of the tokens RIME's path writes (rewrite + `<gen_emb>`), without early stop."""
    settings = dict(
        do_sample=False,
        max_new_tokens=new_tokens + 1,
        min_new_tokens=new_tokens + 1,
        eos_token_id=None,
        pad_token_id=0,
    )
    prompt_length = batch["input_ids"].shape[1]

    def call():
        sequences = model.vlm.generate(**batch, **settings)
        assert sequences.shape[1] == prompt_length + new_tokens + 1, "generate stopped early"
        return sequences

    return call


# --------------------------------------------------------------------------- timing


def time_round_robin(calls: dict[str, Callable], device: str, warmup: int, repeats: int) -> dict[str, dict]:
    """Median seconds (and, on CUDA, peak allocated MiB) of each call, measured round-robin.

    Warm-up runs every call first (CUDA kernels, cuBLAS heuristics and the allocator's pool settle per shape);
    `sync` around each timer makes it measure the GPU work, not the launch.
    """
    import torch

    cuda = device.startswith("cuda")
    seconds = {name: [] for name in calls}
    peak = dict.fromkeys(calls, 0)
    with torch.no_grad():
        for _ in range(warmup):
            for call in calls.values():
                call()
        for _ in range(repeats):
            for name, call in calls.items():
                sync(device)
                current_memory(device, reset=True)  # resets the CUDA peak counter
                start = time.perf_counter()
                call()
                sync(device)
                seconds[name].append(time.perf_counter() - start)
                if cuda:
                    peak[name] = max(peak[name], peak_memory(device))
    return {
        name: {"seconds": statistics.median(values), "peak_mib": peak[name] / 2**20 if cuda else None}
        for name, values in seconds.items()
    }


def measure_batch_size(args, model, processor, batch_size: int) -> list[dict]:
    """Every mode and prompt kind at one batch size, as rows of the result table."""
    text_tower, vision_tower = towers_from_config(model.config.vlm_config)
    calls, facts = {}, {}
    for kind in PROMPT_KINDS:
        batches = make_batches(args, processor, model, batch_size, kind)
        disc = batches["disc"]
        lengths = disc["attention_mask"].sum(1).tolist()
        patches = disc["image_grid_thw"].prod(-1).tolist() if "image_grid_thw" in disc else []
        facts[kind] = {
            "prompt_tokens": sum(lengths),
            "image_patches": sum(patches),
            "flops": prefill_flops(text_tower, lengths, vision_tower, patches),
        }
        calls[(kind, "disc")] = disc_call(model, disc)
        calls[(kind, "gen")] = gen_call(model, batches["gen"], args.new_tokens)
        calls[(kind, "generate")] = generate_call(model, batches["gen"], args.new_tokens)
    timed = time_round_robin(calls, args.device, args.warmup, args.repeats)

    rows = []
    for (kind, mode), measured in timed.items():
        seconds = measured["seconds"]
        row = {"batch_size": batch_size, "prompt": kind, "mode": mode, **measured, "items_per_s": batch_size / seconds}
        if mode == "disc":
            tflops = facts[kind]["flops"] / seconds / 1e12
            row.update(
                prompt_tokens=facts[kind]["prompt_tokens"],
                image_patches=facts[kind]["image_patches"],
                prompt_tokens_per_s=facts[kind]["prompt_tokens"] / seconds,
                tflops=tflops,
                mfu=tflops / args.peak_tflops,
            )
        else:  # both write the rewrite and <gen_emb>: new_tokens + 1 tokens per row
            row["new_tokens_per_s"] = batch_size * (args.new_tokens + 1) / seconds
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per batch size and prompt kind: gen items/s over disc items/s, and gen time over plain generate time."""
    by_key = {(r["batch_size"], r["prompt"], r["mode"]): r for r in rows}
    ratios = []
    for batch_size, kind in dict.fromkeys((r["batch_size"], r["prompt"]) for r in rows):
        disc, gen, plain = (by_key[(batch_size, kind, mode)] for mode in MODES)
        ratios.append(
            {
                "batch_size": batch_size,
                "prompt": kind,
                "gen_over_disc_items": gen["items_per_s"] / disc["items_per_s"],
                "gen_over_generate_time": gen["seconds"] / plain["seconds"],
            }
        )
    return ratios


# --------------------------------------------------------------------------- report


def markdown_table(rows: list[dict]) -> str:
    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        "| batch | prompt | mode | median s | items/s | prompt tok/s | new tok/s | TFLOP/s | MFU | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch_size']} | {r['prompt']} | {r['mode']} | {r['seconds']:.4f} | {r['items_per_s']:.2f} "
            f"| {fmt(r.get('prompt_tokens_per_s'), '.0f')} | {fmt(r.get('new_tokens_per_s'), '.0f')} "
            f"| {fmt(r.get('tflops'), '.2f')} | {fmt(r.get('mfu'), '.2%')} | {fmt(r['peak_mib'], '.0f')} |"
        )
    return "\n".join(lines)


def environment(args, model) -> dict:
    import torch
    import transformers

    text_tower, vision_tower = towers_from_config(model.config.vlm_config)
    return {
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "text_tower": asdict(text_tower),
        "vision_tower": asdict(vision_tower),
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model, fp32 on the CPU: a smoke run in seconds")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--new-tokens", type=int, default=64, help="rewrite length, forced (no early stop)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="calls of every variant before timing")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device peak (H200 dense bf16: 989)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--output", help="write the results as JSON here")
    # Sizes and placement: unset ones come from the Qwen2-VL-2B preset, or the tiny one with --tiny.
    parser.add_argument("--device")
    parser.add_argument("--dtype", help="torch dtype name, e.g. bfloat16")
    parser.add_argument("--attn", help="attention implementation: sdpa, eager, flash_attention_2, ...")
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--kv-heads", type=int)
    parser.add_argument("--intermediate-size", type=int)
    parser.add_argument("--vocab-size", type=int)
    parser.add_argument("--mrope-section", type=int, nargs=3, help="must sum to head_dim / 2")
    parser.add_argument("--rope-theta", type=float)
    parser.add_argument("--vision-embed-dim", type=int)
    parser.add_argument("--vision-depth", type=int)
    parser.add_argument("--vision-heads", type=int)
    parser.add_argument("--patch-size", type=int)
    parser.add_argument("--merge-size", type=int)
    parser.add_argument("--text-tokens", type=int, help="text length of a text-only prompt, before the template")
    parser.add_argument("--image-size", type=int, help="side of the square image (448: 256 tokens after merge)")
    args = parser.parse_args(argv)
    for name, value in (TINY if args.tiny else QWEN2_VL_2B).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    import torch

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    processor = build_processor(args)
    model = build_model(args, processor)
    rows = []
    for batch_size in args.batch_sizes:
        rows += measure_batch_size(args, model, processor, batch_size)
        print(f"batch {batch_size}: done", file=sys.stderr, flush=True)
    result = {"environment": environment(args, model), "results": rows, "ratios": summarize(rows)}

    env = result["environment"]
    print(
        f"device={args.device} ({env['device_name']}) dtype={args.dtype} attn={args.attn} "
        f"params={env['parameters'] / 1e9:.3f}B weights={env['weights_mib']:.0f} MiB new_tokens={args.new_tokens} "
        f"repeats={args.repeats} peak={args.peak_tflops} TFLOP/s"
    )
    print(markdown_table(rows))
    print()
    for r in result["ratios"]:
        print(
            f"batch {r['batch_size']:>4} {r['prompt']:<5}: gen / disc items/s x{r['gen_over_disc_items']:.4f}   "
            f"gen / plain generate time x{r['gen_over_generate_time']:.3f}"
        )
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
