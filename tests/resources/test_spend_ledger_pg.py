"""The spend ledger on the shared backend (resources/llm/spend_ledger_pg.py) against a real PostgreSQL server: the
ledger's behaviour on both backends (dedupe, unsettled attempts, sums, halts, threads), the same frame from both,
two real processes sharing one ledger (each sees the other's rows, sums and halts; a batch line collected by both
is billed once), a lost or unreachable server (one message naming the setting, no password), and what `sent` +
`billed` cost per request on each backend (printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from resources.checkpoints_pg import STATE_URL_ENV
from resources.llm.spend_ledger import COLUMNS, AttemptContext, Billed, SpendLedger, attempt_summary
from resources.llm.spend_ledger_pg import PostgresSpendLedger, SpendLedgerUnavailableError, open_spend_ledger
from resources.llm.state_store import StateStoreUnavailableError
from scripts.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
CTX = AttemptContext("d|i1|classify|v|m", dataset_id="d", stage="classify")


@pytest.fixture(params=["sqlite", "postgres"])
def open_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], SpendLedger]]:
    """Opens the same ledger again each call (another process or machine would), on each backend."""
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgres" else None
    opened: list[SpendLedger] = []

    def open_() -> SpendLedger:
        ledger = PostgresSpendLedger(dsn) if dsn else SpendLedger(tmp_path / "spend.sqlite")
        opened.append(ledger)
        return ledger

    yield open_
    for ledger in opened:
        ledger.close()


def bill(ledger: SpendLedger, ctx: AttemptContext, usd: float, attempt: int = 1) -> str:
    attempt_id = ledger.new_attempt_id()
    ledger.sent(attempt_id, ctx, attempt, worst_case_usd=2 * usd)
    ledger.billed(attempt_id, ctx, attempt, Billed(input_tokens=10, output_tokens=2, cost_usd=usd), "ok")
    return attempt_id


# -- the ledger's behaviour, on both backends --------------------------------------------------------------------


def test_a_batch_line_collected_twice_is_billed_once_even_through_another_ledger(open_ledger):
    first, second = open_ledger(), open_ledger()
    ctx = AttemptContext("d|i1|classify|v|m", dataset_id="d", stage="classify", mode="batch")
    usage = Billed(input_tokens=100, output_tokens=10, cost_usd=0.5)
    assert first.billed("a1", ctx, 1, usage, "ok", provider_request_id="i1", dedupe_key="batch:b1:i1")
    assert not first.billed("a2", ctx, 1, usage, "ok", provider_request_id="i1", dedupe_key="batch:b1:i1")
    assert not second.billed("a3", ctx, 1, usage, "ok", provider_request_id="i1", dedupe_key="batch:b1:i1")
    assert second.billed("a4", ctx, 1, usage, "ok", provider_request_id="i2", dedupe_key="batch:b1:i2")
    assert first.billed_usd("d") == pytest.approx(1.0)
    assert list(second.rows("d")["attempt_id"]) == ["a1", "a4"]


def test_an_attempt_sent_and_never_settled_is_reported_with_its_worst_case(open_ledger):
    ledger = open_ledger()
    ledger.sent("a1", CTX, 1, worst_case_usd=0.02)
    ledger.billed("a1", CTX, 1, Billed(cost_usd=0.01), "ok")
    ledger.sent("a2", CTX, 2, worst_case_usd=0.03)  # the process died here
    ledger.sent("a3", CTX, 3, worst_case_usd=0.04)
    ledger.not_billed("a3", CTX, 3, "server_error")
    ledger.sent("a4", CTX, 4, worst_case_usd=0.05)
    ledger.lost("a4", CTX, 4, "timeout")  # the provider may have billed it: still unsettled
    assert attempt_summary(ledger.rows("d")) == {
        "requests_billed": 1,
        "billed_usd": pytest.approx(0.01),
        "unsettled_requests": 2,
        "unsettled_max_usd": pytest.approx(0.08),
    }


def test_rows_are_oldest_first_per_dataset_and_only_bills_are_summed(open_ledger):
    ledger = open_ledger()
    other = AttemptContext("e|i1|classify|v|m", dataset_id="e", team="t", provider="openai", model="m")
    first = bill(ledger, CTX, 0.25)
    bill(ledger, other, 1.5)
    ledger.sent("x", CTX, 2, worst_case_usd=9.0)  # reserved, never billed: not in billed_usd
    rows = ledger.rows("d")
    assert list(rows.columns) == COLUMNS
    assert list(rows["event"]) == ["sent", "billed", "sent"] and rows["attempt_id"].iloc[0] == first
    assert rows["seq"].is_monotonic_increasing
    assert len(ledger.rows()) == 5 and ledger.rows("nobody").empty
    assert ledger.billed_usd("d") == pytest.approx(0.25)
    assert ledger.billed_usd("e") == pytest.approx(1.5)
    assert ledger.billed_usd() == pytest.approx(1.75)
    assert ledger.billed_usd("nobody") == 0.0
    reopened = open_ledger()  # another process, later: everything is still there
    assert reopened.rows().equals(ledger.rows())


def test_a_halt_keeps_its_first_message_and_is_lifted_per_provider(open_ledger):
    writer, reader = open_ledger(), open_ledger()
    assert reader.halted(("openai|u|key:1",)) is None and reader.halted(()) is None
    writer.halt("openai|u|key:1", "auth", "401 from openai", run_id="r1")
    writer.halt("openai|u|key:1", "auth", "a later 401")  # the first one stays
    writer.halt("anthropic|u|model:m", "config", "unknown model m")
    halt = reader.halted(("openai|u|model:m", "openai|u|key:1"))
    assert (halt.scope, halt.reason, halt.message, halt.run_id) == (
        "openai|u|key:1",
        "auth",
        "401 from openai",
        "r1",
    )
    assert reader.halted(("openai|u|key:2",)) is None
    assert [h.scope for h in reader.halts()] == ["openai|u|key:1", "anthropic|u|model:m"]  # oldest first
    assert [h.reason for h in reader.clear_halts("openai")] == ["auth"]
    assert writer.halted(("openai|u|key:1",)) is None
    assert [h.reason for h in writer.halts()] == ["config"]
    assert [h.reason for h in writer.clear_halts()] == ["config"] and reader.halts() == []


def test_threads_sharing_one_ledger_lose_no_row(open_ledger):
    ledger = open_ledger()
    per_thread, threads = 50, 8

    def work(t: int) -> None:
        for i in range(per_thread):
            bill(ledger, AttemptContext(f"d|t{t}|i{i}", dataset_id="d"), 0.125)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    rows = ledger.rows("d")
    assert len(rows) == 2 * per_thread * threads and rows["seq"].is_unique
    assert ledger.billed_usd("d") == pytest.approx(0.125 * per_thread * threads)
    assert attempt_summary(rows)["unsettled_requests"] == 0


def test_both_backends_give_the_same_frame(postgres_dsn, tmp_path):
    """Reports read `rows()` without knowing the backend: the same events give the same values and dtypes."""
    frames = []
    for ledger in (SpendLedger(tmp_path / "spend.sqlite"), PostgresSpendLedger(postgres_dsn)):
        ctx = AttemptContext(
            "d|i1|c|v|m", "d", "d__c00000", "classify", "team", "openai", "m", "online", "r1"
        )
        ledger.sent("a1", ctx, 1, worst_case_usd=0.5)
        ledger.billed(
            "a1", ctx, 1, Billed(1, 2, 3, 4, 0.25, 0.0625), "invalid", provider_request_id="chatcmpl-1"
        )
        ledger.sent("a2", ctx, 2, worst_case_usd=0.5)
        ledger.lost("a2", ctx, 2, "timeout")
        frames.append(ledger.rows("d").drop(columns=["at"]))
        ledger.close()
    sqlite_rows, pg_rows = frames
    assert list(sqlite_rows.dtypes) == list(pg_rows.dtypes)
    assert sqlite_rows.drop(columns="seq").equals(pg_rows.drop(columns="seq"))


# -- several processes, one ledger -------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from resources.llm.spend_ledger import AttemptContext, Billed
    from resources.llm.spend_ledger_pg import PostgresSpendLedger

    ledger = PostgresSpendLedger(sys.argv[1])
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        op, args = json.loads(line)
        if op == "bill":  # n requests of one dataset, each sent then billed
            for i in range(args["n"]):
                ctx = AttemptContext(f"{args['dataset']}|i{i}", dataset_id=args["dataset"])
                attempt_id = ledger.new_attempt_id()
                ledger.sent(attempt_id, ctx, 1, worst_case_usd=2 * args["usd"])
                ledger.billed(attempt_id, ctx, 1, Billed(cost_usd=args["usd"]), "ok")
            answer = args["n"]
        elif op == "collect":  # one batch line; True when this process recorded it
            ctx = AttemptContext("batch|line", dataset_id="batch", mode="batch")
            answer = ledger.billed(
                ledger.new_attempt_id(), ctx, 1, Billed(cost_usd=args["usd"]), "ok", dedupe_key=args["key"]
            )
        elif op == "totals":
            rows = ledger.rows()
            answer = {
                "events": len(rows),
                "billed_usd": ledger.billed_usd(),
                "by_dataset": {d: ledger.billed_usd(d) for d in args["datasets"]},
            }
        elif op == "halt":
            answer = ledger.halt(args["scope"], args["reason"], args["message"])
        elif op == "halted":
            halt = ledger.halted(tuple(args["scopes"]))
            answer = None if halt is None else [halt.scope, halt.reason, halt.message]
        print(json.dumps(answer), flush=True)
    """
)


