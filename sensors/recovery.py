"""The sensors that run nightly datasets unattended, as one list for definitions.py.

Per pipeline, a new-dataset sensor (sensors/new_datasets.py):
- `new_dataset_sensor` for the built-in BANKING77 pipeline: watches `$CHUNKWISE_WATCH_URI` (a folder or
  s3://bucket/prefix; default `<CHUNKWISE_HOME>/inbox`) and starts each new file's chunks on `chunk_pipeline`;
- `<pipeline>__new_dataset_sensor` for each pipeline built from a spec: watches its `input.watch` (default
  `<CHUNKWISE_HOME>/inbox/<pipeline>`) and starts the chunks on `<pipeline>__chunk_job`.
One of each of these, serving every pipeline of the list:
- `chunk_backfill_sensor` (sensors/backfill.py): re-runs retryable chunk failures with backoff on the failed
  run's own chunk job, stops on job-fatal ones until a person clears the provider;
- `dataset_completion_sensor` (sensors/completion.py): the report, the webhook and the cleanup, once per dataset,
  by the completion job of the pipeline the dataset was registered for;
- `batch_poll_sensor` (sensors/batches.py): polls the provider batches of batch-mode chunks through the owning
  pipeline's LLM resource and requests the run that collects them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import dagster as dg

from llm_assets.layout import BUILTIN_LAYOUT
from llm_assets.pipeline_assets import spec_layout
from llm_assets.settings import chunkwise_home
from llm_assets.spec import PipelineSpec
from sensors.backfill import BackfillPolicy, build_backfill_sensor
from sensors.batches import build_batch_poll_sensor
from sensors.chunk_runs import ExecutableJob, chunk_pipeline_job
from sensors.completion import build_completion_sensor, dataset_completion_job
from sensors.new_datasets import build_new_dataset_sensor, build_pipeline_new_dataset_sensor

WATCH_URI_ENV = "CHUNKWISE_WATCH_URI"


def build_recovery_sensors(
    watch_uri: str | None = None,
    chunk_size: int = 250,
    policy: BackfillPolicy | None = None,
    *,
    specs: Sequence[PipelineSpec] = (),
    jobs: Sequence[ExecutableJob] = (),
    builtin: bool = True,
    watch_uris: Mapping[str, str] | None = None,
    inbox: Path | None = None,
) -> list[dg.SensorDefinition]:
    """The sensors of the built-in pipeline (unless `builtin=False`) and of each spec pipeline in `specs`.

    Built-in: `watch_uri` None reads `$CHUNKWISE_WATCH_URI`, else `<CHUNKWISE_HOME>/inbox`; files are cut into
    chunks of `chunk_size` rows. A spec pipeline watches `watch_uris[<pipeline>]`, else its `input.watch`, else
    `<inbox>/<pipeline>` (default inbox `<CHUNKWISE_HOME>/inbox`), in chunks of its `input.chunk_size`.
    `jobs`: the spec pipelines' job definitions (`pipeline_definitions(spec).jobs` of each: the shared sensors
    target them by definition); `policy`: the backfill's, for every pipeline."""
    layouts = [BUILTIN_LAYOUT] if builtin else []
    layouts += [spec_layout(spec) for spec in specs]
    new_datasets = [
        build_pipeline_new_dataset_sensor(spec, (watch_uris or {}).get(spec.name), inbox=inbox)
        for spec in specs
    ]
    if builtin:
        watch = watch_uri or os.environ.get(WATCH_URI_ENV) or str(inbox or chunkwise_home() / "inbox")
        new_datasets.insert(0, build_new_dataset_sensor(watch_uri=watch, chunk_size=chunk_size))
    return [
        *new_datasets,
        build_backfill_sensor(policy=policy, layouts=layouts, jobs=list(jobs)),
        build_completion_sensor(layouts=layouts, jobs=list(jobs)),
        build_batch_poll_sensor(layouts=layouts, jobs=list(jobs)),
    ]


recovery_jobs = [chunk_pipeline_job, dataset_completion_job]

recovery_sensors = build_recovery_sensors()
"""For definitions.py: `sensors=[*recovery_sensors, ...]` (their jobs are included with them)."""
