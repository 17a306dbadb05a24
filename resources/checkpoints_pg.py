"""Item-level checkpoints in PostgreSQL: the shared backend of resources/checkpoints.py (issue #14).

The same contract as `ChunkCheckpoint` (load, record, close, remove; one writer per (dataset, partition, stage);
`record()` durable against the death of the writing process once it returns), kept in one table instead of a
folder of CRC-framed logs, so a chunk killed on one machine resumes on another from what the first recorded:

    chunkwise_checkpoints(dataset_id, partition_key, stage, item_key, record jsonb, recorded_at)
        primary key (dataset_id, partition_key, stage, item_key): recording a key again replaces its record

- `record()` is one autocommitted upsert. The writer's connection runs with `synchronous_commit = off`: the row
  is the server's once the call returns (the death of the worker loses nothing), and the server flushes its WAL
  within `wal_writer_delay` x 3 (600 ms by default), so a crash of the database server itself loses at most that
  window, as the file backend's group fsync (50 ms) bounds a machine crash. No per-item flush, no compaction:
  the table is the snapshot.
- One writer: the first `record()` takes a session-level advisory lock on the checkpoint's identity with
  `pg_try_advisory_lock`; a second writer gets `CheckpointInUse`. The lock belongs to the writer's connection,
  so the server releases it when that connection ends: at `close()`, or when the worker dies (its socket closes;
  across a network without a FIN, TCP keepalives end it within 40 s: resources/state_url.py).
- `remove()` (after the partition materialized) takes the same lock, waiting, and deletes the rows.

`open_checkpoint` picks the backend: `CHUNKWISE_STATE_URL` set to a `postgresql://` URL (the shared backend,
README "Beyond one machine") -> this table; unset -> the files under `<home>/checkpoints`. The batch path's
journal and cancel marker are shared documents then (resources/shared_docs.py, llm_assets/stages.py).

Errors name the setting and never the password (`redact`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors

from resources.checkpoints import (
    CheckpointError,
    CheckpointInUse,
    CheckpointStats,
    ChunkCheckpoint,
)
from resources.state_url import STATE_URL_ENV, StateUrlError, redact, state_url
from resources.state_url import connect as connect_state_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunkwise_checkpoints (
    dataset_id TEXT NOT NULL, partition_key TEXT NOT NULL, stage TEXT NOT NULL, item_key TEXT NOT NULL,
    record JSONB NOT NULL, recorded_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (dataset_id, partition_key, stage, item_key))
"""
_SCHEMA_LOCK_ID = int.from_bytes(
    hashlib.sha256(b"chunkwise_checkpoints schema").digest()[:8], "big", signed=True
)
_schema_ready: set[str] = set()
_schema_lock = threading.Lock()


def connect(url: str, what: str) -> Any:
    """`resources.state_url.connect`, failing as a CheckpointError (the stage's own failure: the chunk retries)."""
    try:
        return connect_state_db(url, what)
    except StateUrlError as error:
        raise CheckpointError(str(error)) from None


def open_checkpoint(
    root: Path, dataset_id: str, partition_key: str, stage: str, compact_every: int = 25
) -> ChunkCheckpoint | PostgresChunkCheckpoint:
    """The checkpoint of (dataset, partition, stage) in the configured backend (module docstring)."""
    url = state_url()
    if url is None:
        return ChunkCheckpoint(root, dataset_id, partition_key, stage, compact_every=compact_every)
    return PostgresChunkCheckpoint(url, dataset_id, partition_key, stage)


def remove_checkpoints(url: str, dataset_id: str, succeeded: set[str]) -> tuple[int, int]:
    """Delete the checkpoints of `dataset_id`'s succeeded chunks (partition keys); keep the others'. Returns
    (checkpoints removed, kept), one per (chunk, stage). A chunk whose writer still holds its lock is kept."""
    removed = kept = 0
    conn = connect(url, f"checkpoints of {dataset_id}")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT DISTINCT partition_key, stage FROM chunkwise_checkpoints WHERE dataset_id = %s",
                (dataset_id,),
            )
            found = cur.fetchall()
        for partition_key, stage in found:
            if partition_key not in succeeded:
                kept += 1
                continue
            checkpoint = PostgresChunkCheckpoint(url, dataset_id, partition_key, stage)
            checkpoint.remove()
            removed += 1
    except psycopg2.errors.UndefinedTable:
        return 0, 0  # no checkpoint was ever written through this database
    finally:
        conn.close()
    return removed, kept


