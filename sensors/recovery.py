"""The sensors that run nightly datasets unattended, as one list for the code location (llm_assets/location.py).
All of them are on by default (`DefaultSensorStatus.RUNNING`; why each is safe unattended: docs/sensors.md).

Per pipeline, `<pipeline>__new_dataset_sensor` (sensors/new_datasets.py): watches its spec's `input.watch`
(default `<CHUNKWISE_HOME>/inbox/<pipeline>`), registers each new file in a `<pipeline>__register_job` run
(sensors/registration.py) and starts its chunks on `<pipeline>__chunk_job`.
One of each of these, serving every pipeline of the list:
- `chunk_backfill_sensor` (sensors/backfill.py): re-runs retryable chunk failures with backoff on the failed
  run's own chunk job, by its pipeline's `backfill` policy; stops on job-fatal ones until a person clears the
  provider;
- `dataset_completion_sensor` (sensors/completion.py): the report, the webhook and the cleanup, once per dataset,
  by the completion job of the pipeline the dataset was registered for;
- `batch_poll_sensor` (sensors/batches.py): polls the provider batches of batch-mode chunks through the owning
  pipeline's LLM resource and requests the run that collects them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from llm_assets.pipeline_assets import spec_layout
from llm_assets.spec import PipelineSpec
from sensors.backfill import BackfillPolicy, build_backfill_sensor
from sensors.batches import build_batch_poll_sensor
from sensors.chunk_runs import ExecutableJob
from sensors.completion import build_completion_sensor
from sensors.new_datasets import build_pipeline_new_dataset_sensor


def build_recovery_sensors(
    *,
    specs: Sequence[PipelineSpec],
    jobs: Sequence[ExecutableJob],
    policy: BackfillPolicy | None = None,
    watch_uris: Mapping[str, str] | None = None,
    inbox: Path | None = None,
    minimum_interval_seconds: int | None = None,
) -> list[dg.SensorDefinition]:
    """The sensors of the spec pipelines in `specs`: a new-dataset sensor each (watching `watch_uris[<pipeline>]`,
    else its `input.watch`, else `<inbox>/<pipeline>`, default inbox `<CHUNKWISE_HOME>/inbox`; chunks of its
    `input.chunk_size`), and one backfill, completion and batch-poll sensor for all. `jobs`: the pipelines' job
    definitions (`pipeline_definitions(spec).jobs` of each: the shared sensors target them by definition);
    `policy`: the backfill policy of a pipeline whose spec has none (every spec has one: its defaults);
    `minimum_interval_seconds`: every sensor's, over each one's own default (30-60 s; `make demo` uses 1, and the
    daemon evaluates sensors at most every 5 s)."""
    layouts = [spec_layout(spec) for spec in specs]
    every: dict[str, Any] = (
        {} if minimum_interval_seconds is None else {"minimum_interval_seconds": minimum_interval_seconds}
    )
    new_datasets = [
        build_pipeline_new_dataset_sensor(
            spec, (watch_uris or {}).get(spec.name), jobs=list(jobs), inbox=inbox, **every
        )
        for spec in specs
    ]
    return [
        *new_datasets,
        build_backfill_sensor(policy=policy, layouts=layouts, jobs=list(jobs), **every),
        build_completion_sensor(layouts=layouts, jobs=list(jobs), **every),
        build_batch_poll_sensor(layouts=layouts, jobs=list(jobs), **every),
    ]
