"""kill -9 in the middle of a chunk, then resume: nothing lost, nothing duplicated, at most in-flight re-paid."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from pipeline_support import write_dataset

from io_managers.parquet_files import read_parquet
from tests.spec_pipelines import layout_of, point_at, register_file, run_chunk, spec_defs, test_spec

pytestmark = pytest.mark.slow
CONCURRENCY = 8
CLASSIFY_MODEL = "gpt-6-luna"


@pytest.fixture(params=["files", "postgres"])
def checkpoint_backend(request, monkeypatch):
    """The embedded backend (CRC-framed files under the home) or the shared one (CHUNKWISE_STATE_URL: a table in
    a real PostgreSQL, resources/checkpoints_pg.py); the child inherits the variable. Yields the URL or None."""
    if request.param == "files":
        monkeypatch.delenv("CHUNKWISE_STATE_URL", raising=False)
        yield None
        return
    url = request.getfixturevalue("postgres_dsn")
    monkeypatch.setenv("CHUNKWISE_STATE_URL", url)
    yield url


def checkpointed_items(url: str | None, home: Path) -> int:
    """Items the killed child recorded, read from the backend itself."""
    if url is None:
        return sum(
            1 for _ in (home / "checkpoints").rglob("*.json*")
        )  # files exist: the file backend was used
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM chunkwise_checkpoints")
        return int(cur.fetchone()[0])


def test_kill_mid_chunk_repays_at_most_the_requests_in_flight(
    start_sim, tmp_path, monkeypatch, checkpoint_backend
):
    sim = start_sim({"seed": 5, "latency": {"base_ms": 20, "jitter_ms": 20}})
    point_at(sim, monkeypatch)  # the child inherits the variables
    write_dataset(tmp_path / "tiny.csv", 250)
    home, instance_dir = tmp_path / "home", tmp_path / "instance"
    instance_dir.mkdir()
    # classified only (the child runs the same spec); the resume runs without a concurrency cap of its own.
    spec = test_spec(stages={"enriched": {"route": "none"}})
    with dg.DagsterInstance.local_temp(tempdir=str(instance_dir)) as instance:
        dataset = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=250)
    key = dataset.partition_keys[0]

    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("crash_child.py")), str(home), str(instance_dir), key,
         str(CONCURRENCY)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while sim.stats()["requests_billed"] < 100:
        assert child.poll() is None, f"child ended before the kill: {child.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "the child made no progress"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    time.sleep(0.5)  # requests the child had in flight still finish (and bill) at the provider
    paid_before_resume = sim.stats()["requests_billed"]
    assert paid_before_resume < 250, "the kill came too late to test anything"
    recorded = checkpointed_items(checkpoint_backend, home)
    assert recorded > 0, "the killed child recorded nothing in the backend under test"
    if checkpoint_backend is not None:
        assert not (home / "checkpoints").exists(), "the shared backend wrote checkpoint files"

    defs = spec_defs(spec, home)
    with dg.DagsterInstance.local_temp(tempdir=str(instance_dir)) as instance:
        result = run_chunk(defs, spec, instance, key)
        assert result.success
        mats = {
            e.asset_key: e.event_specific_data.materialization
            for e in result.get_asset_materialization_events()
        }
        uri = mats[layout_of(spec).key("classified")].metadata["uri"].value
    frame = read_parquet(uri)
    assert len(frame) == 250 and frame["item_id"].is_unique

    # the quality gate's judge (another model) also bills: count the stage only
    billed = [
        r
        for r in sim.requests()
        if r["model"] == CLASSIFY_MODEL and str(r["status"]) == "200" and r["billed_usd"] > 0
    ]
    per_item = collections.Counter(r["user_sha256"] for r in billed)
    repaid = sum(n - 1 for n in per_item.values())
    print(f"kill -9 after {paid_before_resume} paid requests: {repaid} items re-paid")
    assert len(per_item) == 250
    assert repaid <= CONCURRENCY, f"{repaid} items were paid twice; at most {CONCURRENCY} were in flight"
