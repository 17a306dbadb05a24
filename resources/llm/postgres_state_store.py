"""The shared limit/budget store on PostgreSQL: the same tables and the same one-call protocol as the SQLite
store (resources/llm/state_store.py, whose logic it shares), but reachable from every machine. Processes on any
number of machines that set the same `CHUNKWISE_STATE_URL` split one provider limit and one budget.

Locking. Every `transact` is one READ COMMITTED transaction that first takes `pg_advisory_xact_lock` on a
64-bit hash of each name it will write: the limit key (buckets, AIMD state), the slots key, and every budget
scope of its permits, of the reservations it settles and of the dead holders it reclaims. The locks are taken
in ascending hash order, in one statement, before any row is read for arithmetic or written, so two
transactions never wait on each other in a cycle (no deadlocks), and each reads the rows its predecessor
committed (READ COMMITTED: a new snapshot per statement). Transactions on unrelated limits and scopes run in
parallel; a hash collision only serializes two of them more than needed. A lock holder that freezes mid-
transaction loses its locks after `idle_in_transaction_session_timeout` (60 s); one that dies loses them at once.

Clock. Times in the tables (bucket refills, AIMD, retry-after blocks, reservation and lease ages) are the
database server's clock, `clock_timestamp()`, read after the locks: machines' clocks differ, and a bucket one
machine refilled at its time would be refilled again, or not at all, by another machine running ahead or behind.
Read after the locks, each transaction's time is no earlier than its predecessor's.

Reclaim. A reservation (or server slot) of a process that died is charged at its worst case and released. On the
holder's own machine a pid probe tells at once, as with SQLite. Another machine's pid cannot be probed, so every
process holding reservations renews a lease (the `holders` row of its host and pid) every `lease_s / 3` seconds
from a background thread; a holder whose lease (or, before its first renewal, whose reservation) is older than
`lease_s` is dead. Each process looks for dead holders at most every `min(5, lease_s / 2)` seconds, in its next
transaction. Bound: a killed holder's reservations are released at most `lease_s + min(5, lease_s / 2)` seconds
after its last renewal (so at most `4/3 lease_s + min(5, lease_s / 2)` after its death; 45 s by default) once any
process sharing the store transacts. `reservation_ttl_s` still bounds a live holder's reservation, as with SQLite.

Errors carry the URL with its password replaced by `***` (`redact_dsn`) and never the password itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions

from resources.llm.state_store import (
    RECLAIM_EVERY_S,
    BudgetCap,
    DeadHoldings,
    LimitSpec,
    Permit,
    Settlement,
    SharedStateStore,
    StateStoreUnavailableError,
    TransactResult,
)
from resources.state_url import STATE_URL_ENV
from resources.state_url import redact as redact_dsn

CONNECT_TIMEOUT_S = 10
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
_SCHEMA_LOCK = (
    0x63776B73  # one advisory lock for creating the tables, so concurrent first starts do not collide
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    limit_key TEXT NOT NULL, kind TEXT NOT NULL,
    rate_per_s DOUBLE PRECISION NOT NULL, capacity DOUBLE PRECISION NOT NULL, header_limit DOUBLE PRECISION,
    level DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (limit_key, kind));
CREATE TABLE IF NOT EXISTS limit_state (
    limit_key TEXT PRIMARY KEY, factor DOUBLE PRECISION NOT NULL, factor_at DOUBLE PRECISION NOT NULL,
    last_decrease_at DOUBLE PRECISION NOT NULL, blocked_until DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS spend (
    scope TEXT PRIMARY KEY, spent_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    reserved_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    spent_tokens BIGINT NOT NULL DEFAULT 0, reserved_tokens BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS reservations (
    id BIGSERIAL PRIMARY KEY, scopes TEXT NOT NULL, usd DOUBLE PRECISION NOT NULL, tokens BIGINT NOT NULL,
    pid BIGINT NOT NULL, host TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS reclaimed (
    id BIGINT PRIMARY KEY, scopes TEXT NOT NULL, usd DOUBLE PRECISION NOT NULL, pid BIGINT NOT NULL,
    reclaimed_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS slots (
    id BIGSERIAL PRIMARY KEY, slots_key TEXT NOT NULL, pid BIGINT NOT NULL, host TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS holders (
    host TEXT NOT NULL, pid BIGINT NOT NULL, renewed_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (host, pid));
"""
_NOW = "extract(epoch FROM clock_timestamp())::float8"


