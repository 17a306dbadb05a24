"""The deployed path, for real: `dagster-daemon` with the shipped instance config (deploy/dagster.yaml: queued
runs, per-provider limits) and workspace.yaml, and nothing turned on by hand: the sensors are on by default and
the code location creates the inbox they watch. A file dropped in banking77's default inbox
(`$CHUNKWISE_HOME/inbox/banking77`) is registered by a `banking77__register_job` run; a later tick of its sensor
returns the chunk partitions as a dynamic partitions request, which the daemon applies, and the chunk runs, which
the run queue launches each in its own run worker process (the code location configured from the environment
alone: every spec in pipelines/); the completion sensor writes the report. No sensor tick fails.

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
from dagster._core.scheduler.instigation import InstigatorState, InstigatorTick, InstigatorType, TickStatus

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


def _sensor_states(instance: dg.DagsterInstance) -> list[InstigatorState]:
    return list(instance.all_instigator_state(instigator_type=InstigatorType.SENSOR))


def _sensor_ticks(instance: dg.DagsterInstance, name: str) -> list[InstigatorTick]:
    """Every tick the daemon recorded for the sensor `name`, newest first."""
    [state] = [s for s in _sensor_states(instance) if s.instigator_name == name]
    return list(instance.get_ticks(state.instigator_origin_id, state.selector_id))


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
    dagster_home, home = tmp_path / "dagster", tmp_path / "home"
    inbox = (
        home / "inbox" / "banking77"
    )  # the banking77 spec's default: nobody creates it but the code location
    dagster_home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "CHUNKWISE_HOME": str(home),
        "CHUNKWISE_LLM_BASE_URL": f"{sim.base_url}/v1",
        "CHUNKWISE_LLM_API_KEY": sim.api_key,
        # The reviews spec is in the same code location: its Anthropic profile must resolve too.
        "CHUNKWISE_ANTHROPIC_BASE_URL": sim.base_url,
        "CHUNKWISE_ANTHROPIC_API_KEY": sim.api_key,
        # Every sensor ticks each second instead of its own 30-60 s (what `make demo` sets): the same ticks and
        # runs, in less waiting; the daemon, the queue and the sensors are the shipped ones.
        "CHUNKWISE_SENSOR_INTERVAL_S": "1",
    }
    for name in ("CHUNKWISE_S3_ENDPOINT_URL", "CHUNKWISE_WATCH_URI", "CHUNKWISE_REVIEWS_WATCH_URI"):
        env.pop(name, None)
    workspace = ["-w", str(ROOT / "workspace.yaml")]

    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        daemon = subprocess.Popen([BIN / "dagster-daemon", "run", *workspace], env=env, cwd=ROOT, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        _wait_for(inbox.is_dir, 120, "the code location to create the inbox", log)
        _write_banking(inbox / "tickets.csv", 300)
        (inbox / "tickets.csv._SUCCESS").write_text("")
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:

            def chunk_runs() -> list[dg.DagsterRun]:
                return instance.get_runs(filters=dg.RunsFilter(job_name="banking77__chunk_job"))

            _wait_for(lambda: len(chunk_runs()) == 2, 180, "the sensor to request both chunk runs", log)
            [registration] = instance.get_runs(filters=dg.RunsFilter(job_name="banking77__register_job"))
            assert registration.status == dg.DagsterRunStatus.SUCCESS
            assert registration.tags["dagster/sensor_name"] == "banking77__new_dataset_sensor"
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
            assert registration.tags["chunkwise/registered_dataset"] == dataset_id
            # The partitions were added by the daemon, from the sensor's dynamic partitions request.
            keys = sorted(r.tags["dagster/partition"] for r in runs)
            assert sorted(instance.get_dynamic_partitions("banking77__chunks")) == keys
            added = [
                (result.partitions_def_name, sorted(result.added_partitions or []))
                for tick in _sensor_ticks(instance, "banking77__new_dataset_sensor")
                for result in tick.tick_data.dynamic_partitions_request_results
            ]
            assert added == [("banking77__chunks", keys)]

            report = home / "reports" / dataset_id / "completion_report.json"
            _wait_for(report.exists, 150, "the completion report", log)
            summary = json.loads(report.read_text())
            assert summary["total_items"] == 300 and summary["succeeded"] == 300 and summary["failed"] == 0
            assert summary["total_cost_usd"] == pytest.approx(sim.stats()["billed_usd"], abs=1e-6)
            # Every sensor ticked on its own (none was started by hand), and none of their ticks failed.
            ticked = {state.instigator_name for state in _sensor_states(instance)}
            assert {"banking77__new_dataset_sensor", "reviews__new_dataset_sensor", "chunk_backfill_sensor",
                    "dataset_completion_sensor", "batch_poll_sensor", "check_alert_sensor"} <= ticked  # fmt: skip
            failed = [
                (name, tick.error.message if tick.error else "")
                for name in ticked
                for tick in _sensor_ticks(instance, name)
                if tick.status == TickStatus.FAILURE
            ]
            assert failed == []
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
