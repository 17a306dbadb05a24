"""Shared by the batch-mode tests: the pipeline wired to a simulator per provider, in online or batch mode, and
a stand-in for the daemon that ticks `batch_poll_sensor` and launches what it requests (each run key once)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
from dagster._core.definitions.partitions.context import partition_loading_context

from llm_assets.builtin import build_defs
from sensors.batches import build_batch_poll_sensor

RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
MODELS = {
    "openai": ("gpt-6-luna", "gpt-6.2-sol"),
    "anthropic": ("claude-haiku-5-5", "claude-sonnet-5-5"),
}


def provider_defs(
    sim, home: Path, provider: str, mode: str, llm: dict | None = None, **settings
) -> dg.Definitions:
    """The pipeline against `sim` for one provider; both LLM stages in `mode`; no judge (gold-free spend only
    from the stages, so the simulator's ledger is exactly the stages' cost)."""
    classify_model, enrich_model = MODELS[provider]
    return build_defs(
        provider=provider,
        base_url=f"{sim.base_url}/v1" if provider == "openai" else sim.base_url,
        api_key=sim.api_key,
        home=home,
        classify_model=classify_model,
        enrich_model=enrich_model,
        settings={"route": "all", "classify_mode": mode, "enrich_mode": mode, **settings},
        llm=llm,
        quality_gates={"judge_enabled": False, "min_success_rate": 0.5},
        sensors=[build_batch_poll_sensor(minimum_interval_seconds=1)],
    )


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None):
    """One evaluation of batch_poll_sensor, as the daemon runs it: (run requests, cursor, asset events)."""
    sensor = next(s for s in defs.sensors if s.name == "batch_poll_sensor")
    resources = {k: v for k, v in (defs.resources or {}).items() if k in sensor.required_resource_keys}
    with (
        dg.build_sensor_context(
            instance=instance, cursor=cursor, definitions=defs, resources=resources
        ) as context,
        partition_loading_context(dynamic_partitions_store=instance),
    ):
        data = sensor.evaluate_tick(context)
    return list(data.run_requests or []), data.cursor, list(data.asset_events or [])


def launch(
    defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest
) -> dg.ExecuteInProcessResult | None:
    """Run what the daemon launches for `request`; None when the sensor already used its run key."""
    used = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: request.run_key}), limit=1)
    if used:
        return None
    tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: "batch_poll_sensor"}
    return defs.resolve_job_def("chunk_pipeline").execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        asset_selection=request.asset_selection,
        tags=tags,
        raise_on_error=False,
    )


def drive_batches(
    defs: dg.Definitions, instance: dg.DagsterInstance, timeout_s: float = 60.0
) -> list[dg.ExecuteInProcessResult]:
    """Tick the sensor and launch its requests until a tick finds no batch at the provider."""
    results: list[dg.ExecuteInProcessResult] = []
    cursor = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        requests, cursor, _ = tick(defs, instance, cursor)
        if not requests:
            if not json.loads(cursor or "{}"):  # the cursor lists every chunk stage with pending batches
                return results
            time.sleep(0.3)
            continue
        for request in requests:
            result = launch(defs, instance, request)
            if result is not None:
                results.append(result)
    raise AssertionError(f"batches still pending after {timeout_s}s (last cursor {cursor})")


def latest_meta(instance: dg.DagsterInstance, asset: str, partition: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{asset} {partition} is not materialized"
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def latest_observation(instance: dg.DagsterInstance, asset: str, partition: str) -> dict:
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{asset} {partition} has no observation"
    return {k: v.value for k, v in records[0].asset_observation.metadata.items()}