def _lock_id(name: str) -> int:
    """A stable signed 64-bit advisory-lock id for `name` (the same on every machine and Python)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class PostgresStateStore(SharedStateStore):
    """The shared store on PostgreSQL at `dsn` (a libpq URL); tables are created when missing. See the module
    docstring for the locking, the clock and the reclaim bound (`lease_s`, seconds). `host`: the name this
    process's reservations carry (default: this machine's hostname). Raises StateStoreUnavailableError when the
    server cannot be reached, at start or later."""

    def __init__(
        self,
        dsn: str,
        *,
        lease_s: float = 30.0,
        reservation_ttl_s: float = 3600.0,
        host: str | None = None,
    ) -> None:
        super().__init__(reservation_ttl_s=reservation_ttl_s, host=host)
        self.url = redact_dsn(dsn)
        self.lease_s = lease_s
        self._reclaim_every_s = min(RECLAIM_EVERY_S, lease_s / 2)
        self._dsn = dsn
        parts = urllib.parse.urlsplit(dsn)
        self._password = parts.password or urllib.parse.parse_qs(parts.query).get("password", [""])[0]
        self._closed = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._conn = self._connect()
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur.execute(_SCHEMA)

    def close(self) -> None:
        self._closed.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5.0)
        with contextlib.suppress(psycopg2.Error):
            self._conn.close()

    def transact(
        self,
        spec: LimitSpec | None,
        settlements: list[Settlement],
        permits: list[Permit],
        caps: dict[str, BudgetCap],
    ) -> TransactResult:
        result = super().transact(spec, settlements, permits, caps)
        if self._heartbeat is None and any(
            g.reservation_id is not None or g.slot_id is not None for g in result.grants
        ):
            # From the first reservation or slot on, this process renews its lease until close().
            self._heartbeat = threading.Thread(
                target=self._renew_lease, name="chunkwise-state-lease", daemon=True
            )
            self._heartbeat.start()
        return result

    # -- connection and errors ------------------------------------------------------------------------------
    def _connect(self) -> psycopg2.extensions.connection:
        try:
            conn = psycopg2.connect(
                self._dsn,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="chunkwise-state",
                options=f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}",
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
            )
        except psycopg2.Error as exc:
            raise StateStoreUnavailableError(
                f"the shared limit/budget store {self.url} ({STATE_URL_ENV}) cannot be reached "
                f"({self._reason(exc)}); start that PostgreSQL server or correct {STATE_URL_ENV}, or unset it "
                "to use this machine's SQLite store"
            ) from None
        conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_READ_COMMITTED)
        return conn

    def _reason(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return text.replace(self._dsn, self.url)

    @contextlib.contextmanager
    def _transaction(self, read_only: bool = False) -> Iterator[Any]:
        if self._conn.closed:
            self._conn = self._connect()  # a lost connection fails one operation; the next one reconnects
        try:
            with self._conn.cursor() as cur:
                yield cur
            self._conn.commit()
        except psycopg2.Error as exc:
            self._abandon()
            raise StateStoreUnavailableError(
                f"the shared limit/budget store {self.url} ({STATE_URL_ENV}) failed: {self._reason(exc)}"
            ) from None
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        try:
            self._conn.rollback()
        except psycopg2.Error:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()

    # -- the backend's part of the shared logic -------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _now(self, cur: Any) -> float:
        cur.execute(f"SELECT {_NOW}")
        return float(cur.fetchone()[0])

    def _lock(
        self,
        cur: Any,
        spec: LimitSpec | None,
        settlements: list[Settlement],
        permits: list[Permit],
        dead: DeadHoldings,
    ) -> None:
        names: set[str] = set()
        if spec is not None:
            names.add("limit:" + spec.limit_key)
            if spec.slots is not None:
                names.add("slots:" + spec.slots_key)
        scopes = {scope for p in permits if p.budget is not None for scope in p.budget.scopes}
        for _, scopes_json, *_ in dead[0]:
            scopes.update(json.loads(scopes_json))
        settled = [s.reservation_id for s in settlements if s.reservation_id is not None]
        if settled:
            cur.execute("SELECT scopes FROM reservations WHERE id = ANY(%s)", (settled,))
            for (scopes_json,) in cur.fetchall():
                scopes.update(json.loads(scopes_json))
        names.update("scope:" + scope for scope in scopes)
        if names:
            # One statement, in ascending id order (the sorted subquery feeds the aggregate in that order).
            cur.execute(
                "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT k FROM unnest(%s::bigint[]) AS k ORDER BY k) s",
                (sorted({_lock_id(n) for n in names}),),
            )

    def _dead_holdings(self, cur: Any) -> DeadHoldings:
        cur.execute(
            f"SELECT r.id, r.scopes, r.usd, r.tokens, r.pid, r.host, r.created_at, "
            f"GREATEST(r.created_at, COALESCE(h.renewed_at, 0)), {_NOW} "
            "FROM reservations r LEFT JOIN holders h ON h.host = r.host AND h.pid = r.pid"
        )
        reservations = [
            (rid, scopes, usd, tokens, pid)
            for rid, scopes, usd, tokens, pid, host, created_at, seen, now in cur.fetchall()
            if self._dead(pid, host, created_at, seen, now)
        ]
        cur.execute(
            f"SELECT s.id, s.pid, s.host, s.created_at, GREATEST(s.created_at, COALESCE(h.renewed_at, 0)), {_NOW} "
            "FROM slots s LEFT JOIN holders h ON h.host = s.host AND h.pid = s.pid"
        )
        slot_ids = [
            sid
            for sid, pid, host, created_at, seen, now in cur.fetchall()
            if self._dead(pid, host, created_at, seen, now)
        ]
        return reservations, slot_ids

    def _dead(self, pid: int, host: str, created_at: float, seen: float, now: float) -> bool:
        mine = host == self._host and pid == self._pid
        lease_lapsed = not mine and now - seen > self.lease_s
        return self._holder_dead(pid, host) or lease_lapsed or now - created_at > self.reservation_ttl_s

    # -- the lease ------------------------------------------------------------------------------------------
    def _renew_lease(self) -> None:
        """Renew this process's lease every lease_s / 3 until close(); forget leases older than the ttl. A failed
        renewal is retried at the next beat (the transactions report an unreachable server themselves)."""
        conn: psycopg2.extensions.connection | None = None
        while True:
            try:
                if conn is None or conn.closed:
                    conn = psycopg2.connect(
                        self._dsn, connect_timeout=CONNECT_TIMEOUT_S, application_name="chunkwise-state-lease"
                    )
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(
                        f"INSERT INTO holders (host, pid, renewed_at) VALUES (%s, %s, {_NOW}) "
                        "ON CONFLICT (host, pid) DO UPDATE SET renewed_at = excluded.renewed_at",
                        (self._host, self._pid),
                    )
                    cur.execute(
                        f"DELETE FROM holders WHERE renewed_at < {_NOW} - %s", (self.reservation_ttl_s,)
                    )
            except psycopg2.Error:
                if conn is not None:
                    with contextlib.suppress(psycopg2.Error):
                        conn.close()
                conn = None
            if self._closed.wait(self.lease_s / 3):
                break
        if conn is not None:
            with contextlib.suppress(psycopg2.Error):
                conn.close()
