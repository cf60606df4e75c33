"""Every benchmark in one command: each script runs in its own process and prints its ratios, measured in one run.

    python benchmarks/run_all.py            # CPU sizes (about 10 minutes on 2 cores)
    python benchmarks/run_all.py --quick    # smaller repeats and batches (about 3 minutes)
    python benchmarks/run_all.py --gpu      # the above, then bench_gpu.py at Qwen2-VL-2B sizes on CUDA

- `bench_core.py`: disc vs the raw backbone forward, gen vs plain `generate` and vs `generate(output_hidden_states)`;
- `bench_cached_gradient.py`: cached-gradient vs plain training steps (time and peak memory);
- `bench_refine_rl.py`: the share of a GRPO step spent on the anchor-retrieval reward;
- `load_test_serve.py`: `rime serve` under concurrent clients (throughput and latency against in-process encoding,
  every answer checked) and under overload (503 with `Retry-After`, no timeouts); needs the `serve` extra;
- with `--gpu` only, `bench_gpu.py`: disc prefill MFU, gen throughput and items/s per mode on a CUDA GPU
  (with `--quick`: batch sizes 1 and 8, 16 new tokens, 2 repeats).

Each script's own flags (GPU sizes, dtype) are in its docstring and in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent


def commands(quick: bool, gpu: bool = False) -> list[list[str]]:
    scripts = [
        ["bench_core.py", "--repeats", "2" if quick else "5", "--new-tokens", "16" if quick else "64"],
        ["bench_cached_gradient.py", "--batch-sizes", *(["64"] if quick else ["64", "256"]), "--max-uncached", "256"],
        ["bench_refine_rl.py"],
        ["load_test_serve.py", "--requests", "64" if quick else "256"],
    ]
    if gpu:  # needs CUDA, so never part of the default (CPU) run
        quick_flags = ["--batch-sizes", "1", "8", "--new-tokens", "16", "--repeats", "2"]
        scripts.append(["bench_gpu.py", *(quick_flags if quick else [])])
    return scripts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller batches")
    parser.add_argument("--gpu", action="store_true", help="also run bench_gpu.py (needs a CUDA GPU)")
    args = parser.parse_args()
    failures = 0
    for script, *flags in commands(args.quick, args.gpu):
        print(f"\n=== {script} {' '.join(flags)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / script), *flags], cwd=HERE)
        print(f"=== {script}: exit {code}, {time.perf_counter() - start:.0f} s", flush=True)
        failures += code != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
