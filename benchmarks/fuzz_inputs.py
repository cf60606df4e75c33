"""Count how the project's fuzz set (`tests/fuzz_cases.py`) is handled: cases tried / clear error / handled /
unclear error / silent / crash, in every mode a case applies to.

    python benchmarks/fuzz_inputs.py             # the table, then every case that is not as it must be
    python benchmarks/fuzz_inputs.py --verbose   # also each case's outcome and message

The fuzz set covers bad items (images, video frames, text), a bad item at any position of a long list, bad call
arguments and silent-result traps. Finished-work and loading faults (the evaluation cache, concurrent runs, export
staging, CLI output paths, mismatched or pickled checkpoints, bad training rows) are tested in
tests/test_reliability_io.py, tests/models/test_reliability_loading.py and tests/data/test_reliability_data.py, whose
pass counts are printed below the table (`--with-io-tests`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz_cases import CASES, OUTCOMES, classify, tiny_encoder, write_files  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true", help="print every case's outcome")
    parser.add_argument("--with-io-tests", action="store_true", help="also run the finished-work and loading tests")
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder, counter = tiny_encoder()
    counts, wrong = Counter(), []
    with tempfile.TemporaryDirectory() as folder:
        files = write_files(Path(folder))
        for case in CASES:
            for mode in case.modes:
                outcome, detail = classify(case, encoder, counter, files, mode)
                counts[outcome] += 1
                due = "clear error" if case.error else "handled"
                if outcome != due:
                    wrong.append(f"{case.name} [{mode}]: {outcome}: {detail}")
                if args.verbose:
                    print(f"{outcome:14} {case.kind:9} {case.name} [{mode}]: {detail[:140]}")
    tried = sum(counts.values())
    print("\n| cases tried | " + " | ".join(OUTCOMES) + " |")
    print("|---" * (len(OUTCOMES) + 1) + "|")
    print(f"| {tried} | " + " | ".join(str(counts[o]) for o in OUTCOMES) + " |")
    for line in wrong:
        print("NOT AS DUE:", line)
    if args.with_io_tests:
        tests = [
            "tests/test_reliability_io.py",
            "tests/models/test_reliability_loading.py",
            "tests/data/test_reliability_data.py",
        ]
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        print("\nfinished-work, loading and data tests:", result.stdout.strip().splitlines()[-1])
    return 0 if not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
