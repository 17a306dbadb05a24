"""The shared limit/budget store on PostgreSQL (resources/llm/postgres_state_store.py), against a real server:
the store's behaviour on both backends, real processes racing for one bucket and one budget, a killed holder on
another machine released once its lease lapses, the errors when the server is gone, and LLMResource selecting it
through CHUNKWISE_STATE_URL for a real run against the simulator."""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest
from llm_support import SCHEMA, SHORT_SYSTEM, make_resource, run_children, texts

from resources.llm import BudgetScope, JobFatalError, LLMRequest
from resources.llm.budget import exhausted_message
from resources.llm.postgres_state_store import PostgresStateStore
from resources.llm.state_store import (
    STATE_URL_ENV,
    BudgetCap,
    BudgetNeed,
    HeaderLimit,
    LimitSpec,
    Permit,
    Settlement,
    SQLiteStateStore,
    StateStoreUnavailableError,
    open_state_store,
)
from scripts.postgres_server import free_port

Factory = Callable[[], SQLiteStateStore | PostgresStateStore]
PASSWORD = "hunter2-not-for-logs"


def _open(target: str, **kwargs) -> SQLiteStateStore | PostgresStateStore:
    """A store on `target`: a libpq URL or a SQLite file path (as in a child process)."""
    if target.startswith("postgresql://"):
        return PostgresStateStore(target, **kwargs)
    return SQLiteStateStore(target)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the store lives: a SQLite file, or a fresh Postgres database (its URL)."""
    if request.param == "sqlite":
        return str(tmp_path / "state.sqlite")
    return request.getfixturevalue("postgres_dsn")


def _db_now(dsn: str) -> float:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
        return float(cur.fetchone()[0])


def _with_password(dsn: str) -> str:
    """The same database with a password in the URL (the test server trusts its role, so any password works)."""
    return dsn.replace("postgresql://chunkwise@", f"postgresql://chunkwise:{PASSWORD}@")


# -- the store's behaviour, on both backends ----------------------------------------------------------------
def test_budget_reservations_never_exceed_the_cap_and_release_on_settle(target):
    store = _open(target)
    caps = {"run:r": BudgetCap(usd=1.0, tokens=None)}
    need = BudgetNeed(("run:r",), usd=0.3, tokens=10)
    got = store.transact(None, [], [Permit({}, need)] * 5, caps)
    assert len(got.grants) == 3 and got.wait_s is not None  # the 4th fits only once others settle
    store.transact(None, [Settlement(g.reservation_id, usd=0.1, tokens=5) for g in got.grants], [], caps)
    assert store.spend("run:r") == pytest.approx((0.3, 0.0, 15))
    got = store.transact(None, [], [Permit({}, need)] * 5, caps)
    assert len(got.grants) == 2  # 0.3 spent + 2 x 0.3 reserved fills 0.9 of the 1.0 cap
    store.transact(None, [Settlement(g.reservation_id, usd=0.3, tokens=5) for g in got.grants], [], caps)
    got = store.transact(None, [], [Permit({}, need)], caps)
    assert got.grants == [] and got.exhausted is not None
    message = exhausted_message(got.exhausted)
    assert message.startswith("budget for run r exhausted at $0.90 of $1.00")
    assert "raise `budgets.run_usd` in the pipeline spec" in message
    store.close()


def test_token_bucket_waits_and_a_429_blocks_everyone_sharing_it(target):
    store = _open(target)
    spec = LimitSpec("openai|x|m", {"tokens": 1000.0}, burst_s=1.0)  # 1000 tokens/s, 750 burst
    got = store.transact(spec, [], [Permit({"tokens": 300.0})] * 4, {})
    assert len(got.grants) == 2 and 0 < got.wait_s <= 0.2
    other = _open(target)  # another process's view of the same limit
    other.transact(spec, [Settlement(None, rate_limited=True, retry_after_s=2.0)], [], {})
    got = store.transact(spec, [], [Permit({"tokens": 1.0})], {})
    assert got.grants == [] and 1.5 < got.wait_s <= 2.0
    store.close()
    other.close()


def test_server_slots_are_shared_and_freed_on_settle(target):
    first, second = _open(target), _open(target)
    spec = LimitSpec("openai|local|m", {}, slots=2, slots_key="openai|local")
    got = first.transact(spec, [], [Permit({})] * 3, {})
    assert len(got.grants) == 2 and got.wait_s is not None
    assert (
        second.transact(spec, [], [Permit({})], {}).grants == []
    )  # both slots are taken, by another process
    first.transact(spec, [Settlement(None, slot_id=got.grants[0].slot_id)], [], {})
    assert len(second.transact(spec, [], [Permit({})], {}).grants) == 1
    first.close()
    second.close()


def test_headers_state_the_limit_and_bucket_levels_refill(target):
    store = _open(target)
    spec = LimitSpec("openai|x|m", {"tokens": 100.0}, burst_s=1.0)
    got = store.transact(spec, [], [Permit({"tokens": 50.0})], {})
    store.transact(
        spec,
        [
            Settlement(
                None, headers={"tokens": HeaderLimit(3000.0, None)}, level_after=got.grants[0].level_after
            )
        ],
        [],
        {},
    )
    assert store.stated_limits("openai|x|m") == {"tokens": 3000.0}
    rate, capacity, level = store.bucket_levels("openai|x|m")["tokens"]
    assert rate == 100.0 and capacity == pytest.approx(3000.0 * 0.75) and 25.0 <= level <= capacity
    assert store.bucket_levels("openai|other|m") == {}
    store.close()


def _reserve_and_exit(target: str) -> None:
    store = _open(target)
    store.transact(
        None, [], [Permit({}, BudgetNeed(("day:d",), usd=0.25, tokens=100))], {"day:d": BudgetCap(1.0, None)}
    )
    # exits without settling: a crash mid-request


def test_crashed_process_on_this_machine_is_reclaimed_at_once_by_pid(target):
    child = mp.get_context("spawn").Process(target=_reserve_and_exit, args=(target,))
    child.start()
    child.join()
    store = _open(target, lease_s=3600.0) if target.startswith("postgresql://") else _open(target)
    assert store.spend("day:d") == pytest.approx((0.0, 0.25, 0))
    store.transact(None, [], [], {})  # the first transaction looks for dead holders; the lease is far off
    assert store.spend("day:d") == pytest.approx((0.25, 0.0, 100))
    assert [row[3] for row in store.reclaimed()] == [child.pid]
    store.close()


# -- several real processes on one store ------------------------------------------------------------
RATE = 2000.0  # tokens per second
SPEC = LimitSpec("openai|race|m", {"tokens": RATE}, burst_s=1.0)  # capacity 1500 tokens
CAP_USD = 0.6


def _race(target: str, seed: int, ready, seconds: float, out) -> None:
    """Hammer one bucket and one budget for `seconds` from the moment every racer has imported and connected
    (`ready`, a barrier: a slow start on a loaded machine must not shorten the race); report what was granted
    and charged."""
    rng = random.Random(seed)
    store = _open(target)
    caps = {"dataset:race": BudgetCap(CAP_USD, None)}
    ready.wait(timeout=120)
    first = start_at = time.time()
    tokens = charged = 0.0
    exhausted = False
    held: list[int] = []
    while time.time() < start_at + seconds:
        got = store.transact(SPEC, [], [Permit({"tokens": 100.0})] * rng.randint(1, 8), {})
        tokens += 100.0 * len(got.grants)
        settle = []
        for rid in held:
            usd = rng.uniform(0.002, 0.01)  # the actual cost, at most the 0.01 worst case reserved
            settle.append(Settlement(rid, usd=usd, tokens=1))
            charged += usd
        need = BudgetNeed(("dataset:race", f"run:{seed}"), usd=0.01, tokens=1)
        got = store.transact(None, settle, [Permit({}, need)] * rng.randint(1, 4), caps)
        held = [g.reservation_id for g in got.grants]
        exhausted = exhausted or got.exhausted is not None
    for rid in held:
        store.transact(None, [Settlement(rid, usd=0.01, tokens=1)], [], caps)
        charged += 0.01
    last = time.time()
    store.close()
    out.put({"tokens": tokens, "charged": charged, "first": first, "last": last, "exhausted": exhausted})


def test_processes_racing_for_one_bucket_and_budget_never_overdraw_either(target):
    _open(target).close()  # the tables exist before the race
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ready = ctx.Barrier(4)
    procs = [ctx.Process(target=_race, args=(target, seed, ready, 3.0, out)) for seed in range(4)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    granted = sum(r["tokens"] for r in reports)
    span = max(r["last"] for r in reports) - min(r["first"] for r in reports)
    # A full bucket plus what refilled while anyone was transacting: anything more was granted twice.
    assert granted <= SPEC.rates_per_s["tokens"] * 0.75 + RATE * span + 1e-6
    assert granted >= RATE * 1.0  # and the bucket was the binding limit, not an idle race
    store = _open(target)
    spent, reserved, _ = store.spend("dataset:race")
    assert reserved == pytest.approx(0.0, abs=1e-9)
    assert spent == pytest.approx(sum(r["charged"] for r in reports), rel=1e-9)
    assert spent <= CAP_USD + 1e-9
    assert any(r["exhausted"] for r in reports)  # the cap was reached, so it was the cap that stopped them
    store.close()


# -- a killed holder on another machine --------------------------------------------------------------------
LEASE_S = 1.0


def _hold_on_another_machine(dsn: str, out) -> None:
    """Reserve as a process of machine "worker-b" (so no pid probe can judge it), then wait to be killed."""
    store = PostgresStateStore(dsn, host="worker-b", lease_s=LEASE_S)
    got = store.transact(
        None, [], [Permit({}, BudgetNeed(("day:d",), usd=0.25, tokens=100))], {"day:d": BudgetCap(1.0, None)}
    )
    out.put(got.grants[0].reservation_id)
    time.sleep(3600)


def _holder_seen_at(dsn: str, host: str) -> float | None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT renewed_at FROM holders WHERE host = %s", (host,))
        row = cur.fetchone()
        return None if row is None else float(row[0])


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_killed_holder_on_another_machine_is_released_once_its_lease_lapses(postgres_dsn):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_hold_on_another_machine, args=(postgres_dsn, out))
    child.start()
    try:
        rid = out.get(timeout=60)
        _wait_until(lambda: _holder_seen_at(postgres_dsn, "worker-b") is not None, "the holder's first lease")
        # Alive: its reservation outlives the lease many times over, and it is kept because the lease is renewed.
        created = _db_now(postgres_dsn)
        _wait_until(lambda: _db_now(postgres_dsn) - created > 3 * LEASE_S, "three leases to pass")
        fresh = PostgresStateStore(postgres_dsn, lease_s=LEASE_S)  # a new store looks for dead holders first
        fresh.transact(None, [], [], {})
        assert fresh.spend("day:d") == pytest.approx((0.0, 0.25, 0))
        fresh.close()
    finally:
        child.kill()  # SIGKILL: no cleanup runs
        child.join()
    last_renewal = _holder_seen_at(postgres_dsn, "worker-b")
    assert last_renewal is not None
    # Dead, lease still running: nobody can tell yet, the reservation stays (unless the lease already lapsed).
    store = PostgresStateStore(postgres_dsn, lease_s=LEASE_S)
    store.transact(None, [], [], {})
    if _db_now(postgres_dsn) - last_renewal < LEASE_S - 0.2:
        assert store.reclaimed() == []
    store.close()
    # Lease lapsed (by the database's clock): the first transaction that looks releases and charges it.
    _wait_until(lambda: _db_now(postgres_dsn) - last_renewal > LEASE_S, "the lease to lapse")
    store = PostgresStateStore(postgres_dsn, lease_s=LEASE_S)
    store.transact(None, [], [], {})
    assert store.spend("day:d") == pytest.approx((0.25, 0.0, 100))
    assert [(row[0], row[3]) for row in store.reclaimed()] == [(rid, child.pid)]
    store.close()


# -- the server gone ---------------------------------------------------------------------------------------
def test_unreachable_server_names_the_setting_and_hides_the_password(monkeypatch, tmp_path):
    url = f"postgresql://chunkwise:{PASSWORD}@127.0.0.1:{free_port()}/chunkwise"
    monkeypatch.setenv(STATE_URL_ENV, url)
    with pytest.raises(StateStoreUnavailableError) as caught:
        open_state_store(tmp_path / "state.sqlite")
    message = str(caught.value)
    assert STATE_URL_ENV in message and "postgresql://chunkwise:***@127.0.0.1:" in message
    assert PASSWORD not in message and caught.value.__cause__ is None
    assert not (tmp_path / "state.sqlite").exists()  # no silent fallback to a machine-local store
    for wrong in ("redis://:secret-pw@host:6379/0", "host=db user=x password=secret-pw"):
        monkeypatch.setenv(STATE_URL_ENV, wrong)
        with pytest.raises(StateStoreUnavailableError, match="is not a postgresql:// URL") as caught:
            open_state_store(tmp_path / "state.sqlite")
        assert "secret-pw" not in str(caught.value)


def test_connection_lost_mid_run_fails_one_call_without_the_password_then_reconnects(
    postgres_dsn, postgres_server
):
    store = PostgresStateStore(_with_password(postgres_dsn))
    caps = {"run:r": BudgetCap(1.0, None)}
    need = BudgetNeed(("run:r",), usd=0.1, tokens=1)
    assert len(store.transact(None, [], [Permit({}, need)], caps).grants) == 1
    postgres_server.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'chunkwise-state'"
    )
    with pytest.raises(StateStoreUnavailableError) as caught:
        store.transact(None, [], [Permit({}, need)], caps)
    assert STATE_URL_ENV in str(caught.value) and PASSWORD not in str(caught.value)
    assert len(store.transact(None, [], [Permit({}, need)], caps).grants) == 1  # the next call reconnects
    assert store.spend("run:r") == pytest.approx((0.0, 0.2, 0))  # the failed call reserved nothing
    store.close()


# -- LLMResource on the shared store -----------------------------------------------------------------------
@pytest.mark.slow
def test_resources_on_two_homes_share_one_budget_through_postgres(
    start_sim, tmp_path, postgres_dsn, monkeypatch
):
    monkeypatch.setenv(STATE_URL_ENV, postgres_dsn)  # spawned children inherit it
    model = {"provider": "openai", "input": 0.1, "cached_input": 0.01, "cache_write": 0.125, "output": 0.5}
    limits = {
        "tpm": 600_000,
        "per": "minute",
    }  # roomy: it only makes the simulator state its limit in headers
    sim = start_sim(
        {
            "models": {"gpt-6-luna": {**model, "limits": limits}},
            "latency": {"base_ms": 10, "jitter_ms": 20},
            "seed": 3,
        }
    )
    cap = 0.003
    homes = [tmp_path / "home-a", tmp_path / "home-b"]
    configs = [
        dict(
            provider="openai",
            base_url=sim.base_url + "/v1",
            api_key=sim.api_key,
            model="gpt-6-luna",
            max_output_tokens=32,
            max_concurrency=16,
            budget_dataset_usd=cap,
            tokens_per_minute=600_000,
            state_dir=str(home / "state"),
            progress_interval_s=3600,
        )
        for home in homes
        for _ in range(2)
    ]
    item_sets = [[(f"p{p}-{i}", t) for i, t in enumerate(texts(80, seed=p))] for p in range(4)]
    reports = run_children(configs, item_sets, [(f"run{p}", "shared-dataset") for p in range(4)])
    billed = sim.stats()["billed_usd"]
    assert billed <= cap, f"provider billed ${billed} past the ${cap} cap"
    assert any(r["fatal"] == "budget" for r in reports), "the workload was sized to hit the cap"
    assert billed > 0.5 * cap
    store = open_state_store(homes[0] / "state" / "llm_state.sqlite")
    assert isinstance(store, PostgresStateStore)
    spent, reserved, _ = store.spend("dataset:shared-dataset")
    assert spent == pytest.approx(billed, rel=1e-9) and reserved == pytest.approx(0.0, abs=1e-12)
    assert store.stated_limits("openai|" + sim.base_url + "/v1|gpt-6-luna") != {}  # headers reached Postgres
    store.close()
    assert not any((home / "state" / "llm_state.sqlite").exists() for home in homes)


def test_unset_url_keeps_the_sqlite_store(monkeypatch, tmp_path):
    monkeypatch.delenv(STATE_URL_ENV, raising=False)
    assert open_state_store(tmp_path / "state.sqlite", must_exist=True) is None
    store = open_state_store(tmp_path / "state.sqlite")
    assert isinstance(store, SQLiteStateStore) and (tmp_path / "state.sqlite").exists()
    store.close()
    monkeypatch.setenv(STATE_URL_ENV, "  ")
    assert isinstance(open_state_store(tmp_path / "state.sqlite", must_exist=True), SQLiteStateStore)


def test_llm_resource_stops_the_job_when_the_shared_store_is_unreachable(sim, monkeypatch, tmp_path):
    monkeypatch.setenv(STATE_URL_ENV, f"postgresql://chunkwise:{PASSWORD}@127.0.0.1:{free_port()}/chunkwise")
    llm = make_resource(sim, budget_run_usd=1.0, state_dir=str(tmp_path))
    with pytest.raises(JobFatalError) as caught:
        llm.run_prompts(
            [LLMRequest("k1", t) for t in texts(1)],
            system_prompt=SHORT_SYSTEM,
            schema=SCHEMA,
            schema_name="intent",
            scope=BudgetScope("r", "d"),
            stage="classify",
        )
    assert caught.value.reason == "state_store"
    assert STATE_URL_ENV in caught.value.description and PASSWORD not in caught.value.description
    assert sim.requests() == []  # nothing was sent without the budget's store
