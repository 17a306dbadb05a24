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
from pipeline_support import materialize_partition, pipeline_defs, register, write_dataset

from io_managers.parquet_files import read_parquet

pytestmark = pytest.mark.slow
CONCURRENCY = 8


def test_kill_mid_chunk_repays_at_most_the_requests_in_flight(start_sim, tmp_path):
    sim = start_sim({"seed": 5, "latency": {"base_ms": 20, "jitter_ms": 20}})
    write_dataset(tmp_path / "tiny.csv", 250)
    home, instance_dir = tmp_path / "home", tmp_path / "instance"
    instance_dir.mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(instance_dir)) as instance:
        dataset = register(tmp_path / "tiny.csv", instance, home, chunk_size=250)
    key = dataset.partition_keys[0]

    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("crash_child.py")), f"{sim.base_url}/v1", sim.api_key,
         str(home), str(instance_dir), key, str(CONCURRENCY)],
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

    defs = pipeline_defs(f"{sim.base_url}/v1", sim.api_key, home, settings={"route": "none"})
    with dg.DagsterInstance.local_temp(tempdir=str(instance_dir)) as instance:
        result = materialize_partition(defs, instance, key)
        assert result.success
        mats = {
            e.asset_key.path[-1]: e.event_specific_data.materialization
            for e in result.get_asset_materialization_events()
        }
        uri = mats["classified"].metadata["uri"].value
    frame = read_parquet(uri)
    assert len(frame) == 250 and frame["item_id"].is_unique

    classify = "gpt-6-luna"  # the quality gate's judge (another model) also bills: count the stage only
    billed = [
        r
        for r in sim.requests()
        if r["model"] == classify and str(r["status"]) == "200" and r["billed_usd"] > 0
    ]
    per_item = collections.Counter(r["user_sha256"] for r in billed)
    repaid = sum(n - 1 for n in per_item.values())
    print(f"kill -9 after {paid_before_resume} paid requests: {repaid} items re-paid")
    assert len(per_item) == 250
    assert repaid <= CONCURRENCY, f"{repaid} items were paid twice; at most {CONCURRENCY} were in flight"
