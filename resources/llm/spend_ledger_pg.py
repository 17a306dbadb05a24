"""The spend ledger and the job halts in PostgreSQL: the shared backend of resources/llm/spend_ledger.py (issue #14).

With several machines, each SQLite ledger saw only its own machine's requests, and a halt written on one machine
did not stop the others. `PostgresSpendLedger(url)` keeps the same two tables (`attempts`, `halts`) in the
database `CHUNKWISE_STATE_URL` names, with the same statements and logic (it is a `SpendLedger` whose storage is a
PostgreSQL connection), so every process on every machine appends to one ledger, the reports' sums cover all of
them, a batch line collected on two machines is billed once (the unique `dedupe_key`), and a halt is seen by the
next `halted()` check anywhere.

Commits. One connection per ledger object, autocommit, one statement per call: `sent` and `billed` are one
round trip each. The connection runs with `synchronous_commit = off`, as the checkpoints' writer does: once a call
returns the row is committed on the server (visible to every other process, and kept if this worker is killed),
and the server writes it to disk within `wal_writer_delay` x 3 (600 ms by default). A crash of the database
server itself (or its machine) can therefore lose the ledger rows of the last ~600 ms: a `sent` row (an attempt
in flight that no report then shows as unsettled), a `billed` row (a report under-counts that reply) or a halt
(the next job-fatal answer writes it again). The provider's bill stays the truth; budgets are not enforced from
this table (the limit/budget store is, with its own transactions). The SQLite ledger makes the same trade
(`synchronous=NORMAL`: a killed process loses nothing, a power cut may lose the last commits).

Times (`at`, `since`) are the writing machine's clock, as with SQLite; order by `seq` (the server's sequence).

Errors: an unreachable server, or a connection lost mid-run, raises `SpendLedgerUnavailableError` naming
`CHUNKWISE_STATE_URL` and never its password; the next call reconnects.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from functools import cache
from typing import Any

import psycopg2

from resources.llm.spend_ledger import SpendLedger
from resources.llm.state_store import StateStoreUnavailableError
from resources.state_url import STATE_URL_ENV, StateUrlError, connect, redact, state_url

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    attempt_id TEXT NOT NULL,
    event TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    idempotency_key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    dataset_id TEXT NOT NULL DEFAULT '',
    partition_key TEXT NOT NULL DEFAULT '',
    stage TEXT NOT NULL DEFAULT '',
    team TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    mode TEXT NOT NULL DEFAULT 'online',
    run_id TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT '',
    provider_request_id TEXT,
    dedupe_key TEXT,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    cached_input_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    cache_savings_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    worst_case_usd DOUBLE PRECISION NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS attempts_dataset ON attempts (dataset_id, event);
CREATE INDEX IF NOT EXISTS attempts_id ON attempts (attempt_id);
CREATE UNIQUE INDEX IF NOT EXISTS attempts_billed_once ON attempts (dedupe_key)
    WHERE dedupe_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS halts (
    scope TEXT PRIMARY KEY, since DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL,
    run_id TEXT NOT NULL DEFAULT '');
"""
_SCHEMA_LOCK_ID = int.from_bytes(
    hashlib.sha256(b"chunkwise spend ledger schema").digest()[:8], "big", signed=True
)
_schema_ready: set[str] = set()
_schema_lock = threading.Lock()


class SpendLedgerUnavailableError(StateStoreUnavailableError):
    """The ledger's database cannot be reached; the message names the setting and never a password. A kind of
    StateStoreUnavailableError: the ledger lives in the same shared state database as the limits and budgets."""


@cache
def _pyformat(sql: str) -> str:
    """The shared qmark SQL (spend_ledger.py) in psycopg2's `%s` style; no ledger statement holds a literal ? or %."""
    return sql.replace("?", "%s")


class PostgresSpendLedger(SpendLedger):
    """The spend ledger and the halts in PostgreSQL, shared by every machine with the same `url` (module
    docstring). Same interface and semantics as SpendLedger; thread-safe (one connection behind a lock)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._conn = self._connect()

    def __repr__(self) -> str:
        return f"PostgresSpendLedger({redact(self.url)})"

    @property
    def path(self) -> str:
        """A readable, password-free name for messages (SpendLedger's is the SQLite file)."""
        return f"{redact(self.url)}#attempts"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- storage ---------------------------------------------------------------------------------------------
    def _write(self, sql: str, params: tuple) -> int:
        with self._lock, self._cursor() as cur:
            cur.execute(_pyformat(sql), params)
            return cur.rowcount

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock, self._cursor() as cur:
            cur.execute(_pyformat(sql), params)
            return cur.fetchall()

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A cursor on a live connection (call with `_lock` held). A lost connection (the server restarted, the
        network broke) fails this call with SpendLedgerUnavailableError and is replaced at the next one; other
        database errors (a bug in a statement) pass through as they are."""
        if self._conn.closed:
            self._conn = self._connect()
        try:
            with self._conn.cursor() as cur:
                yield cur
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
            raise self._failed("write or read", error) from None

    def _connect(self) -> Any:
        try:
            conn = connect(self.url, "the spend ledger")
        except StateUrlError as error:
            raise SpendLedgerUnavailableError(str(error)) from None
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SET synchronous_commit = off")  # module docstring: what a server crash can lose
                with _schema_lock:
                    if self.url not in _schema_ready:
                        # One creator at a time: concurrent CREATE ... IF NOT EXISTS race on the catalog.
                        cur.execute("BEGIN")
                        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
                        cur.execute(_SCHEMA)
                        cur.execute("COMMIT")
                        _schema_ready.add(self.url)
        except psycopg2.Error as error:
            conn.close()
            raise self._failed("create its tables", error) from None
        return conn

    def _failed(self, what: str, error: BaseException) -> SpendLedgerUnavailableError:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return SpendLedgerUnavailableError(
            f"spend ledger {redact(self.url)}: could not {what} ({redact(text)}); the state database "
            f"({STATE_URL_ENV}) failed: check it is up, then re-run the chunk"
        )


def open_spend_ledger(path: str | os.PathLike) -> SpendLedger:
    """The spend ledger `CHUNKWISE_STATE_URL` selects: unset or empty, the SQLite file at `path` (this machine's);
    a `postgresql://` URL, the ledger every machine with the same URL shares. Raises SpendLedgerUnavailableError
    when the URL is not a PostgreSQL URL or the server cannot be reached."""
    try:
        url = state_url()
    except StateUrlError as error:
        raise SpendLedgerUnavailableError(str(error)) from None
    return SpendLedger(path) if url is None else PostgresSpendLedger(url)
