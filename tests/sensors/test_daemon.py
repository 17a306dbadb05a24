"""The deployed path, for real: `dagster-daemon` with the shipped instance config (deploy/dagster.yaml: queued
runs, per-provider limits) and workspace.yaml. A file dropped in the watched folder becomes a dataset; the
daemon's sensor tick requests its chunk runs, the run queue launches each in its own run worker process (the
code location configured from the environment alone: every spec in pipelines/), and the completion sensor
writes the report. The file lands in the folder the banking77 spec watches (`$CHUNKWISE_WATCH_URI`).

Everything else tests sensors by evaluating ticks and launching in process; this one runs nothing in process."""

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _write_banking(path: Path, n: int) -> None:
    """n BANKING77 messages with their gold intent, in the columns the banking77 spec reads (`text,category`)."""
    with (ROOT / "data" / "banking77" / "test.csv").open(newline="") as f:
        rows = random.Random(7).sample(list(csv.DictReader(f)), n)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(rows)


def _wait_for(condition, timeout_s: float, what: str, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(
        f"timed out after {timeout_s:.0f}s waiting for {what}; daemon log:\n{log.read_text()[-4000:]}"
    )


@pytest.mark.timeout(420)
def test_the_daemon_runs_a_dropped_file_end_to_end_through_the_run_queue(start_sim, tmp_path):
    sim = start_sim({"seed": 3})
    dagster_home, home, inbox = tmp_path / "dagster", tmp_path / "home", tmp_path / "inbox"
    dagster_home.mkdir()
    inbox.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "CHUNKWISE_HOME": str(home),
        "CHUNKWISE_WATCH_URI": str(inbox),
        "CHUNKWISE_LLM_BASE_URL": f"{sim.base_url}/v1",
        "CHUNKWISE_LLM_API_KEY": sim.api_key,
        # The reviews spec is in the same code location: its Anthropic profile must resolve too.
        "CHUNKWISE_ANTHROPIC_BASE_URL": sim.base_url,
        "CHUNKWISE_ANTHROPIC_API_KEY": sim.api_key,
    }
    env.pop("CHUNKWISE_S3_ENDPOINT_URL", None)
    workspace = ["-w", str(ROOT / "workspace.yaml")]
    subprocess.run([BIN / "dagster", "sensor", "start", "--start-all", *workspace], env=env, cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    _write_banking(inbox / "tickets.csv", 300)
    (inbox / "tickets.csv._SUCCESS").write_text("")

    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        daemon = subprocess.Popen([BIN / "dagster-daemon", "run", *workspace], env=env, cwd=ROOT, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:

            def chunk_runs() -> list[dg.DagsterRun]:
                return instance.get_runs(filters=dg.RunsFilter(job_name="banking77__chunk_job"))

            _wait_for(lambda: len(chunk_runs()) == 2, 120, "the sensor to request both chunk runs", log)
            runs = _wait_for(
                lambda: (r := chunk_runs()) and all(x.is_finished for x in r) and r,
                240,
                "the chunk runs",
                log,
            )
            assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
            assert {r.tags["dagster/sensor_name"] for r in runs} == {"banking77__new_dataset_sensor"}
            assert {r.tags["chunkwise/provider"] for r in runs} == {"openai"}
            dataset_id = runs[0].tags["chunkwise/dataset"]

            report = home / "reports" / dataset_id / "completion_report.json"
            _wait_for(report.exists, 150, "the completion report", log)
            summary = json.loads(report.read_text())
            assert summary["total_items"] == 300 and summary["succeeded"] == 300 and summary["failed"] == 0
            assert summary["total_cost_usd"] == pytest.approx(sim.stats()["billed_usd"], abs=1e-6)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
