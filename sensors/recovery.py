"""The sensors that run a nightly dataset unattended, as one list for definitions.py.

- `new_dataset_sensor` (sensors/new_datasets.py): watches `$CHUNKWISE_WATCH_URI` (a folder or s3://bucket/prefix;
  default `<CHUNKWISE_HOME>/inbox`) and starts each new file's chunks;
- `chunk_backfill_sensor` (sensors/backfill.py): re-runs retryable chunk failures with backoff, stops on
  job-fatal ones until a person clears the provider;
- `dataset_completion_sensor` (sensors/completion.py): the report, the webhook and the cleanup, once per dataset;
- `batch_poll_sensor` (sensors/batches.py): polls the provider batches of batch-mode chunks and requests the run
  that collects them.
"""

from __future__ import annotations

import os

import dagster as dg

from llm_assets.settings import chunkwise_home
from sensors.backfill import BackfillPolicy, build_backfill_sensor
from sensors.batches import build_batch_poll_sensor
from sensors.chunk_runs import chunk_pipeline_job
from sensors.completion import build_completion_sensor, dataset_completion_job
from sensors.new_datasets import build_new_dataset_sensor

WATCH_URI_ENV = "CHUNKWISE_WATCH_URI"


def build_recovery_sensors(
    watch_uri: str | None = None, chunk_size: int = 250, policy: BackfillPolicy | None = None
) -> list[dg.SensorDefinition]:
    """The four sensors; `watch_uri` None: `$CHUNKWISE_WATCH_URI`, else `<CHUNKWISE_HOME>/inbox`."""
    watch = watch_uri or os.environ.get(WATCH_URI_ENV) or str(chunkwise_home() / "inbox")
    return [
        build_new_dataset_sensor(watch_uri=watch, chunk_size=chunk_size),
        build_backfill_sensor(policy=policy),
        build_completion_sensor(),
        build_batch_poll_sensor(),
    ]


recovery_jobs = [chunk_pipeline_job, dataset_completion_job]

recovery_sensors = build_recovery_sensors()
"""For definitions.py: `sensors=[*recovery_sensors, ...]` (their jobs are included with them)."""
