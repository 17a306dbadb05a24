"""Shared by the recovery tests: the pipeline + sensors wired to a simulator, sensor ticks, and a stand-in for
the daemon that launches what a tick requested (in process, with the request's partition, tags and run key,
skipping a run key the sensor already used, as the daemon does)."""

from __future__ import annotations

import csv
import random
import time
from pathlib import Path

import dagster as dg
from dagster._core.definitions.partitions.context import partition_loading_context

from llm_assets.builtin import build_defs

BANKING = Path(__file__).resolve().parents[2] / "data" / "banking77" / "test.csv"
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
# Fast failure under an outage: few attempts per item, the breaker opens after 3 consecutive failures.
FAST_FAIL_LLM = {"max_attempts": 2, "circuit_breaker_failures": 3, "max_concurrency": 4, "timeout_s": 5.0}


def write_labelled_dataset(path: Path, n: int, seed: int = 7, markers: dict[int, str] | None = None) -> None:
    """n BANKING77 rows with gold labels (so the quality judge is never called) and two teams.

    `markers` appends a simulator marker to some rows' text, e.g. {3: "[[refuse]]"} (billed, then dead-lettered)."""
    with BANKING.open(newline="") as f:
        rows = random.Random(seed).sample(list(csv.DictReader(f)), n)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "team", "label"])
        for i, row in enumerate(rows):
            text = row["text"] + (f" {markers[i]}" if markers and i in markers else "")
            w.writerow([f"item-{i:04d}", text, "cards" if i % 3 else "payments", row["category"]])


def recovery_defs(
    base_url: str, api_key: str, home: Path, sensors: list[dg.SensorDefinition], s3=None, **llm
) -> dg.Definitions:
    """The pipeline (stages, quality gates, ledger, completion) and the given sensors (`s3`: an S3Resource)."""
    return build_defs(
        base_url=f"{base_url}/v1",
        api_key=api_key,
        home=home,
        settings={"route": "all"},
        llm={**FAST_FAIL_LLM, **llm},
        completion={"min_success_rate": 0.95},
        sensors=sensors,
        s3=s3,
    )


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, defs: dg.Definitions, cursor: str | None):
    """One evaluation, as the daemon runs it: (run requests, new cursor, skip message)."""
    resources = {k: v for k, v in (defs.resources or {}).items() if k in sensor.required_resource_keys}
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources)
    # The daemon evaluates ticks inside this context, so dynamic partition keys validate against the instance.
    with partition_loading_context(dynamic_partitions_store=instance):
        data = sensor.evaluate_tick(context)
    return list(data.run_requests or []), data.cursor, data.skip_message


def launch(
    defs: dg.Definitions, instance: dg.DagsterInstance, sensor: dg.SensorDefinition, request: dg.RunRequest
) -> dg.ExecuteInProcessResult | None:
    """Run what the daemon would launch for `request`; None when this sensor already used its run key."""
    used = instance.get_runs(
        filters=dg.RunsFilter(tags={RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: sensor.name}), limit=1
    )
    if used:
        return None
    job_name = request.job_name or sensor.job_name
    job = defs.resolve_job_def(job_name)
    tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: sensor.name}
    return job.execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=tags, raise_on_error=False
    )


def runs_of(instance: dg.DagsterInstance, partition: str) -> list[dg.RunRecord]:
    """Every run of one partition, oldest first."""
    records = instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/partition": partition}))
    return sorted(records, key=lambda r: r.create_timestamp)


def wait_until(seconds: float) -> None:
    time.sleep(max(0.0, seconds))
