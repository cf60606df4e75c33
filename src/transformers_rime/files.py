"""Files written whole: a reader sees the old file or the new one, never half of one, and concurrent writers never
share a temporary file. Evaluation results, caches, the CLI's outputs and exports use these."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_json(path: str | os.PathLike, value) -> Path:
    """Write `value` as indented JSON to `path`, atomically (see `write_atomically`)."""
    return write_bytes(Path(path), json.dumps(value, indent=2).encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path`, atomically and flushed to disk (see `write_atomically`)."""

    def write(temporary: Path) -> None:
        with open(temporary, "xb") as f:  # exclusive: the name is this writer's alone
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return write_atomically(Path(path), write)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Have `write` fill a temporary file named for this write alone, in `path`'s folder, then rename it to `path`.

    The temporary file is removed if anything fails. Its name keeps `path`'s extension (PIL reads it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    return path


__all__ = ["write_atomically", "write_bytes", "write_json"]
