"""The shared backend's database lost in the middle of a chunk (issue #14, "Postgres lost mid-run"): the chunk
fails as retryable (the backfill sensor re-runs it), nothing it recorded is lost, and the re-run pays again at
most for the requests that were in flight. Counted at the simulator (its request log), not by Chunkwise.

Everything Chunkwise keeps between runs that the shared backend holds is in the one database here: the limit and
budget store (the profile sets a token limit and a run budget, so every request goes through it), the spend
ledger and the checkpoints. The outage: every other session of the database is terminated
(`pg_terminate_backend`), as a restart or failover of the server does, while the chunk's requests are in flight.
The step fails as retryable and the spec's retry policy (`retry:`) runs it again within the run, from its
checkpoint; had the retries run out, the run's failure class is `retryable` and the backfill sensor re-runs it.
"""

from __future__ import annotations

import collections
import csv
import threading
import time

import dagster as dg
import psycopg2
import pytest

from llm_assets.failure_class import FailureClass, run_failure_class
from tests.spec_pipelines import ROOT, point_at, register_file, run_chunk, spec_defs, test_spec

pytestmark = pytest.mark.slow
CONCURRENCY = 8
MODEL = "gpt-6-luna"


def terminate_other_sessions(url: str) -> int:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cur.fetchone()[0])


def banking_rows(path, n: int):
    """The first `n` BANKING77 rows as the tests' `id,text,team,label` CSV at `path`."""
    with (
        (ROOT / "data" / "banking77" / "test.csv").open(newline="") as src,
        path.open("w", newline="") as dst,
    ):
        out = csv.writer(dst)
        out.writerow(["id", "text", "team", "label"])
        for i, row in zip(range(n), csv.DictReader(src), strict=False):
            out.writerow([f"item-{i:03d}", row["text"], "cards", row["category"]])
    return path


