"""Writing files so that a reader (or a resumed run) never sees a half-written one: the one atomic writer."""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary path beside `path` to write to; on leaving the block it is fsync'ed and renamed over
    `path` in one `os.replace`, so readers see the old file or the new one. Its name is unique (two processes
    never share it) and it is removed if the block fails or is interrupted. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f'.{path.name}.{uuid.uuid4().hex}.tmp'
    try:
        yield temporary
        with open(temporary, 'rb+') as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_atomically(path: str | os.PathLike, payload: bytes) -> Path:
    """Write `payload` to `path` atomically (`atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(payload)
    return Path(path)


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """`payload` as indented JSON (non-JSON values as their str), atomically."""
    return write_atomically(path, json.dumps(payload, indent=2, default=str).encode())


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX only; Windows cannot open a directory)."""
    if os.name != 'posix':
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
