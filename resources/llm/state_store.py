"""The shared state behind rate limits and budgets: token buckets, the AIMD factor, retry-after blocks, spend
and in-flight reservations. Every process that uses the same store shares it, which is what makes four chunk
processes split one provider limit and one budget instead of each owning it.

`LimitStateStore` is the interface; `SharedStateStore` its logic, written once; `SQLiteStateStore` the local
backend (one file per machine, WAL mode, every operation one BEGIN IMMEDIATE transaction) and
`PostgresStateStore` (resources/llm/postgres_state_store.py) the backend shared across machines.

`open_state_store` picks one by the environment variable `CHUNKWISE_STATE_URL`: unset or empty, the SQLite file
(`make demo` and a single machine); a `postgresql://user:password@host:port/db` URL, that database, shared by
every process and machine that sets the same URL.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from resources.local_sqlite import open_shared_sqlite, pid_alive
from resources.state_url import (
    STATE_URL_ENV as STATE_URL_ENV,  # re-exported: the tests name the setting through it
)
from resources.state_url import StateUrlError, state_url

# Bucket kinds. OpenAI limits requests and tokens; Anthropic requests, input tokens and output tokens.

# Our bucket holds a bit less than the provider's so that jitter between our admission and the provider's
# (the request takes a few ms to arrive, in varying order) never overdraws the provider's bucket.
CAPACITY_SAFETY = 0.75
AIMD_DECREASE = 0.7  # on a 429, the allowed rate is multiplied by this...
AIMD_FLOOR = 0.2  # ...but never below this fraction of the limit
AIMD_INCREASE_PER_S = 0.05  # and grows back by this fraction of the limit per second
AIMD_MIN_GAP_S = 1.0  # one decrease per burst of 429s, not one per in-flight request
RECLAIM_EVERY_S = 5.0  # how often a process looks for dead holders' reservations and slots
SLOT_WAIT_S = (
    0.05  # a request waiting for one of a server's slots re-asks this often (a release wakes it sooner)
)


@dataclass(frozen=True)
class LimitSpec:
    """The limit one provider+model shares. `rates_per_s`: configured refill rates by kind (units per second);
    `burst_s`: bucket capacity in seconds of rate until the provider's headers state the real limit.
    `slots`: requests in flight at once at one server (`slots_key`), over every process sharing the store: how a
    local server without rate-limit headers is paced (its parallel slots); None = no such limit."""

    limit_key: str
    rates_per_s: dict[str, float]
    burst_s: float = 1.0
    slots: int | None = None
    slots_key: str = ""


@dataclass(frozen=True)
class BudgetNeed:
    """A worst-case reservation against every scope in `scopes` (e.g. "run:abc", "dataset:x", "day:2026-11-27")."""

    scopes: tuple[str, ...]
    usd: float
    tokens: int


@dataclass(frozen=True)
class Permit:
    """What one request needs before it may be sent: bucket amounts by kind and a budget reservation."""

    amounts: dict[str, float]
    budget: BudgetNeed | None = None


@dataclass(frozen=True)
class Grant:
    reservation_id: int | None
    level_after: dict[str, float]  # shared bucket levels right after this request's debit
    slot_id: int | None = None  # the server slot this request holds until it is settled


@dataclass(frozen=True)
class HeaderLimit:
    """One kind's rate-limit headers from a response: the provider's bucket capacity and what remains."""

    limit: float
    remaining: float | None


@dataclass
class Settlement:
    """What happened to a granted request. `bucket_delta`: actual minus reserved units by kind (negative refunds);
    `usd`/`tokens`: what to record as spent against the reservation (None: nothing was billed)."""

    reservation_id: int | None
    usd: float = 0.0
    tokens: int = 0
    bucket_delta: dict[str, float] = field(default_factory=dict)
    headers: dict[str, HeaderLimit] = field(default_factory=dict)
    level_after: dict[str, float] = field(default_factory=dict)
    request_amounts: dict[str, float] = field(default_factory=dict)
    rate_limited: bool = False
    retry_after_s: float | None = None
    slot_id: int | None = None


@dataclass(frozen=True)
class BudgetCap:
    usd: float | None
    tokens: int | None


@dataclass
class TransactResult:
    grants: list[Grant]
    wait_s: float | None = None  # the next permit may be retried after this many seconds
    exhausted: str | None = None  # the next permit can never fit: which cap, and by how much


class LimitStateStore(Protocol):
    def transact(
        self,
        spec: LimitSpec | None,
        settlements: list[Settlement],
        permits: list[Permit],
        caps: dict[str, BudgetCap],
    ) -> TransactResult:
        """Atomically: apply settlements, then grant the longest prefix of `permits` that fits every bucket
        and every budget cap. Budget caps apply to the scopes named in the permits."""
        ...

    def spend(self, scope: str) -> tuple[float, float, int]:
        """(spent_usd, reserved_usd, spent_tokens) for a scope."""
        ...

    def reclaimed(self) -> list[tuple[int, str, float, int]]:
        """Reservations charged after their process died: (id, scopes json, usd, pid)."""
        ...

    def stated_limits(self, limit_key: str) -> dict[str, float]:
        """Per-minute limits by kind the provider stated in its rate-limit headers for `limit_key`."""
        ...

    def bucket_levels(self, limit_key: str) -> dict[str, tuple[float, float, float]]:
        """kind -> (rate per second, capacity, level now) of `limit_key`'s buckets."""
        ...

    def close(self) -> None: ...


