"""Load test for `rime serve`: concurrent clients against a real server, against `RimeEncoder.encode` in one process.

    python benchmarks/load_test_serve.py                    # tiny random model, CPU, defaults below
    python benchmarks/load_test_serve.py --model DIR --clients 32 --requests 512 --items-per-request 4

Three phases, each bounded in requests and in time (`--max-seconds`):

1. baseline: `RimeEncoder.encode` of every item in this process (batch size `--encode-batch-size`): items/s;
2. load: `--clients` threads send `--requests` disc requests of `--items-per-request` texts to a server with room
   for all of them; throughput (items/s), latency p50 / p95 / p99, and every answer checked against the baseline
   embeddings of its own items (atol 1e-5);
3. overload: twice as many clients send gen requests to a server that accepts at most `--overload-in-flight` at
   once; every request must end in a 200 (checked) or a 503 with `Retry-After`, none in a timeout or another code.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from transformers_rime.serving.process import start_server, stop_server


def launch(model: str, max_in_flight: int, args, log_path: Path):
    flags = ["--accelerator", args.device, "--devices", "1", "--max-in-flight", str(max_in_flight)]
    flags += ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]
    flags += ["--encode-batch-size", str(args.encode_batch_size), "--timeout", str(args.max_seconds)]
    return start_server(model, *flags, log_path=log_path, ready_timeout=300)


def run_clients(base: str, bodies: list[dict], clients: int, max_seconds: float):
    """Send `bodies` from `clients` threads; return (status or exception name, latency, body) per request and the
    wall time. Requests not started before `max_seconds` are skipped. One connection pool serves every thread, as
    an application's client would (a new `httpx` client per request costs tens of milliseconds by itself)."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    session = httpx.Client(limits=limits, timeout=max_seconds)
    start = time.perf_counter()

    def call(body):
        if time.perf_counter() - start > max_seconds:
            return "skipped", 0.0, None, {}
        sent = time.perf_counter()
        try:
            response = session.post(f"{base}/v1/embeddings", json=body)
        except httpx.TimeoutException:
            return "timeout", time.perf_counter() - sent, None, {}
        except httpx.HTTPError as error:
            return type(error).__name__, time.perf_counter() - sent, None, {}
        return response.status_code, time.perf_counter() - sent, response.json(), dict(response.headers)

    with session, ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(call, bodies))
    return results, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a RIME directory (default: a tiny random model, saved to a temp dir)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--items-per-request", type=int, default=4)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=int, default=10)
    parser.add_argument("--encode-batch-size", type=int, default=16)
    parser.add_argument("--overload-in-flight", type=int, default=4)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="bound on each phase")
    args = parser.parse_args()

    import torch

    from transformers_rime import RimeEncoder
    from transformers_rime.testing import tiny_rime_model, tiny_rime_processor

    torch.set_num_threads(1)
    scratch = Path(tempfile.mkdtemp(prefix="rime-load-"))
    model = args.model
    if model is None:
        processor = tiny_rime_processor()
        model = str(scratch / "model")
        RimeEncoder(tiny_rime_model(processor=processor), processor).save_pretrained(model)
    texts = [
        f"item {i}: a {['red', 'blue', 'green'][i % 3]} {['car', 'cat', 'chart', 'dog'][i % 4]}" for i in range(512)
    ]
    bodies = [
        {"input": [texts[(r * args.items_per_request + k) % len(texts)] for k in range(args.items_per_request)]}
        for r in range(args.requests)
    ]
    used = sorted({text for body in bodies for text in body["input"]})

    encoder = RimeEncoder.from_pretrained(model, device=args.device)
    encoder.encode(used[:4], batch_size=args.encode_batch_size)  # warm-up
    start = time.perf_counter()
    baseline = dict(zip(used, encoder.encode(used, batch_size=args.encode_batch_size)))
    baseline_items_per_s = len(used) / (time.perf_counter() - start)

    process, base = launch(model, max(args.clients, args.requests), args, scratch / "load.log")
    try:
        run_clients(base, bodies[: args.clients], args.clients, args.max_seconds)  # warm-up
        results, wall = run_clients(base, bodies, args.clients, args.max_seconds)
    finally:
        stop_server(process)
    done = [(body, result) for body, result in zip(bodies, results) if result[0] == 200]
    wrong = 0
    for body, (_, _, payload, _) in done:
        got = np.array([row["embedding"] for row in payload["data"]], dtype=np.float32)
        wrong += not np.allclose(got, np.stack([baseline[t] for t in body["input"]]), atol=1e-5)
    latencies = np.array([latency for _, (_, latency, _, _) in done])
    other = {str(r[0]) for r in results if r[0] != 200}
    items = len(done) * args.items_per_request

    overload_body = {"input": used[:2], "mode": "gen", "max_new_tokens": args.gen_tokens}
    expected_gen = encoder.encode(used[:2], mode="gen", max_new_tokens=args.gen_tokens)
    process, base = launch(model, args.overload_in_flight, args, scratch / "overload.log")
    try:
        overload, overload_wall = run_clients(
            base, [overload_body] * (2 * args.requests // 4), 2 * args.clients, args.max_seconds
        )
    finally:
        stop_server(process)
    statuses = [r[0] for r in overload]
    ok_gen = [r for r in overload if r[0] == 200]
    wrong_gen = sum(
        not np.allclose(np.array([row["embedding"] for row in r[2]["data"]]), expected_gen, atol=1e-5) for r in ok_gen
    )
    shed = [r for r in overload if r[0] == 503]
    retry_after = all("retry-after" in r[3] for r in shed)

    print(
        f"model: {model} on {args.device}; {args.clients} clients, {args.requests} requests x {args.items_per_request} items"
    )
    print(
        f"baseline RimeEncoder.encode (one process, batch {args.encode_batch_size}): {baseline_items_per_s:.1f} items/s"
    )
    print(
        f"served: {items / wall:.1f} items/s ({items / wall / baseline_items_per_s:.2f}x the baseline), "
        f"{len(done)}/{len(bodies)} requests answered 200, latency p50 {np.percentile(latencies, 50) * 1000:.0f} ms, "
        f"p95 {np.percentile(latencies, 95) * 1000:.0f} ms, p99 {np.percentile(latencies, 99) * 1000:.0f} ms; "
        f"wrong answers: {wrong}; other outcomes: {sorted(other) or 'none'}"
    )
    print(
        f"overload ({2 * args.clients} clients, gen, at most {args.overload_in_flight} in flight): "
        f"{statuses.count(200)} x 200 ({wrong_gen} wrong), {statuses.count(503)} x 503 "
        f"(Retry-After on all: {retry_after}), {statuses.count('timeout')} timeouts, "
        f"{len([s for s in statuses if s not in (200, 503)])} other, in {overload_wall:.1f} s"
    )
    healthy = wrong == 0 and not other and wrong_gen == 0 and retry_after and set(statuses) <= {200, 503}
    return 0 if healthy and statuses.count(503) > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
