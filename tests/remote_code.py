"""Run a script in a fresh interpreter where `transformers_rime` cannot be imported, as on a machine without it."""

from __future__ import annotations

import os
import subprocess
import sys


# Prepend to a script: any import of transformers_rime fails, so only the files copied next to the weights can run.
BLOCK_PACKAGE = """
import sys

class BlockRime:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "transformers_rime":
            raise ModuleNotFoundError("transformers_rime is blocked in this process")
        return None

sys.meta_path.insert(0, BlockRime())
"""


def run_without_package(script: str, *args, tmp_path) -> subprocess.CompletedProcess:
    """Run `BLOCK_PACKAGE + script` with `args`, offline, with a private remote-code cache under `tmp_path`."""
    env = {
        **os.environ,
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", BLOCK_PACKAGE + script, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