class PostgresChunkCheckpoint:
    """Durable per-item results of one (dataset, partition, stage) in PostgreSQL (module docstring).

    Same use as ChunkCheckpoint: `load()`, `record()` from one thread, then `close()`; `remove()` after the
    partition materialized. `path` is a readable, password-free name for metadata and messages."""

    def __init__(self, url: str, dataset_id: str, partition_key: str, stage: str) -> None:
        for value, what in ((dataset_id, "dataset_id"), (partition_key, "partition_key"), (stage, "stage")):
            if not isinstance(value, str) or not value:
                raise ValueError(f"checkpoint {what} must be a non-empty string, got {value!r}")
        self.url = url
        self.dataset_id = dataset_id
        self.partition_key = partition_key
        self.stage = stage
        self.stats = CheckpointStats()
        self._identity = (dataset_id, partition_key, stage)
        digest = hashlib.sha256("\x1f".join(("checkpoint", *self._identity)).encode()).digest()
        self._lock_id = int.from_bytes(digest[:8], "big", signed=True)
        self._lock = threading.RLock()
        self._writer: Any = None
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresChunkCheckpoint({self.path})"

    def __enter__(self) -> PostgresChunkCheckpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def path(self) -> str:
        return f"{redact(self.url)}#chunkwise_checkpoints/{self.dataset_id}/{self.partition_key}/{self.stage}"

    @property
    def torn_records(self) -> int:
        return 0  # a row is committed whole or not at all

    # ---- reading -------------------------------------------------------------------------------------

    def load(self) -> dict[str, dict]:
        """Item key -> record; {} when nothing was recorded."""
        with self._lock:
            if self._writer is not None:
                return self._select(self._writer)
            conn = self._connect()
            try:
                return self._select(conn)
            finally:
                conn.close()

    def _select(self, conn: Any) -> dict[str, dict]:
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT item_key, record FROM chunkwise_checkpoints "
                    "WHERE dataset_id = %s AND partition_key = %s AND stage = %s",
                    self._identity,
                )
                return {key: record for key, record in cur.fetchall()}
        except psycopg2.Error as error:
            raise self._failed("read", error) from None

    # ---- writing -------------------------------------------------------------------------------------

    def record(self, key: str, record: dict) -> None:
        """Make one item's result durable (the server has it once this returns). Recording a key again
        replaces its record."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"checkpoint key must be a non-empty string, got {key!r}")
        if not isinstance(record, dict):
            raise TypeError(f"checkpoint record for item {key!r} must be a dict, got {type(record).__name__}")
        try:
            payload = json.dumps(record, ensure_ascii=True, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"checkpoint record for item {key!r} is not JSON-serialisable ({error}); store plain "
                "str/int/float/bool/None/list/dict values"
            ) from error
        with self._lock:
            if self._closed:
                raise CheckpointError(f"checkpoint {self.path} is closed; create a new checkpoint to write")
            if self._writer is None:
                self._open_writer()
            try:
                with self._writer.cursor() as cur:
                    cur.execute(
                        "INSERT INTO chunkwise_checkpoints (dataset_id, partition_key, stage, item_key, record) "
                        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (dataset_id, partition_key, stage, item_key) "
                        "DO UPDATE SET record = EXCLUDED.record, recorded_at = clock_timestamp()",
                        (*self._identity, key, payload),
                    )
            except psycopg2.Error as error:
                raise self._failed(f"record item {key!r}", error) from None
            self.stats.records += 1

    def close(self) -> None:
        """Release the writer's lock and connection. Idempotent; record() afterwards raises."""
        with self._lock:
            self._closed = True
            writer, self._writer = self._writer, None
        if writer is not None:
            try:
                with writer.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s)", (self._lock_id,))
            except psycopg2.Error:
                pass  # the lock ends with the connection anyway
            finally:
                writer.close()

    def remove(self) -> None:
        """Delete this checkpoint's rows (after the partition materialized), waiting for a writer elsewhere to
        finish. Idempotent."""
        self.close()
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(%s)", (self._lock_id,))
                cur.execute(
                    "DELETE FROM chunkwise_checkpoints WHERE dataset_id = %s AND partition_key = %s AND stage = %s",
                    self._identity,
                )
                cur.execute("SELECT pg_advisory_unlock(%s)", (self._lock_id,))
        except psycopg2.Error as error:
            raise self._failed("remove", error) from None
        finally:
            conn.close()

    # ---- plumbing ------------------------------------------------------------------------------------

    def _open_writer(self) -> None:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET synchronous_commit = off")
                cur.execute("SELECT pg_try_advisory_lock(%s)", (self._lock_id,))
                (locked,) = cur.fetchone()
        except psycopg2.Error as error:
            conn.close()
            raise self._failed("lock", error) from None
        if not locked:
            conn.close()
            raise CheckpointInUse(
                f"checkpoint {self.path} is being written by another process right now (it holds the "
                "checkpoint's lock); wait for that run to end, or find it in the Dagster UI"
            )
        self._writer = conn

    def _connect(self) -> Any:
        conn = connect(self.url, f"checkpoint {self.dataset_id}/{self.partition_key}/{self.stage}")
        conn.autocommit = True
        with _schema_lock:
            if self.url not in _schema_ready:
                try:
                    with (
                        conn.cursor() as cur
                    ):  # one creator at a time: concurrent CREATE ... IF NOT EXISTS race
                        cur.execute("BEGIN")
                        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
                        cur.execute(_SCHEMA)
                        cur.execute("COMMIT")
                except psycopg2.Error as error:
                    conn.close()
                    raise self._failed("create its table", error) from None
                _schema_ready.add(self.url)
        return conn

    def _failed(self, what: str, error: BaseException) -> CheckpointError:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return CheckpointError(
            f"checkpoint {self.path}: could not {what} ({redact(text)}); the state database "
            f"({STATE_URL_ENV}) failed: check it is up, then re-run the chunk (what was recorded is kept)"
        )