class StateStoreUnavailableError(RuntimeError):
    """The shared store cannot be opened or reached; the message names the setting and never a password."""


def open_state_store(path: str | os.PathLike, *, must_exist: bool = False) -> LimitStateStore | None:
    """The shared limit/budget store `CHUNKWISE_STATE_URL` selects: unset or empty, the SQLite file at `path`
    (None when `must_exist` and the file is not there: a read that should not create it); a `postgresql://` URL,
    the Postgres store every process and machine with the same URL shares. Raises StateStoreUnavailableError when
    the URL is not a Postgres URL or the server cannot be reached."""
    try:
        url = state_url()
    except StateUrlError as error:
        raise StateStoreUnavailableError(str(error)) from None
    if url is None:
        if must_exist and not Path(path).exists():
            return None
        return SQLiteStateStore(path)
    from resources.llm.postgres_state_store import PostgresStateStore

    return PostgresStateStore(url)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    limit_key TEXT NOT NULL, kind TEXT NOT NULL,
    rate_per_s REAL NOT NULL, capacity REAL NOT NULL, header_limit REAL,
    level REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (limit_key, kind));
CREATE TABLE IF NOT EXISTS limit_state (
    limit_key TEXT PRIMARY KEY, factor REAL NOT NULL, factor_at REAL NOT NULL,
    last_decrease_at REAL NOT NULL, blocked_until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS spend (
    scope TEXT PRIMARY KEY, spent_usd REAL NOT NULL DEFAULT 0, reserved_usd REAL NOT NULL DEFAULT 0,
    spent_tokens INTEGER NOT NULL DEFAULT 0, reserved_tokens INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, scopes TEXT NOT NULL, usd REAL NOT NULL, tokens INTEGER NOT NULL,
    pid INTEGER NOT NULL, host TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reclaimed (
    id INTEGER PRIMARY KEY, scopes TEXT NOT NULL, usd REAL NOT NULL, pid INTEGER NOT NULL, reclaimed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS slots (
    id INTEGER PRIMARY KEY AUTOINCREMENT, slots_key TEXT NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL,
    created_at REAL NOT NULL);
"""

# Dead holders found by a reclaim pass: reservations (id, scopes json, usd, tokens, pid) and server slot ids.
DeadHoldings = tuple[list[tuple[int, str, float, int, int]], list[int]]


class SharedStateStore:
    """The store's logic, written once: token buckets, AIMD, budgets, reservations, slots and reclaim over a
    DB-API cursor, with the SQL in a dialect SQLite and PostgreSQL both run (`?` placeholders; `_sql` adapts
    them). A backend supplies the connection and transaction (`_transaction`), the serialization of concurrent
    transactions (`_lock`), the clock (`_now`) and who is dead (`_dead_holdings`). Thread-safe: one operation at
    a time per store object.

    A crashed process's reservations are reclaimed (by any process's next transaction) once its holder is known
    dead: they are charged as spent at their worst case, because the provider may have billed the requests that
    were in flight. `reservation_ttl_s` bounds how long even a live holder's reservation lives."""

    reservation_ttl_s: float
    _reclaim_every_s: float = RECLAIM_EVERY_S

    def __init__(self, *, reservation_ttl_s: float, host: str | None = None) -> None:
        self.reservation_ttl_s = reservation_ttl_s
        self._host = host or socket.gethostname()
        self._pid = os.getpid()
        self._last_reclaim = -math.inf
        self._op_lock = threading.Lock()

    # -- the backend's part ---------------------------------------------------------------------------------
    def _transaction(self, read_only: bool = False) -> AbstractContextManager[Any]:
        """A cursor inside one transaction, committed on exit (rolled back on an exception); `read_only` for
        reads that need not hold any lock."""
        raise NotImplementedError

    def _lock(
        self,
        cur: Any,
        spec: LimitSpec | None,
        settlements: list[Settlement],
        permits: list[Permit],
        dead: DeadHoldings,
    ) -> None:
        """Serialize this transaction against every other that touches the same limit, slots or budget scopes."""
        raise NotImplementedError

    def _now(self, cur: Any) -> float:
        """Seconds since the epoch on the clock every process sharing the store agrees on."""
        raise NotImplementedError

    def _dead_holdings(self, cur: Any) -> DeadHoldings:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql

    def close(self) -> None:
        raise NotImplementedError

    # -- SQL helpers ----------------------------------------------------------------------------------------
    def _rows(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cur.execute(self._sql(sql), tuple(params))
        return list(cur.fetchall())

    def _row(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        cur.execute(self._sql(sql), tuple(params))
        return cur.fetchone()

    def _run(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> None:
        cur.execute(self._sql(sql), tuple(params))

    # -- the one atomic operation -------------------------------------------------------------------------
    def transact(
        self,
        spec: LimitSpec | None,
        settlements: list[Settlement],
        permits: list[Permit],
        caps: dict[str, BudgetCap],
    ) -> TransactResult:
        with self._op_lock, self._transaction() as cur:
            reclaim = time.monotonic() - self._last_reclaim > self._reclaim_every_s
            dead: DeadHoldings = self._dead_holdings(cur) if reclaim else ([], [])
            self._lock(cur, spec, settlements, permits, dead)
            now = self._now(cur)  # after the lock: every holder's `now` is later than the previous holder's
            self._release_dead(cur, dead, now)
            buckets: dict[str, list[float]] = {}
            state: list[float] | None = None
            if spec is not None:
                buckets, state = self._load_limits(cur, spec, now)
            for s in settlements:
                self._settle(cur, s, buckets, state, now)
            result = self._grant(cur, spec, buckets, state, permits, caps, now)
            if spec is not None:
                self._store_limits(cur, spec, buckets, state, now)
        if reclaim:
            self._last_reclaim = time.monotonic()
        return result

    def spend(self, scope: str) -> tuple[float, float, int]:
        with self._op_lock, self._transaction(read_only=True) as cur:
            row = self._row(
                cur, "SELECT spent_usd, reserved_usd, spent_tokens FROM spend WHERE scope = ?", (scope,)
            )
        return (row[0], row[1], row[2]) if row else (0.0, 0.0, 0)

    def reclaimed(self) -> list[tuple[int, str, float, int]]:
        """Reservations charged after their process died: (id, scopes json, usd, pid)."""
        with self._op_lock, self._transaction(read_only=True) as cur:
            return self._rows(cur, "SELECT id, scopes, usd, pid FROM reclaimed ORDER BY id")

    def stated_limits(self, limit_key: str) -> dict[str, float]:
        """Per-minute limits by kind ("requests", "tokens", ...) that the provider stated in its rate-limit
        headers, as recorded for `limit_key`; {} when none were (buckets exist only for configured limits)."""
        with self._op_lock, self._transaction(read_only=True) as cur:
            rows = self._rows(
                cur,
                "SELECT kind, header_limit FROM buckets WHERE limit_key = ? AND header_limit IS NOT NULL",
                (limit_key,),
            )
        return {kind: float(limit) for kind, limit in rows}

    def bucket_levels(self, limit_key: str) -> dict[str, tuple[float, float, float]]:
        """kind -> (rate per second, capacity, level now) of `limit_key`'s buckets, refilled to now as the next
        admission would see them (at the current AIMD factor); {} when the store has none."""
        with self._op_lock, self._transaction(read_only=True) as cur:
            now = self._now(cur)
            row = self._row(
                cur, "SELECT factor, factor_at FROM limit_state WHERE limit_key = ?", (limit_key,)
            )
            rows = self._rows(
                cur,
                "SELECT kind, rate_per_s, capacity, level, updated_at FROM buckets WHERE limit_key = ?",
                (limit_key,),
            )
        factor = min(1.0, row[0] + AIMD_INCREASE_PER_S * max(0.0, now - row[1])) if row else 1.0
        return {
            kind: (rate, capacity, min(capacity, level + rate * factor * max(0.0, now - updated_at)))
            for kind, rate, capacity, level, updated_at in rows
        }

    # -- rate-limit buckets -------------------------------------------------------------------------------
    def _load_limits(
        self, cur: Any, spec: LimitSpec, now: float
    ) -> tuple[dict[str, list[float]], list[float]]:
        row = self._row(
            cur,
            "SELECT factor, factor_at, last_decrease_at, blocked_until FROM limit_state WHERE limit_key = ?",
            (spec.limit_key,),
        )
        state = list(row) if row else [1.0, now, 0.0, 0.0]
        # Additive increase back towards the full limit.
        state[0] = min(1.0, state[0] + AIMD_INCREASE_PER_S * max(0.0, now - state[1]))
        state[1] = now
        buckets: dict[str, list[float]] = {}
        for kind, rate, capacity, header_limit, level, updated_at in self._rows(
            cur,
            "SELECT kind, rate_per_s, capacity, header_limit, level, updated_at FROM buckets WHERE limit_key = ?",
            (spec.limit_key,),
        ):
            buckets[kind] = [rate, capacity, header_limit, level, updated_at]
        for kind, rate in spec.rates_per_s.items():
            b = buckets.get(kind)
            if b is None:
                capacity = self._capacity(rate, None, spec.burst_s)
                buckets[kind] = [rate, capacity, None, capacity, now]
            else:
                b[0] = rate
                b[1] = self._capacity(rate, b[2], spec.burst_s)
        for b in buckets.values():
            rate, capacity, _, level, updated_at = b
            b[3] = min(capacity, level + rate * state[0] * max(0.0, now - updated_at))
            b[4] = now
        return buckets, state

    @staticmethod
    def _capacity(rate: float, header_limit: float | None, burst_s: float) -> float:
        if header_limit is None:
            return rate * burst_s * CAPACITY_SAFETY
        # The provider states its bucket size; never more than a minute of our own configured rate.
        return min(header_limit, rate * 60.0) * CAPACITY_SAFETY

    def _store_limits(
        self, cur: Any, spec: LimitSpec, buckets: dict[str, list[float]], state: list[float], now: float
    ) -> None:
        self._run(
            cur,
            "INSERT INTO limit_state (limit_key, factor, factor_at, last_decrease_at, blocked_until) "
            "VALUES (?,?,?,?,?) ON CONFLICT (limit_key) DO UPDATE SET factor = excluded.factor, "
            "factor_at = excluded.factor_at, last_decrease_at = excluded.last_decrease_at, "
            "blocked_until = excluded.blocked_until",
            (spec.limit_key, *state),
        )
        cur.executemany(
            self._sql(
                "INSERT INTO buckets (limit_key, kind, rate_per_s, capacity, header_limit, level, updated_at) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT (limit_key, kind) DO UPDATE SET rate_per_s = excluded.rate_per_s, "
                "capacity = excluded.capacity, header_limit = excluded.header_limit, level = excluded.level, "
                "updated_at = excluded.updated_at"
            ),
            [(spec.limit_key, kind, *b) for kind, b in buckets.items()],
        )

    def _settle(
        self, cur: Any, s: Settlement, buckets: dict[str, list[float]], state: list[float] | None, now: float
    ) -> None:
        if s.reservation_id is not None:
            self._settle_budget(cur, s)
        if s.slot_id is not None:
            self._run(cur, "DELETE FROM slots WHERE id = ?", (s.slot_id,))
        if state is None:
            return
        for kind, delta in s.bucket_delta.items():
            if kind in buckets:
                buckets[kind][3] -= delta
        for kind, hdr in s.headers.items():
            b = buckets.get(kind)
            if b is None:
                # A limit the provider states but the config does not: providers state limits per minute.
                rate = hdr.limit / 60.0
                b = buckets[kind] = [
                    rate,
                    hdr.limit * CAPACITY_SAFETY,
                    hdr.limit,
                    hdr.limit * CAPACITY_SAFETY,
                    now,
                ]
            b[2] = hdr.limit
            b[1] = min(hdr.limit, b[0] * 60.0) * CAPACITY_SAFETY
            b[3] = min(b[3], b[1])
            if hdr.remaining is not None and kind in s.level_after:
                # The provider's count at this request's admission vs. ours at the same moment: if it holds
                # clearly less, someone we do not see is using the limit (or we undercount): follow the provider.
                tolerance = (
                    0.05 * hdr.limit
                    + s.request_amounts.get(kind, 0.0)
                    + (1000.0 if kind != "requests" else 1.0)
                )
                gap = s.level_after[kind] - hdr.remaining
                if gap > tolerance:
                    b[3] -= gap - tolerance
        if s.rate_limited:
            for b in buckets.values():
                b[3] = min(b[3], 0.0)
            if s.retry_after_s:
                state[3] = max(state[3], now + s.retry_after_s)
            if now - state[2] >= AIMD_MIN_GAP_S:
                state[0] = max(AIMD_FLOOR, state[0] * AIMD_DECREASE)
                state[2] = now

    def _grant(
        self,
        cur: Any,
        spec: LimitSpec | None,
        buckets: dict[str, list[float]],
        state: list[float] | None,
        permits: list[Permit],
        caps: dict[str, BudgetCap],
        now: float,
    ) -> TransactResult:
        grants: list[Grant] = []
        if not permits:
            return TransactResult(grants)
        if state is not None and state[3] > now:
            return TransactResult(grants, wait_s=state[3] - now)
        spend_cache: dict[str, list[float]] = {}
        slots_taken: int | None = None
        if spec is not None and spec.slots is not None:
            counted = self._row(cur, "SELECT COUNT(*) FROM slots WHERE slots_key = ?", (spec.slots_key,))
            slots_taken = int(counted[0]) if counted else 0
        for permit in permits:
            # Rate limits first: a permit that must wait does not hold budget while it waits.
            wait = 0.0
            for kind, amount in permit.amounts.items():
                b = buckets.get(kind)
                if b is None or amount <= 0:
                    continue
                if b[3] < amount:
                    rate = b[0] * (state[0] if state else 1.0)
                    wait = max(wait, (amount - b[3]) / rate if rate > 0 else 1.0)
            if wait > 0:
                return TransactResult(grants, wait_s=wait)
            if spec is not None and spec.slots is not None and (slots_taken or 0) >= spec.slots:
                return TransactResult(grants, wait_s=SLOT_WAIT_S)
            reservation_id = None
            if permit.budget is not None:
                verdict = self._check_budget(cur, permit.budget, caps, spend_cache)
                if verdict == "wait":
                    return TransactResult(grants, wait_s=0.05)
                if verdict is not None:
                    return TransactResult(grants, exhausted=verdict)
                reservation_id = self._reserve(cur, permit.budget, spend_cache, now)
            level_after: dict[str, float] = {}
            for kind, amount in permit.amounts.items():
                b = buckets.get(kind)
                if b is not None:
                    b[3] -= amount
                    level_after[kind] = b[3]
            slot_id = None
            if spec is not None and spec.slots is not None and slots_taken is not None:
                inserted = self._row(
                    cur,
                    "INSERT INTO slots (slots_key, pid, host, created_at) VALUES (?,?,?,?) RETURNING id",
                    (spec.slots_key, self._pid, self._host, now),
                )
                assert inserted is not None
                slot_id = int(inserted[0])
                slots_taken += 1
            grants.append(Grant(reservation_id, level_after, slot_id))
        return TransactResult(grants)

    # -- budgets --------------------------------------------------------------------------------------------
    def _spend_row(self, cur: Any, scope: str, cache: dict[str, list[float]]) -> list[float]:
        row = cache.get(scope)
        if row is None:
            got = self._row(
                cur,
                "SELECT spent_usd, reserved_usd, spent_tokens, reserved_tokens FROM spend WHERE scope = ?",
                (scope,),
            )
            row = cache[scope] = list(got) if got else [0.0, 0.0, 0, 0]
        return row

    def _check_budget(
        self, cur: Any, need: BudgetNeed, caps: dict[str, BudgetCap], cache: dict[str, list[float]]
    ) -> str | None:
        """None if the reservation fits; "wait" if it fits once in-flight reservations settle; else why not."""
        must_wait = False
        for scope in need.scopes:
            cap = caps.get(scope)
            if cap is None:
                continue
            spent_usd, reserved_usd, spent_tokens, reserved_tokens = self._spend_row(cur, scope, cache)
            if cap.usd is not None:
                if spent_usd + need.usd > cap.usd:
                    return f"usd|{scope}|{spent_usd:.6f}|{cap.usd:.6f}|{need.usd:.6f}"
                if spent_usd + reserved_usd + need.usd > cap.usd:
                    must_wait = True
            if cap.tokens is not None:
                if spent_tokens + need.tokens > cap.tokens:
                    return f"tokens|{scope}|{spent_tokens}|{cap.tokens}|{need.tokens}"
                if spent_tokens + reserved_tokens + need.tokens > cap.tokens:
                    must_wait = True
        return "wait" if must_wait else None

    def _reserve(self, cur: Any, need: BudgetNeed, cache: dict[str, list[float]], now: float) -> int:
        inserted = self._row(
            cur,
            "INSERT INTO reservations (scopes, usd, tokens, pid, host, created_at) VALUES (?,?,?,?,?,?) RETURNING id",
            (json.dumps(need.scopes), need.usd, need.tokens, self._pid, self._host, now),
        )
        assert inserted is not None
        for scope in need.scopes:
            row = self._spend_row(cur, scope, cache)
            row[1] += need.usd
            row[3] += need.tokens
            self._run(
                cur,
                "INSERT INTO spend (scope, reserved_usd, reserved_tokens) VALUES (?,?,?) ON CONFLICT (scope) DO UPDATE "
                "SET reserved_usd = spend.reserved_usd + excluded.reserved_usd, "
                "reserved_tokens = spend.reserved_tokens + excluded.reserved_tokens",
                (scope, need.usd, need.tokens),
            )
        return int(inserted[0])

    def _settle_budget(self, cur: Any, s: Settlement) -> bool:
        """Charge what `s` says and drop its reservation; False when the reservation was no longer there."""
        row = self._row(
            cur, "DELETE FROM reservations WHERE id = ? RETURNING scopes, usd, tokens", (s.reservation_id,)
        )
        if row is None:
            return False  # already reclaimed (its holder was judged dead); it was charged then
        scopes, usd, tokens = json.loads(row[0]), row[1], row[2]
        for scope in scopes:
            self._run(
                cur,
                "UPDATE spend SET reserved_usd = CASE WHEN reserved_usd > ? THEN reserved_usd - ? ELSE 0 END, "
                "reserved_tokens = CASE WHEN reserved_tokens > ? THEN reserved_tokens - ? ELSE 0 END, "
                "spent_usd = spent_usd + ?, spent_tokens = spent_tokens + ? WHERE scope = ?",
                (usd, usd, tokens, tokens, s.usd, s.tokens, scope),
            )
        return True

    # -- dead holders ---------------------------------------------------------------------------------------
    def _holder_dead(self, pid: int, host: str) -> bool:
        """On this machine a pid probe tells; another machine's holders are judged by the backend's lease."""
        return host == self._host and pid != self._pid and not pid_alive(pid)

    def _release_dead(self, cur: Any, dead: DeadHoldings, now: float) -> None:
        reservations, slot_ids = dead
        for sid in slot_ids:
            self._run(cur, "DELETE FROM slots WHERE id = ?", (sid,))
        for rid, scopes, usd, tokens, pid in reservations:
            if not self._settle_budget(cur, Settlement(reservation_id=rid, usd=usd, tokens=tokens)):
                continue  # settled or reclaimed by another transaction meanwhile
            self._run(
                cur,
                "INSERT INTO reclaimed (id, scopes, usd, pid, reclaimed_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT (id) DO NOTHING",
                (rid, scopes, usd, pid, now),
            )


class SQLiteStateStore(SharedStateStore):
    """Shared SQLite store (one file per machine by default). Safe across threads and processes: every
    transaction is one BEGIN IMMEDIATE (the whole file is the lock) and times are this machine's clock.

    A crashed process's reservations are reclaimed when its pid is gone (or after `reservation_ttl_s`)."""

    def __init__(self, path: str | os.PathLike, *, reservation_ttl_s: float = 3600.0) -> None:
        super().__init__(reservation_ttl_s=reservation_ttl_s)
        self.path = Path(path)
        self._conn = open_shared_sqlite(self.path, _SCHEMA)

    def close(self) -> None:
        self._conn.close()

    @contextlib.contextmanager
    def _transaction(self, read_only: bool = False) -> Iterator[sqlite3.Cursor]:
        cur = self._conn.cursor()
        cur.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def _lock(
        self,
        cur: Any,
        spec: LimitSpec | None,
        settlements: list[Settlement],
        permits: list[Permit],
        dead: DeadHoldings,
    ) -> None:
        return None  # BEGIN IMMEDIATE already holds the file's write lock

    def _now(self, cur: Any) -> float:
        return time.time()

    def _dead_holdings(self, cur: Any) -> DeadHoldings:
        now = time.time()
        reservations = [
            (rid, scopes, usd, tokens, pid)
            for rid, scopes, usd, tokens, pid, host, created_at in self._rows(
                cur, "SELECT id, scopes, usd, tokens, pid, host, created_at FROM reservations"
            )
            if self._holder_dead(pid, host) or now - created_at > self.reservation_ttl_s
        ]
        # A dead process's server slots are free again (and a slot older than the reservation ttl is stale).
        slot_ids = [
            sid
            for sid, pid, host, created_at in self._rows(cur, "SELECT id, pid, host, created_at FROM slots")
            if self._holder_dead(pid, host) or now - created_at > self.reservation_ttl_s
        ]
        return reservations, slot_ids
