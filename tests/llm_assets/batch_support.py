"""Shared by the batch-mode tests: BANKING77's spec pipeline against a simulator, for either provider, in online
or batch mode, and a stand-in for the daemon that ticks the batch poll sensor and launches what it requests (each
run key once).

The simulator's API key comes from the environment (`tests.spec_pipelines.point_at`); its URL is given here, so
one test can run the same pipeline against two simulators. Child processes import this module too (with the
repository root on `sys.path`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.definitions.partitions.context import partition_loading_context

from llm_assets.spec import PipelineSpec
from sensors.batches import build_batch_poll_sensor
from tests.spec_pipelines import layout_of, spec_defs, test_spec

RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
SENSOR_NAME = "batch_poll_sensor"
MODELS = {
    "openai": ("gpt-6-luna", "gpt-6.2-sol"),
    "anthropic": ("claude-haiku-5-5", "claude-sonnet-5-5"),
}
KEY_ENV = {"openai": "CHUNKWISE_LLM_API_KEY", "anthropic": "CHUNKWISE_ANTHROPIC_API_KEY"}


def provider_spec(
    sim_url: str,
    provider: str = "openai",
    mode: str = "batch",
    route: str = "all",
    max_attempts: int | None = None,
) -> PipelineSpec:
    """BANKING77's spec against the simulator at `sim_url` (its root) on `provider`'s wire format, both stages in
    `mode`, `enriched` on the items `route` selects. No judge (the test files have no gold labels, so the judge
    would be the only other spender): the simulator's ledger is exactly the stages' cost. Chunks with a poison
    item or two still pass the success gates (min 0.5)."""
    classify_model, enrich_model = MODELS[provider]
    profile: dict = {
        "provider": provider,
        "base_url": f"{sim_url}/v1" if provider == "openai" else sim_url,
        "api_key_env": KEY_ENV[provider],
    }
    if max_attempts is not None:
        profile["max_attempts"] = max_attempts
    return test_spec(
        stages={
            "classified": {
                "model": classify_model,
                "mode": mode,
                "gates": {"sampled_quality": None, "success_rate": {"min": 0.5}},
            },
            "enriched": {
                "model": enrich_model,
                "mode": mode,
                "route": route,
                "gates": {"success_rate": {"min": 0.5}},
            },
        },
        providers={"default": profile},
    )


def batch_defs(spec: PipelineSpec, home: Path, **location: Any) -> dg.Definitions:
    """The pipeline as the code location builds it (`location`: spec_defs's `s3`, `outputs_uri`), with the batch
    poll sensor serving it (polling every second)."""
    defs = spec_defs(spec, home, **location)
    # The sensor targets these very job objects: Dagster refuses two definitions of one job name.
    jobs = list(defs.jobs or [])
    sensor = build_batch_poll_sensor(layouts=[layout_of(spec)], jobs=jobs, minimum_interval_seconds=1)
    return dg.Definitions.merge(defs, dg.Definitions(sensors=[sensor]))


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None):
    """One evaluation of the batch poll sensor, as the daemon runs it: (run requests, cursor, asset events)."""
    sensor = next(s for s in defs.sensors if s.name == SENSOR_NAME)
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
    tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: SENSOR_NAME}
    assert request.job_name, "the batch poll sensor names the pipeline's chunk job"
    return defs.resolve_job_def(request.job_name).execute_in_process(
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


def _asset_key(asset: str | dg.AssetKey) -> dg.AssetKey:
    return asset if isinstance(asset, dg.AssetKey) else dg.AssetKey(asset)


def latest_meta(instance: dg.DagsterInstance, asset: str | dg.AssetKey, partition: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=_asset_key(asset), asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{asset} {partition} is not materialized"
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def latest_observation(instance: dg.DagsterInstance, asset: str | dg.AssetKey, partition: str) -> dict:
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=_asset_key(asset), asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{asset} {partition} has no observation"
    return {k: v.value for k, v in records[0].asset_observation.metadata.items()}
