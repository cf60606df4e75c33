"""The `rime serve` command line: its flags (each limit has a sane default) and how they become a server."""

from __future__ import annotations

import argparse
import os
import sys

from .requests import ServeLimits


DEFAULT_LIMITS = ServeLimits()


def add_serve_arguments(parser: argparse.ArgumentParser, whole_number) -> None:
    """Add `rime serve`'s flags to `parser`; `whole_number(minimum)` is the CLI's checked integer type."""
    parser.add_argument("--model", required=True, help="RIME directory or Hub id")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=whole_number(1), default=8000)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("RIME_API_KEY"),
        help="require `Authorization: Bearer KEY` on every request but /health and /ready (default: $RIME_API_KEY)",
    )
    parser.add_argument("--model-name", help="the name /v1/models lists and responses carry (default: --model)")
    batching = parser.add_argument_group("batching (LitServe)")
    batching.add_argument("--max-batch-size", type=whole_number(1), default=8, help="requests batched together")
    batching.add_argument(
        "--max-wait-ms", type=whole_number(0), default=10, help="how long a batch waits to fill, in milliseconds"
    )
    batching.add_argument(
        "--encode-batch-size", type=whole_number(1), default=16, help="items per forward pass within a batch"
    )
    placement = parser.add_argument_group("placement")
    placement.add_argument("--accelerator", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    placement.add_argument("--devices", default="auto", help="how many devices to use ('auto': all)")
    placement.add_argument(
        "--workers-per-device", type=whole_number(1), default=1, help="model copies per device (inference workers)"
    )
    placement.add_argument("--api-servers", type=whole_number(1), default=None, help="HTTP server processes")
    placement.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-in-flight",
        type=whole_number(1),
        default=64,
        help="embedding requests accepted at once per server process; more get 503 with Retry-After",
    )
    limits.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take (504 beyond)")
    limits.add_argument(
        "--max-body-bytes", type=whole_number(1), default=64 * 1024 * 1024, help="largest request body (413 beyond)"
    )
    limits.add_argument("--max-items", type=whole_number(1), default=DEFAULT_LIMITS.max_items, help="per request")
    limits.add_argument(
        "--max-text-chars", type=whole_number(1), default=DEFAULT_LIMITS.max_text_chars, help="per item's text"
    )
    limits.add_argument(
        "--max-image-pixels",
        type=whole_number(1),
        default=DEFAULT_LIMITS.max_image_pixels,
        help="per image or frame, read from its header before decoding",
    )
    limits.add_argument(
        "--max-image-bytes", type=whole_number(1), default=DEFAULT_LIMITS.max_image_bytes, help="per encoded image"
    )
    limits.add_argument("--max-frames", type=whole_number(1), default=DEFAULT_LIMITS.max_frames, help="per video")
    limits.add_argument(
        "--max-new-tokens-limit",
        type=whole_number(0),
        default=DEFAULT_LIMITS.max_new_tokens,
        help="the largest max_new_tokens a gen request may ask for",
    )
    limits.add_argument(
        "--max-length", type=whole_number(1), default=None, help="longest prompt in tokens (default: the context)"
    )
    media = parser.add_argument_group("media access (both off by default)")
    media.add_argument(
        "--allow-remote-media", action="store_true", help="fetch http(s) image URLs (server-side request forgery risk)"
    )
    media.add_argument("--media-root", help="read local image paths, only inside this folder")


def run_serve(args) -> int:
    """Start the server `args` describe and block until it is stopped."""
    if args.media_root is not None and not os.path.isdir(args.media_root):
        print(f"rime serve: --media-root {args.media_root}: not a folder", file=sys.stderr)
        return 2
    from .server import serve

    limits = ServeLimits(
        max_items=args.max_items,
        max_text_chars=args.max_text_chars,
        max_image_pixels=args.max_image_pixels,
        max_image_bytes=args.max_image_bytes,
        max_frames=args.max_frames,
        max_new_tokens=args.max_new_tokens_limit,
        allow_remote_media=args.allow_remote_media,
        media_root=args.media_root,
    )
    loading = {} if args.dtype == "auto" else {"dtype": args.dtype}
    devices = args.devices if args.devices == "auto" else int(args.devices)
    serve(
        args.model,
        host=args.host,
        port=args.port,
        num_api_servers=args.api_servers,
        api_key=args.api_key,
        limits=limits,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.max_wait_ms / 1000,
        max_in_flight=args.max_in_flight,
        max_body_bytes=args.max_body_bytes,
        timeout=args.timeout,
        encode_batch_size=args.encode_batch_size,
        max_length=args.max_length,
        model_name=args.model_name,
        accelerator=args.accelerator,
        devices=devices,
        workers_per_device=args.workers_per_device,
        loading_kwargs=loading,
    )
    return 0
