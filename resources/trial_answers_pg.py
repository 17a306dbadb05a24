"""Model trials' answers in PostgreSQL: the shared backend of llm_assets/trials.py's answer cache (issue #14).

A trial keeps every answer it bought keyed by who answered what (`answer_key`: the candidate or judge, the prompt
version, the sha256 of the message), so running it again with the same sample and models sends nothing. With the
embedded backend that cache is `<home>/trials/answers.sqlite`, one per machine: a trial run on another machine
paid again. With `CHUNKWISE_STATE_URL` set, `PostgresTrialAnswers` keeps the same rows in one table of the shared
database, so a trial run on any machine finds the answers bought on every other:

    chunkwise_trial_answers(key, record, created_at)   primary key (key): putting a key again replaces its record

- `record` is the JSON text the SQLite table keeps (sorted keys), read back with `json.loads` alike, so both
  backends hand the trial identical records.
- `put` is one autocommitted upsert per answer, the moment it arrives: a trial stopped mid-way (a spent budget,
  a killed process) keeps what it bought, and the next run anywhere pays only for the rest.
- `exclusive(trial)` is one run of a trial (pipeline, stage, dataset) at a time across every machine: a
  session-level advisory lock on the store's connection, waited for. Two machines launching the same trial at once
  are serialized, and the second finds the first one's answers and buys none of them again. The server releases
  the lock when the holder's connection ends (its process died: TCP keepalives end it within 40 s across a
  network, resources/state_url.py).

One connection per store object (a trial run opens one). Errors name `CHUNKWISE_STATE_URL` and never the password
(`redact`); answers stored before an error are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg2

from resources.state_url import STATE_URL_ENV, StateUrlError, connect, redact

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunkwise_trial_answers (
    key TEXT PRIMARY KEY, record TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())
"""
_SCHEMA_LOCK_ID = int.from_bytes(
    hashlib.sha256(b"chunkwise_trial_answers schema").digest()[:8], "big", signed=True
)
_schema_ready: set[str] = set()
_schema_lock = threading.Lock()


class TrialAnswersUnavailableError(StateUrlError):
    """The shared trial answers could not be read or written; names the setting, never the password."""


class PostgresTrialAnswers:
    """Every answer a model trial bought, in the shared database `url` names (module docstring). Same use as
    llm_assets/trials.py's `TrialAnswers`: `get`, `put`, `exclusive`, `close`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()  # the runner may hand answers over from another thread
        try:
            self._conn = connect(url, "model trial answers")
        except StateUrlError as error:
            raise TrialAnswersUnavailableError(str(error)) from None
        self._conn.autocommit = True
        try:
            self._ensure_schema()
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresTrialAnswers({redact(self.url)})"

    def get(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Key -> record of the keys that have an answer."""
        rows = self._execute(
            "read", "SELECT key, record FROM chunkwise_trial_answers WHERE key = ANY(%s)", (list(keys),)
        )
        return {key: json.loads(record) for key, record in rows}

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Store one answer (committed when this returns); a key stored again is replaced."""
        self._execute(
            "store an answer",
            "INSERT INTO chunkwise_trial_answers (key, record) VALUES (%s, %s) ON CONFLICT (key) "
            "DO UPDATE SET record = EXCLUDED.record, created_at = clock_timestamp()",
            (key, json.dumps(record, sort_keys=True)),
        )

    @contextlib.contextmanager
    def exclusive(self, trial: str) -> Iterator[None]:
        """One run of `trial` (e.g. `pipeline/stage/dataset_id`) at a time on every machine sharing the database;
        a second run waits here until the first ends."""
        digest = hashlib.sha256(f"chunkwise trial\x1f{trial}".encode()).digest()
        lock_id = int.from_bytes(digest[:8], "big", signed=True)
        self._execute("wait for the trial's lock", "SELECT pg_advisory_lock(%s)", (lock_id,))
        try:
            yield
        finally:
            if not self._conn.closed:
                # A lost connection has released the lock already; the error that lost it is on its way up.
                self._execute("release the trial's lock", "SELECT pg_advisory_unlock(%s)", (lock_id,))

    def close(self) -> None:
        """Close the connection (and so release any lock it still holds). Idempotent."""
        with self._lock:
            self._conn.close()

    def _execute(self, what: str, sql: str, params: tuple | None = None) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                with self._conn.cursor() as cur:
                    cur.execute(sql, params)
                    return list(cur.fetchall()) if cur.description else []
            except psycopg2.Error as error:
                raise self._failed(what, error) from None

    def _ensure_schema(self) -> None:
        with _schema_lock:
            if self.url in _schema_ready:
                return
            # One creator at a time: concurrent CREATE TABLE IF NOT EXISTS can still collide.
            self._execute("create its table", "BEGIN")
            self._execute("create its table", "SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
            self._execute("create its table", _SCHEMA)
            self._execute("create its table", "COMMIT")
            _schema_ready.add(self.url)

    def _failed(self, what: str, error: BaseException) -> TrialAnswersUnavailableError:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return TrialAnswersUnavailableError(
            f"model trial answers in {redact(self.url)}: could not {what} ({redact(text)}); the state database "
            f"({STATE_URL_ENV}) failed: check it is up, then run the trial again (answers already stored are kept)"
        )
