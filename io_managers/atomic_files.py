"""Atomic local file replacement: the one implementation of temp file + fsync + rename.

A reader (or a crash) sees the old file or the new one, never a torn one: the bytes go to a temp file in the
same directory (same filesystem, so ``os.replace`` is an atomic rename), are fsynced, renamed over the target,
and the directory is fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, then atomically replace ``path`` with it.

    If ``write`` or the replace raises, ``path`` keeps its previous content and the temp file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    write_atomic(path, lambda f: f.write(data))


def _fsync_dir(directory: Path) -> None:
    # Directory fsync makes the rename durable; not every platform/filesystem supports opening a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