class LedgerProcess:
    """A real child process with its own PostgresSpendLedger, driven one JSON command per line."""

    def __init__(self, dsn: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, dsn, str(ROOT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.answer() == "ready"

    def send(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([op, args]) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, (
            f"the ledger process ended: {self.proc.stderr.read()[-2000:] if self.proc.stderr else ''}"
        )
        return json.loads(line)

    def ask(self, op: str, **args: Any) -> Any:
        self.send(op, **args)
        return self.answer()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.fixture
def ledger_process(postgres_dsn: str) -> Iterator[Callable[[], LedgerProcess]]:
    started: list[LedgerProcess] = []

    def start() -> LedgerProcess:
        started.append(LedgerProcess(postgres_dsn))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def test_two_processes_see_each_others_rows_and_sums_and_bill_a_shared_batch_line_once(ledger_process):
    a, b = ledger_process(), ledger_process()
    a.send("bill", dataset="da", n=200, usd=0.25)  # both write at once
    b.send("bill", dataset="db", n=200, usd=0.5)
    assert (a.answer(), b.answer()) == (200, 200)
    a.send("collect", key="batch:b1:line-7", usd=4.0)  # the same ended batch, collected on two machines
    b.send("collect", key="batch:b1:line-7", usd=4.0)
    assert sorted([a.answer(), b.answer()]) == [False, True]
    expected = {
        "events": 801,
        "billed_usd": 50.0 + 100.0 + 4.0,
        "by_dataset": {"da": 50.0, "db": 100.0, "batch": 4.0},
    }
    datasets = ["da", "db", "batch"]
    assert a.ask("totals", datasets=datasets) == expected  # quarters and halves: exact in binary
    assert b.ask("totals", datasets=datasets) == expected


def test_a_halt_written_by_one_process_stops_the_next_check_in_another(ledger_process, postgres_dsn):
    scope = "openai|https://api.example/v1|key:0123abcd"
    watcher = ledger_process()  # already connected, as a chunk run on another machine is
    assert watcher.ask("halted", scopes=[scope]) is None
    writer = ledger_process()
    writer.ask("halt", scope=scope, reason="auth", message="401: invalid API key")
    writer.stop()  # the halt outlives the process that wrote it
    assert watcher.ask("halted", scopes=["openai|https://api.example/v1|model:m", scope]) == [
        scope,
        "auth",
        "401: invalid API key",
    ]
    assert watcher.ask("halted", scopes=["openai|https://api.example/v1|key:ffff"]) is None
    lifted = PostgresSpendLedger(postgres_dsn).clear_halts("openai")  # a person clears it, from anywhere
    assert [h.scope for h in lifted] == [scope]
    assert watcher.ask("halted", scopes=[scope]) is None


# -- the setting and a failing server ----------------------------------------------------------------------------


def test_the_setting_chooses_the_backend(postgres_dsn, monkeypatch, tmp_path):
    monkeypatch.delenv(STATE_URL_ENV, raising=False)
    local = open_spend_ledger(tmp_path / "spend.sqlite")
    assert type(local) is SpendLedger and (tmp_path / "spend.sqlite").exists()
    monkeypatch.setenv(STATE_URL_ENV, postgres_dsn)
    shared = open_spend_ledger(tmp_path / "elsewhere.sqlite")
    assert isinstance(shared, PostgresSpendLedger) and not (tmp_path / "elsewhere.sqlite").exists()
    monkeypatch.setenv(STATE_URL_ENV, "mysql://chunkwise:s3cret-pw@db/x")
    with pytest.raises(SpendLedgerUnavailableError) as error:
        open_spend_ledger(tmp_path / "spend.sqlite")
    assert STATE_URL_ENV in str(error.value) and "s3cret-pw" not in str(error.value)


def test_an_unreachable_server_names_the_setting_and_never_the_password(
    postgres_server, monkeypatch, tmp_path
):
    closed_port = postgres_server.port + 1 if postgres_server.port < 65535 else 1
    monkeypatch.setenv(STATE_URL_ENV, f"postgresql://chunkwise:s3cret-pw@127.0.0.1:{closed_port}/nope")
    with pytest.raises(SpendLedgerUnavailableError) as error:
        open_spend_ledger(tmp_path / "spend.sqlite")
    message = str(error.value)
    assert STATE_URL_ENV in message and "127.0.0.1" in message and "spend ledger" in message
    assert "s3cret-pw" not in message and "s3cret-pw" not in repr(error.value)
    assert error.value.__cause__ is None and error.value.__suppress_context__  # one message, no chained trace
    assert isinstance(
        error.value, StateStoreUnavailableError
    )  # handled wherever the shared store's failure is


def test_a_connection_lost_mid_run_fails_one_call_and_the_next_reconnects(postgres_dsn):
    ledger = PostgresSpendLedger(postgres_dsn)
    ledger.sent("a1", CTX, 1, worst_case_usd=0.1)
    with psycopg2.connect(postgres_dsn) as admin, admin.cursor() as cur:  # a server restart, for this session
        cur.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert [ok for (ok,) in cur.fetchall()] == [True]
    admin.close()
    with pytest.raises(SpendLedgerUnavailableError, match=STATE_URL_ENV) as error:
        ledger.sent("a2", CTX, 2, worst_case_usd=0.1)
    assert error.value.__cause__ is None
    ledger.sent("a3", CTX, 3, worst_case_usd=0.1)
    assert list(ledger.rows("d")["attempt_id"]) == ["a1", "a3"]
    ledger.close()


# -- what the hot path costs -------------------------------------------------------------------------------------


def sent_and_billed_us(ledger: SpendLedger, requests: int, dataset: str = "bench") -> tuple[float, float]:
    """Microseconds of one `sent` + one `billed` (what every request adds), averaged over `requests`; and of one
    `halted()` check (also made before every request)."""
    ctx = AttemptContext(f"{dataset}|i|classify|v|m", dataset_id=dataset)
    bill(ledger, ctx, 0.001)  # the first statement plans; not a request's cost
    start = time.perf_counter()
    for _ in range(requests):
        bill(ledger, ctx, 0.001)
    writes = time.perf_counter() - start
    scopes = ("openai|u|key:1", "openai|u|model:m")
    start = time.perf_counter()
    for _ in range(requests):
        assert ledger.halted(scopes) is None
    checks = time.perf_counter() - start
    assert len(ledger.rows(dataset)) == 2 * (requests + 1)
    assert ledger.billed_usd(dataset) == pytest.approx(0.001 * (requests + 1))
    ledger.close()
    return writes / requests * 1e6, checks / requests * 1e6


@pytest.mark.slow
def test_print_what_sent_and_billed_cost_per_request(postgres_dsn, tmp_path):
    """Printed, never asserted: the test cluster runs without fsync, so a durable cluster is started too, to show
    what `synchronous_commit = off` (the ledger's choice, module docstring) saves over a flush per commit."""
    requests = 500
    timings = {
        "sqlite (WAL, synchronous=NORMAL)": sent_and_billed_us(SpendLedger(tmp_path / "s.sqlite"), requests)
    }
    timings["postgres, test cluster (fsync off)"] = sent_and_billed_us(
        PostgresSpendLedger(postgres_dsn), requests
    )
    with PostgresServer(fast=False) as durable:
        url = durable.create_database("ledger")
        timings["postgres, durable cluster, synchronous_commit=off"] = sent_and_billed_us(
            PostgresSpendLedger(url), requests
        )
        flushing = PostgresSpendLedger(url)
        with flushing._conn.cursor() as cur:  # the alternative the ledger does not take: a WAL flush per row
            cur.execute("SET synchronous_commit = on")
        timings["postgres, durable cluster, synchronous_commit=on"] = sent_and_billed_us(
            flushing, requests, dataset="flushed"
        )
    for what, (write_us, check_us) in timings.items():
        print(f"spend ledger, {what}: sent+billed {write_us:.0f} us per request, halted() {check_us:.0f} us")
