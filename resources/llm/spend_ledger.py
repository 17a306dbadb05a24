"""The spend ledger: every request attempt Chunkwise sends, and what the provider billed for it, append-only.

Reports and the cost ledger are sums over this table, not over stage outputs or checkpoints, so they equal the
provider's bill after crashes, retries, budget halts, re-materializations and backfills. Each row is one event
of one attempt (`attempt_id`, a fresh uuid per HTTP request or batch line):

- `sent`: written before the request leaves (with its worst-case USD), so an attempt whose reply never came
  back (the process was killed while it was in flight) is visible as *unsettled*, with a bound on its cost;
- `billed`: a reply that carries usage (HTTP 200, valid or not), with tokens and USD, written before the
  result is used (checkpointed, validated, repaired); `outcome` says what the reply was worth: `ok`,
  `invalid` (failed its schema: repaired or dead-lettered), `refused`, `content_filter`;
- `not_billed`: an error reply (4xx/5xx): providers do not bill them;
- `lost`: a transport failure (timeout, reset) after sending: the provider may have billed it, nobody knows.

`provider_request_id` is the reply's `id` as the provider gave it (what its own logs call the request). Batch
lines are billed when their results are collected, with `dedupe_key` `batch:<batch id>:<custom id>`, which is
unique: collecting the same ended batch twice (a crash during collection) records it once.

The same SQLite file holds *halts*: a job-fatal answer (bad key, no quota, unknown model) writes one, and
every process checks it before each request, so after the first such answer only the requests already in
flight are sent, across every chunk run on the machine. A person clears it (`python -m sensors.backfill clear
<provider>`, or by running `make demo` again).

With `CHUNKWISE_STATE_URL` set, the same tables live in PostgreSQL instead (spend_ledger_pg.py,
`open_spend_ledger`), so every machine's attempts are in one ledger and a halt stops every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from resources.local_sqlite import open_shared_sqlite

SPEND_LEDGER_FILE = "spend_ledger.sqlite"

SENT, BILLED, NOT_BILLED, LOST = "sent", "billed", "not_billed", "lost"
OK, INVALID = "ok", "invalid"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    attempt_id TEXT NOT NULL,
    event TEXT NOT NULL,
    at REAL NOT NULL,
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
    input_tokens INTEGER NOT NULL DEFAULT 0,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    cache_savings_usd REAL NOT NULL DEFAULT 0,
    worst_case_usd REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS attempts_dataset ON attempts (dataset_id, event);
CREATE INDEX IF NOT EXISTS attempts_id ON attempts (attempt_id);
CREATE UNIQUE INDEX IF NOT EXISTS attempts_billed_once ON attempts (dedupe_key)
    WHERE dedupe_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS halts (
    scope TEXT PRIMARY KEY, since REAL NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL,
    run_id TEXT NOT NULL DEFAULT '');
"""

COLUMNS = [
    "seq", "attempt_id", "event", "at", "idempotency_key", "attempt", "dataset_id", "partition_key", "stage",
    "team", "provider", "model", "mode", "run_id", "outcome", "provider_request_id", "input_tokens",
    "cached_input_tokens", "cache_write_tokens", "output_tokens", "cost_usd", "cache_savings_usd",
    "worst_case_usd",
]  # fmt: skip


@dataclass(frozen=True)
class AttemptContext:
    """Who an attempt is for: the item (idempotency key), where it belongs and who is billed."""

    idempotency_key: str
    dataset_id: str = ""
    partition_key: str = ""
    stage: str = ""
    team: str = ""
    provider: str = ""
    model: str = ""
    mode: str = "online"
    run_id: str = ""


@dataclass(frozen=True)
class Billed:
    """What one reply cost. Tokens in tokens, money in USD."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cache_savings_usd: float = 0.0


@dataclass(frozen=True)
class Halt:
    scope: str
    since: float
    reason: str
    message: str
    run_id: str


def key_fingerprint(api_key: str) -> str:
    """A short, one-way name for an API key: halts tell keys apart without storing them."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


def endpoint_scope(provider: str, base_url: str, api_key: str) -> str:
    """The halt scope of a bad key or an exhausted quota: this endpoint with this key."""
    return f"{provider}|{base_url.rstrip('/')}|key:{key_fingerprint(api_key)}"


def model_scope(provider: str, base_url: str, model: str) -> str:
    """The halt scope of a configuration error (unknown model): this endpoint and model, whatever the key."""
    return f"{provider}|{base_url.rstrip('/')}|model:{model}"


_INSERT_ATTEMPT = (
    "INSERT INTO attempts (attempt_id, event, at, idempotency_key, attempt, dataset_id, partition_key, stage, "
    "team, provider, model, mode, run_id, outcome, provider_request_id, dedupe_key, input_tokens, "
    "cached_input_tokens, cache_write_tokens, output_tokens, cost_usd, cache_savings_usd, worst_case_usd) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
)  # ON CONFLICT: a dedupe_key recorded already (SQLite and PostgreSQL both speak it)


