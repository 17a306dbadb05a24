"""The one way Chunkwise opens a SQLite file that several processes share, and asks if a process is alive."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path


def open_shared_sqlite(path: Path, schema: str) -> sqlite3.Connection:
    """A WAL-mode connection (autocommit, usable from any thread) with `schema` applied; the folder is made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    # Several processes may create the file at once; switching to WAL can report "locked" without waiting.
    for attempt in range(200):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(schema)
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 199:
                raise
            time.sleep(0.05)
    conn.execute("PRAGMA synchronous=NORMAL")  # a commit survives a killed process; fsync at checkpoints
    return conn


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
