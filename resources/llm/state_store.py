"""The shared state behind rate limits and budgets: token buckets, the AIMD factor, retry-after blocks, spend
and in-flight reservations. Every process on the machine that uses the same file shares it, which is what makes
four chunk processes split one provider limit and one budget instead of each owning it.

`LimitStateStore` is the interface; `SQLiteStateStore` the local implementation (WAL mode, every operation one
BEGIN IMMEDIATE transaction). A Redis or Postgres store implements the same one-call protocol.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from resources.local_sqlite import open_shared_sqlite, pid_alive

# Bucket kinds. OpenAI limits requests and tokens; Anthropic requests, input tokens and output tokens.

# Our bucket holds a bit less than the provider's so that jitter between our admission and the provider's
# (the request takes a few ms to arrive, in varying order) never overdraws the provider's bucket.
CAPACITY_SAFETY = 0.75
AIMD_DECREASE = 0.7  # on a 429, the allowed rate is multiplied by this...
AIMD_FLOOR = 0.2  # ...but never below this fraction of the limit
AIMD_INCREASE_PER_S = 0.05  # and grows back by this fraction of the limit per second
AIMD_MIN_GAP_S = 1.0  # one decrease per burst of 429s, not one per in-flight request
RECLAIM_EVERY_S = 5.0
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


class SQLiteStateStore:
    """Shared SQLite store (one file per machine by default). Safe across threads and processes.

    A crashed process's reservations are reclaimed when its pid is gone (or after `reservation_ttl_s`): they are
    charged as spent at their worst case, because the provider may have billed the requests that were in flight.
    """

    def __init__(self, path: str | os.PathLike, *, reservation_ttl_s: float = 3600.0) -> None:
        self.path = Path(path)
        self.reservation_ttl_s = reservation_ttl_s
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._last_reclaim = 0.0
        self._conn = open_shared_sqlite(self.path, _SCHEMA)

    def close(self) -> None:
        self._conn.close()

    # -- the one atomic operation -------------------------------------------------------------------------
    def transact(
        self,
        spec: LimitSpec | None,
        settlements: list[Settlement],
        permits: list[Permit],
        caps: dict[str, BudgetCap],
    ) -> TransactResult:
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            if now - self._last_reclaim > RECLAIM_EVERY_S:
                self._reclaim(cur, now)
                self._last_reclaim = now
            buckets: dict[str, list[float]] = {}
            state: list[float] | None = None
            if spec is not None:
                buckets, state = self._load_limits(cur, spec, now)
            for s in settlements:
                self._settle(cur, s, buckets, state, now)
            result = self._grant(cur, spec, buckets, state, permits, caps, now)
            if spec is not None:
                self._store_limits(cur, spec, buckets, state, now)
            cur.execute("COMMIT")
            return result
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def spend(self, scope: str) -> tuple[float, float, int]:
        row = self._conn.execute(
            "SELECT spent_usd, reserved_usd, spent_tokens FROM spend WHERE scope = ?", (scope,)
        ).fetchone()
        return (row[0], row[1], row[2]) if row else (0.0, 0.0, 0)

    def reclaimed(self) -> list[tuple[int, str, float, int]]:
        """Reservations charged after their process died: (id, scopes json, usd, pid)."""
        return self._conn.execute("SELECT id, scopes, usd, pid FROM reclaimed ORDER BY id").fetchall()

    def stated_limits(self, limit_key: str) -> dict[str, float]:
        """Per-minute limits by kind ("requests", "tokens", ...) that the provider stated in its rate-limit
        headers, as recorded for `limit_key`; {} when none were (buckets exist only for configured limits)."""
        rows = self._conn.execute(
            "SELECT kind, header_limit FROM buckets WHERE limit_key = ? AND header_limit IS NOT NULL",
            (limit_key,),
        ).fetchall()
        return {kind: float(limit) for kind, limit in rows}

    # -- rate-limit buckets -------------------------------------------------------------------------------
    def _load_limits(
        self, cur: sqlite3.Cursor, spec: LimitSpec, now: float
    ) -> tuple[dict[str, list[float]], list[float]]:
        row = cur.execute(
            "SELECT factor, factor_at, last_decrease_at, blocked_until FROM limit_state WHERE limit_key = ?",
            (spec.limit_key,),
        ).fetchone()
        state = list(row) if row else [1.0, now, 0.0, 0.0]
        # Additive increase back towards the full limit.
        state[0] = min(1.0, state[0] + AIMD_INCREASE_PER_S * max(0.0, now - state[1]))
        state[1] = now
        buckets: dict[str, list[float]] = {}
        for kind, rate, capacity, header_limit, level, updated_at in cur.execute(
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
        self,
        cur: sqlite3.Cursor,
        spec: LimitSpec,
        buckets: dict[str, list[float]],
        state: list[float],
        now: float,
    ) -> None:
        cur.execute(
            "INSERT OR REPLACE INTO limit_state (limit_key, factor, factor_at, last_decrease_at, blocked_until) VALUES (?,?,?,?,?)",
            (spec.limit_key, *state),
        )
        cur.executemany(
            "INSERT OR REPLACE INTO buckets (limit_key, kind, rate_per_s, capacity, header_limit, level, updated_at) VALUES (?,?,?,?,?,?,?)",
            [(spec.limit_key, kind, *b) for kind, b in buckets.items()],
        )

    def _settle(
        self,
        cur: sqlite3.Cursor,
        s: Settlement,
        buckets: dict[str, list[float]],
        state: list[float] | None,
        now: float,
    ) -> None:
        if s.reservation_id is not None:
            self._settle_budget(cur, s)
        if s.slot_id is not None:
            cur.execute("DELETE FROM slots WHERE id = ?", (s.slot_id,))
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
        cur: sqlite3.Cursor,
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
            slots_taken = cur.execute(
                "SELECT COUNT(*) FROM slots WHERE slots_key = ?", (spec.slots_key,)
            ).fetchone()[0]
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
                cur.execute(
                    "INSERT INTO slots (slots_key, pid, host, created_at) VALUES (?,?,?,?)",
                    (spec.slots_key, self._pid, self._host, now),
                )
                slot_id = cur.lastrowid
                slots_taken += 1
            grants.append(Grant(reservation_id, level_after, slot_id))
        return TransactResult(grants)

    # -- budgets --------------------------------------------------------------------------------------------
    def _spend_row(self, cur: sqlite3.Cursor, scope: str, cache: dict[str, list[float]]) -> list[float]:
        row = cache.get(scope)
        if row is None:
            got = cur.execute(
                "SELECT spent_usd, reserved_usd, spent_tokens, reserved_tokens FROM spend WHERE scope = ?",
                (scope,),
            ).fetchone()
            row = cache[scope] = list(got) if got else [0.0, 0.0, 0, 0]
        return row

    def _check_budget(
        self, cur: sqlite3.Cursor, need: BudgetNeed, caps: dict[str, BudgetCap], cache: dict[str, list[float]]
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

    def _reserve(
        self, cur: sqlite3.Cursor, need: BudgetNeed, cache: dict[str, list[float]], now: float
    ) -> int:
        cur.execute(
            "INSERT INTO reservations (scopes, usd, tokens, pid, host, created_at) VALUES (?,?,?,?,?,?)",
            (json.dumps(need.scopes), need.usd, need.tokens, self._pid, self._host, now),
        )
        rid = cur.lastrowid
        for scope in need.scopes:
            row = self._spend_row(cur, scope, cache)
            row[1] += need.usd
            row[3] += need.tokens
            cur.execute(
                "INSERT INTO spend (scope, reserved_usd, reserved_tokens) VALUES (?,?,?) ON CONFLICT(scope) DO UPDATE "
                "SET reserved_usd = reserved_usd + excluded.reserved_usd, reserved_tokens = reserved_tokens + excluded.reserved_tokens",
                (scope, need.usd, need.tokens),
            )
        assert rid is not None
        return rid

    def _settle_budget(self, cur: sqlite3.Cursor, s: Settlement) -> None:
        row = cur.execute(
            "SELECT scopes, usd, tokens FROM reservations WHERE id = ?", (s.reservation_id,)
        ).fetchone()
        if row is None:
            return  # already reclaimed (the ttl passed); it was charged then
        scopes, usd, tokens = json.loads(row[0]), row[1], row[2]
        cur.execute("DELETE FROM reservations WHERE id = ?", (s.reservation_id,))
        for scope in scopes:
            cur.execute(
                "UPDATE spend SET reserved_usd = MAX(0, reserved_usd - ?), reserved_tokens = MAX(0, reserved_tokens - ?), "
                "spent_usd = spent_usd + ?, spent_tokens = spent_tokens + ? WHERE scope = ?",
                (usd, tokens, s.usd, s.tokens, scope),
            )

    def _reclaim(self, cur: sqlite3.Cursor, now: float) -> None:
        dead: list[tuple[int, str, float, int, int]] = []
        for rid, scopes, usd, tokens, pid, host, created_at in cur.execute(
            "SELECT id, scopes, usd, tokens, pid, host, created_at FROM reservations"
        ).fetchall():
            gone = host == self._host and pid != self._pid and not pid_alive(pid)
            if gone or now - created_at > self.reservation_ttl_s:
                dead.append((rid, scopes, usd, tokens, pid))
        # A dead process's server slots are free again (and a slot older than the reservation ttl is stale).
        for sid, pid, host, created_at in cur.execute(
            "SELECT id, pid, host, created_at FROM slots"
        ).fetchall():
            gone = host == self._host and pid != self._pid and not pid_alive(pid)
            if gone or now - created_at > self.reservation_ttl_s:
                cur.execute("DELETE FROM slots WHERE id = ?", (sid,))
        for rid, scopes, usd, tokens, pid in dead:
            self._settle_budget(cur, Settlement(reservation_id=rid, usd=usd, tokens=tokens))
            cur.execute(
                "INSERT OR REPLACE INTO reclaimed (id, scopes, usd, pid, reclaimed_at) VALUES (?,?,?,?,?)",
                (rid, scopes, usd, pid, now),
            )