class SpendLedger:
    """The append-only spend ledger and the halts, in one SQLite file (WAL) shared by every process that
    uses the same state folder. Thread-safe. Writes return once the row is in the OS (survives kill -9).

    The ledger's statements and logic are written once here, over two storage calls (`_write`, `_read`) and
    qmark (`?`) SQL; `PostgresSpendLedger` (spend_ledger_pg.py) keeps the same tables in PostgreSQL, shared
    across machines, by replacing those two calls and the connection."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = open_shared_sqlite(self.path, _SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- storage: what a backend replaces --------------------------------------------------------------------
    def _write(self, sql: str, params: tuple) -> int:
        """Run one autocommitted statement; the number of rows it changed."""
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- writing -------------------------------------------------------------------------------------------
    @staticmethod
    def new_attempt_id() -> str:
        return uuid.uuid4().hex

    def sent(self, attempt_id: str, ctx: AttemptContext, attempt: int, worst_case_usd: float) -> None:
        """The request is about to leave: if no other event follows, it was in flight when the process died."""
        self._insert(attempt_id, SENT, ctx, attempt, worst_case_usd=worst_case_usd)

    def billed(
        self,
        attempt_id: str,
        ctx: AttemptContext,
        attempt: int,
        usage: Billed,
        outcome: str,
        provider_request_id: str | None = None,
        dedupe_key: str | None = None,
    ) -> bool:
        """The provider billed this reply. False when `dedupe_key` was recorded already (a batch line collected
        twice): the provider bills it once, so it is counted once."""
        return self._insert(
            attempt_id,
            BILLED,
            ctx,
            attempt,
            usage=usage,
            outcome=outcome,
            request_id=provider_request_id,
            dedupe_key=dedupe_key,
        )

    def not_billed(self, attempt_id: str, ctx: AttemptContext, attempt: int, outcome: str) -> None:
        self._insert(attempt_id, NOT_BILLED, ctx, attempt, outcome=outcome)

    def lost(self, attempt_id: str, ctx: AttemptContext, attempt: int, outcome: str) -> None:
        self._insert(attempt_id, LOST, ctx, attempt, outcome=outcome)

    def _insert(
        self,
        attempt_id: str,
        event: str,
        ctx: AttemptContext,
        attempt: int,
        *,
        usage: Billed | None = None,
        outcome: str = "",
        worst_case_usd: float = 0.0,
        request_id: str | None = None,
        dedupe_key: str | None = None,
    ) -> bool:
        u = usage or Billed()
        params = (
            attempt_id, event, time.time(), ctx.idempotency_key, attempt, ctx.dataset_id, ctx.partition_key,
            ctx.stage, ctx.team, ctx.provider, ctx.model, ctx.mode, ctx.run_id, outcome, request_id, dedupe_key,
            u.input_tokens, u.cached_input_tokens, u.cache_write_tokens, u.output_tokens, u.cost_usd,
            u.cache_savings_usd, worst_case_usd,
        )  # fmt: skip
        return self._write(_INSERT_ATTEMPT, params) == 1

    # -- reading -------------------------------------------------------------------------------------------
    def rows(self, dataset_id: str | None = None) -> pd.DataFrame:
        """Every event (of one dataset), oldest first, columns COLUMNS."""
        sql = f"SELECT {', '.join(COLUMNS)} FROM attempts"
        params: tuple = ()
        if dataset_id is not None:
            sql += " WHERE dataset_id = ?"
            params = (dataset_id,)
        records = self._read(sql + " ORDER BY seq", params)
        return pd.DataFrame.from_records(records, columns=COLUMNS)

    def billed_usd(self, dataset_id: str | None = None) -> float:
        sql = "SELECT COALESCE(SUM(cost_usd), 0) FROM attempts WHERE event = ?"
        params: tuple = (BILLED,)
        if dataset_id is not None:
            sql += " AND dataset_id = ?"
            params += (dataset_id,)
        return float(self._read(sql, params)[0][0])

    # -- halts ---------------------------------------------------------------------------------------------
    def halt(self, scope: str, reason: str, message: str, run_id: str = "") -> None:
        """Stop every request in `scope` until a person clears it; the first halt's message is kept."""
        self._write(
            "INSERT INTO halts (scope, since, reason, message, run_id) VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
            (scope, time.time(), reason, message, run_id),
        )

    def halted(self, scopes: tuple[str, ...]) -> Halt | None:
        """The halt on any of `scopes`, if there is one."""
        if not scopes:
            return None
        marks = ",".join("?" * len(scopes))
        rows = self._read(
            f"SELECT scope, since, reason, message, run_id FROM halts WHERE scope IN ({marks}) LIMIT 1",
            tuple(scopes),
        )
        return Halt(*rows[0]) if rows else None

    def halts(self) -> list[Halt]:
        rows = self._read("SELECT scope, since, reason, message, run_id FROM halts ORDER BY since")
        return [Halt(*row) for row in rows]

    def clear_halts(self, provider: str | None = None) -> list[Halt]:
        """Lift the halts (of one provider); returns what was lifted."""
        lifted = [h for h in self.halts() if provider is None or h.scope.split("|", 1)[0] == provider]
        for h in lifted:
            self._write("DELETE FROM halts WHERE scope = ?", (h.scope,))
        return lifted


def attempt_summary(rows: pd.DataFrame) -> dict[str, float | int]:
    """Counts and USD over a ledger frame (rows from `SpendLedger.rows`): what was billed, and the attempts
    whose outcome nobody knows (sent, then the process died or the connection broke): the provider may have
    billed them, at most `unsettled_max_usd` (their worst-case reservations)."""
    billed = rows[rows["event"] == BILLED]
    known = set(rows.loc[rows["event"].isin([BILLED, NOT_BILLED]), "attempt_id"])
    unknown = rows[(rows["event"] == SENT) & ~rows["attempt_id"].isin(known)]
    return {
        "requests_billed": len(billed),
        "billed_usd": float(billed["cost_usd"].sum()),
        "unsettled_requests": len(unknown),
        "unsettled_max_usd": float(unknown["worst_case_usd"].sum()),
    }


def halt_json(halt: Halt) -> str:
    return json.dumps({"scope": halt.scope, "reason": halt.reason, "message": halt.message})