def test_a_database_lost_mid_chunk_fails_it_retryable_and_the_rerun_pays_only_what_was_in_flight(
    postgres_dsn, start_sim, monkeypatch, tmp_path
):
    sim = start_sim({"seed": 4, "latency": {"base_ms": 30, "jitter_ms": 30}})
    point_at(sim, monkeypatch)
    monkeypatch.setenv("CHUNKWISE_STATE_URL", postgres_dsn)
    data = banking_rows(tmp_path / "tickets.csv", 250)
    spec = test_spec(
        stages={"enriched": {"route": "none"}},
        providers={"default": {"max_concurrency": CONCURRENCY, "tokens_per_minute": 50_000_000}},
        budgets={"run_usd": 5.0},
    )
    home = tmp_path / "home"
    defs = spec_defs(spec, home)

    def cut_when_busy(done: threading.Event, killed: list[int]) -> None:
        deadline = time.monotonic() + 60
        while sim.stats()["requests_billed"] < 80 and time.monotonic() < deadline and not done.is_set():
            time.sleep(0.01)
        killed.append(terminate_other_sessions(postgres_dsn))
        killed.append(sim.stats()["requests_billed"])

    with dg.instance_for_test() as instance:
        dataset = register_file(spec, data, instance, home, chunk_size=250)
        key = dataset.partition_keys[0]
        done, killed = threading.Event(), []
        cutter = threading.Thread(target=cut_when_busy, args=(done, killed))
        cutter.start()
        first = run_chunk(defs, spec, instance, key, raise_on_error=False)
        done.set()
        cutter.join()
        assert killed and killed[0] > 0, "the outage came after the chunk ended: nothing was tested"
        # The stage failed as retryable and the spec's retry policy re-ran it in the same run, from the checkpoint.
        retried = [e for e in first.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
        assert retried, "the stage went on as if its database were there"
        if not first.success:  # the retries ran out while the database was away: the backfill sensor's turn
            assert run_failure_class(instance, first.run_id) == FailureClass.RETRYABLE
            assert run_chunk(defs, spec, instance, key, attempt=2).success

    billed = [
        r for r in sim.requests() if r["model"] == MODEL and str(r["status"]) == "200" and r["billed_usd"] > 0
    ]
    per_item = collections.Counter(r["user_sha256"] for r in billed)
    repaid = sum(n - 1 for n in per_item.values())
    print(f"outage after {killed[1]} paid requests: {repaid} items paid twice")
    assert killed[1] < 250, "every item was paid before the outage: nothing left to test"
    assert len(per_item) == 250
    assert repaid <= CONCURRENCY, f"{repaid} items were paid twice; at most {CONCURRENCY} were in flight"


def test_s3_lost_mid_chunk_fails_the_step_retryable_and_the_retry_pays_nothing_again(
    start_sim, monkeypatch, tmp_path
):
    """The S3 server (moto, in this process) stopped while the chunk's requests are in flight and started again on
    the same port, with what it held, once a step has failed for it: the stage's output write fails (after
    botocore's own retries), the step fails as retryable, the retry finds every item in the checkpoint (nothing is
    sent again) and writes the output."""
    import uuid

    from moto.server import ThreadedMotoServer

    from io_managers.s3_config import S3_ENDPOINT_ENV, s3_from_env
    from llm_assets.location import OUTPUTS_URI_ENV, defs_from_env

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {
        S3_ENDPOINT_ENV: f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"outage-{uuid.uuid4().hex[:8]}"
    s3_from_env().get_client().create_bucket(Bucket=bucket)
    monkeypatch.setenv(OUTPUTS_URI_ENV, f"s3://{bucket}/out")
    sim = start_sim({"seed": 8, "latency": {"base_ms": 30, "jitter_ms": 30}})
    point_at(sim, monkeypatch)
    data = banking_rows(tmp_path / "tickets.csv", 250)
    spec = test_spec(
        stages={"enriched": {"route": "none"}}, providers={"default": {"max_concurrency": CONCURRENCY}}
    )
    home = tmp_path / "home"
    defs = defs_from_env(home, specs=[spec])
    outage: list[float] = []
    servers: list[ThreadedMotoServer] = []  # the restarted S3 server, stopped when the test ends

    def cut_and_restore(done: threading.Event, instance: dg.DagsterInstance) -> None:
        deadline = time.monotonic() + 120
        while sim.stats()["requests_billed"] < 100 and time.monotonic() < deadline and not done.is_set():
            time.sleep(0.01)
        server.stop()
        outage.append(sim.stats()["requests_billed"])
        # Away until a step has failed for it (botocore's own retries of the write give up first).
        failed = (dg.DagsterEventType.STEP_UP_FOR_RETRY, dg.DagsterEventType.STEP_FAILURE)
        while time.monotonic() < deadline and not done.is_set():
            runs = instance.get_runs(limit=1)
            if runs and any(instance.all_logs(runs[0].run_id, of_type=kind) for kind in failed):
                break
            time.sleep(0.2)
        restarted = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        restarted.start()
        servers.append(restarted)
        outage.append(time.monotonic())

    with dg.instance_for_test() as instance:
        dataset = register_file(spec, data, instance, home, chunk_size=250)
        key = dataset.partition_keys[0]
        done = threading.Event()
        helper = threading.Thread(target=cut_and_restore, args=(done, instance))
        helper.start()
        try:
            result = run_chunk(defs, spec, instance, key, raise_on_error=False)
        finally:
            done.set()
            helper.join()
        assert len(outage) == 2 and outage[0] < 250, "S3 went away after the chunk's requests: nothing tested"
        retried = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
        assert retried, "no step failed while S3 was away"
        if not result.success:
            assert run_failure_class(instance, result.run_id) == FailureClass.RETRYABLE
            assert run_chunk(defs, spec, instance, key, attempt=2).success
    billed = [
        r for r in sim.requests() if r["model"] == MODEL and str(r["status"]) == "200" and r["billed_usd"] > 0
    ]
    per_item = collections.Counter(r["user_sha256"] for r in billed)
    assert len(per_item) == 250 and max(per_item.values()) == 1, "an item was paid twice across the S3 outage"
    try:
        listed = s3_from_env().get_client().list_objects_v2(Bucket=bucket, Prefix="out/banking77/classified/")
        assert [o["Key"] for o in listed.get("Contents", [])] == [f"out/banking77/classified/{key}.parquet"]
    finally:
        for restarted in servers:
            restarted.stop()
