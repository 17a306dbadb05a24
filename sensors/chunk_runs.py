"""The one way the sensors build a chunk's run request (key and tags), and the jobs a sensor declares.

A sensor may serve several pipelines (llm_assets/layout.py), so a request names its job (`job_name`: the
pipeline's `<pipeline>__chunk_job`) and a sensor declares every job it may launch (`sensor_targets`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import dagster as dg

from llm_assets.chunk_status import ATTEMPT_TAG, DATASET_TAG, PROVIDER_TAG
from llm_assets.layout import PipelineLayout
from llm_assets.partitions import parse_chunk_key
from llm_assets.run_liveness import launcher_tags

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

LAUNCHED_BY_TAG = "chunkwise/launched_by"

ExecutableJob: TypeAlias = "dg.JobDefinition | UnresolvedAssetJobDefinition"
"""A job a sensor can target: a spec pipeline's come from `pipeline_definitions(spec).jobs`."""


def layout_providers(layout: PipelineLayout) -> tuple[str, ...]:
    """The providers whose halt stops `layout`'s launches; the first labels its chunk runs (`chunkwise/provider`,
    what the run queue's per-provider limits count)."""
    return layout.providers


def chunk_run_request(
    partition_key: str, attempt: int, provider: str, launched_by: str, job_name: str | None = None
) -> dg.RunRequest:
    """The run of one chunk's `attempt`-th try; its run_key makes a second launch of the same try a no-op.
    `job_name`: the pipeline's chunk job (None: the sensor's only job)."""
    dataset_id, _ = parse_chunk_key(partition_key)
    return dg.RunRequest(
        run_key=f"{partition_key}:attempt-{attempt}",
        partition_key=partition_key,
        job_name=job_name,
        tags={
            DATASET_TAG: dataset_id,
            PROVIDER_TAG: provider,
            ATTEMPT_TAG: str(attempt),
            LAUNCHED_BY_TAG: launched_by,
            **launcher_tags(),
        },
    )


def sensor_targets(job_names: Sequence[str], jobs: Iterable[ExecutableJob] = ()) -> dict[str, Any]:
    """The `@dg.sensor` target argument of a sensor that launches `job_names`: `job=` or `jobs=` with the
    definitions found in `jobs`, or `job_name=` for a single job defined elsewhere.

    Dagster names several targets of one sensor only by their definitions, so a sensor serving several
    pipelines needs each spec pipeline's jobs (`pipeline_definitions(spec).jobs`) in `jobs`."""
    by_name = {job.name: job for job in jobs}
    names = list(dict.fromkeys(job_names))
    if len(names) == 1:
        return {"job": by_name[names[0]]} if names[0] in by_name else {"job_name": names[0]}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(
            f"a sensor that launches several jobs needs their definitions, and {', '.join(missing)} were not "
            "given: pass `jobs=` with each spec pipeline's jobs (`pipeline_definitions(spec).jobs`)"
        )
    return {"jobs": [by_name[name] for name in names]}
