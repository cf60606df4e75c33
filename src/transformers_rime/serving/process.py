"""Run `rime serve` as a child process: start it, wait until it is ready, stop it (tests, benchmarks, notebooks).

```python
from transformers_rime.serving.process import start_server, stop_server

process, base_url = start_server("path/to/rime", "--api-key", "secret")
...  # call f"{base_url}/v1/embeddings"
stop_server(process)
```
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    model: str | os.PathLike,
    *flags: str,
    log_path: str | os.PathLike | None = None,
    env: dict | None = None,
    ready_timeout: float = 180.0,
) -> tuple[subprocess.Popen, str]:
    """Start `rime serve --model model *flags` on a free local port, in its own process group, and return the
    process and its base URL once `/ready` answers 200. Raises a `RuntimeError` with the end of the server's log if it
    exits or is not ready in `ready_timeout` seconds."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "transformers_rime.cli", "serve", "--model", str(model), "--port", str(port)]
    log_path = Path(log_path) if log_path is not None else Path(os.devnull)
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*command, *flags], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rime serve exited with {process.returncode}: {_tail(log_path)}")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise RuntimeError(f"rime serve was not ready in {ready_timeout:.0f} s: {_tail(log_path)}")


def stop_server(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM to the server's whole process group (workers included), then SIGKILL after `timeout` seconds."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def _tail(path: Path) -> str:
    return "" if str(path) == os.devnull or not path.exists() else path.read_text(errors="replace")[-3000:]
