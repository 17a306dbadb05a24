"""Shared by the recovery tests: BANKING77's spec pipeline with the sensors the code location runs for it, wired
to a simulator, sensor ticks, and a stand-in for the daemon that applies a tick's dynamic partition requests and
launches what it requested (in process, with the request's partition, config, tags and run key, skipping a run key
the sensor already used, as the daemon does)."""

from __future__ import annotations

import csv
import random
import time
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.definitions.sensor_definition import SensorExecutionData

from llm_assets.location import build_defs
from llm_assets.pipeline_assets import spec_layout
from llm_assets.spec import PipelineSpec
from sensors.chunk_runs import chunk_run_request, layout_providers
from tests.spec_pipelines import test_spec

BANKING = Path(__file__).resolve().parents[2] / "data" / "banking77" / "test.csv"
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
BACKFILL = "chunk_backfill_sensor"
COMPLETION = "dataset_completion_sensor"
# Fast failure under an outage: few attempts per item, the breaker opens after 3 consecutive failures.
FAST_FAIL = {"max_attempts": 2, "circuit_breaker_failures": 3, "max_concurrency": 4, "timeout_s": 5.0}
# One quick in-run retry, standing for "Dagster's retries are used up" without waiting the spec's 5-10-20 s.
QUICK_RETRY = {"max_retries": 1, "delay_s": 0.05, "jitter": "none"}


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


def recovery_spec(
    *,
    providers: dict[str, Any] | None = None,
    input: dict[str, Any] | None = None,  # noqa: A002 - the spec's own field name
    **fields: Any,
) -> PipelineSpec:
    """BANKING77's spec as the recovery tests run it, on files of `write_labelled_dataset`: every item enriched
    (`route: all`), items failing fast under an outage (FAST_FAIL), one quick in-run retry (QUICK_RETRY) and a
    success threshold of 0.95. `providers` overrides the `default` profile's fields (e.g. `api_key_env`);
    `input` and `fields` are other spec overrides (`input={"chunk_size": 20}`)."""
    return test_spec(
        stages={"enriched": {"route": "all"}},
        providers={"default": {**FAST_FAIL, **(providers or {})}},
        retry=QUICK_RETRY,
        completion={"min_success_rate": 0.95},
        input=input,
        **fields,
    )


def recovery_location(
    spec: PipelineSpec, home: Path, *, watch: str | None = None, s3: Any = None
) -> tuple[dg.Definitions, dict[str, dg.SensorDefinition]]:
    """The code location of `spec` alone (llm_assets/location.py `build_defs`), with its sensors by name:
    `<pipeline>__new_dataset_sensor` (watching `watch`, a folder or s3:// prefix; default
    `<home>/inbox/<pipeline>`), `chunk_backfill_sensor` (the spec's `backfill` policy),
    `dataset_completion_sensor`, `batch_poll_sensor`, `check_alert_sensor`. `s3`: an S3Resource. Each call
    builds new sensors: a restarted daemon's."""
    defs = build_defs([spec], home=home, s3=s3, watch_uris={spec.name: watch} if watch else None)
    return defs, {sensor.name: sensor for sensor in defs.sensors or []}


def first_attempt(spec: PipelineSpec, partition_key: str) -> dg.RunRequest:
    """The run the new-dataset sensor requests for a chunk: attempt 1 on the pipeline's chunk job."""
    layout = spec_layout(spec)
    return chunk_run_request(
        partition_key, 1, layout_providers(layout)[0], "new_dataset", job_name=layout.chunk_job
    )


def evaluate(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, defs: dg.Definitions, cursor: str | None
) -> SensorExecutionData:
    """One evaluation, as the daemon runs it, and then what the daemon does with its partition requests: adds
    (or deletes) the dynamic partitions they name, skipping keys that already exist."""
    resources = {k: v for k, v in (defs.resources or {}).items() if k in sensor.required_resource_keys}
    # With the instance's ref, as the daemon's context has: run requests for partitions the same tick asks to add
    # then validate against the instance plus those requests. Opened as a context manager for resources that are
    # generators (the LLM resources); the daemon evaluates ticks inside a partition loading context.
    with (
        dg.build_sensor_context(
            instance=instance,
            instance_ref=instance.get_ref(),
            cursor=cursor,
            definitions=defs,
            resources=resources,
        ) as context,
        partition_loading_context(dynamic_partitions_store=instance),
    ):
        data = sensor.evaluate_tick(context)
    for request in data.dynamic_partitions_requests or []:
        name, keys = request.partitions_def_name, list(request.partition_keys)
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            existing = set(instance.get_existing_dynamic_partitions(name, keys))
            instance.add_dynamic_partitions(name, [k for k in keys if k not in existing])
        else:
            for key in keys:
                instance.delete_dynamic_partition(name, key)
    return data


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, defs: dg.Definitions, cursor: str | None):
    """One evaluation, as the daemon runs it (`evaluate`): (run requests, new cursor, skip message)."""
    data = evaluate(sensor, instance, defs, cursor)
    return list(data.run_requests or []), data.cursor, data.skip_message


def is_registration(request: dg.RunRequest) -> bool:
    """A run of a pipeline's `<pipeline>__register_job` (sensors/registration.py), not a chunk run."""
    return bool(request.job_name and request.job_name.endswith("__register_job"))


def register_landed(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    cursor: str | None,
    requests: list[dg.RunRequest],
) -> tuple[list[dg.RunRequest], str | None, str | None]:
    """Launch the registration runs among `requests` (as the daemon would) and tick again: (the chunk run
    requests of this tick and that one, new cursor, skip message). Every registration run must succeed."""
    registrations = [r for r in requests if is_registration(r)]
    for request in registrations:
        result = launch(defs, instance, sensor, request)
        assert result is None or result.success, f"registration run failed: {request.run_key}"
    chunks = [r for r in requests if not is_registration(r)]
    if not registrations:
        return chunks, cursor, None
    more, cursor, skip = tick(sensor, instance, defs, cursor)
    assert not any(is_registration(r) for r in more), [r.run_key for r in more]
    return chunks + more, cursor, skip


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
        run_config=request.run_config or None,
        instance=instance,
        partition_key=request.partition_key,
        tags=tags,
        raise_on_error=False,
    )


def runs_of(instance: dg.DagsterInstance, partition: str) -> list[dg.RunRecord]:
    """Every run of one partition, oldest first."""
    records = instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/partition": partition}))
    return sorted(records, key=lambda r: r.create_timestamp)


def wait_until(seconds: float) -> None:
    time.sleep(max(0.0, seconds))
