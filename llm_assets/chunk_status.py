"""Where each chunk of a dataset stands, read from the Dagster instance: pending, in flight, or terminal.

A chunk is *terminal* when nothing will happen to it without a person:
- `succeeded`: its latest run succeeded and the pipeline's last stage is materialized for it;
- `failed_quality_gate`: its latest run failed a blocking quality gate (re-running buys the same answers);
- `gave_up`: its latest run failed for a retryable reason and the backfill sensor used every attempt
  (it tags that run `chunkwise/backfill=gave_up`);
- `canceled`: a person canceled its latest run (not retried; counted as failed).
Not terminal: no run yet, a run queued or running, a retryable failure the backfill sensor will re-run, a
job-fatal failure (auth, quota, budget, config) waiting for a person to clear the provider.

The run tags every chunk run carries (set by the sensors, read here and by the run queue's concurrency limits)
are defined here, so the sensors and the completion asset agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import dagster as dg

from llm_assets.failure_class import FailureClass, run_failure_class
from llm_assets.layout import PipelineLayout

PARTITION_TAG = "dagster/partition"
DATASET_TAG = "chunkwise/dataset"
PROVIDER_TAG = "chunkwise/provider"
ATTEMPT_TAG = "chunkwise/attempt"
"""1 for a chunk's first run, n for its n-th run launched by the sensors."""
BACKFILL_TAG = "chunkwise/backfill"
"""Set on a failed run by the backfill sensor: `retry_scheduled`, `gave_up` or `needs_human`."""
GAVE_UP = "gave_up"
RETRY_SCHEDULED = "retry_scheduled"
NEEDS_HUMAN = "needs_human"

IN_FLIGHT_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


class ChunkState(StrEnum):
    NOT_STARTED = "not_started"
    IN_FLIGHT = "in_flight"
    RETRY_PENDING = "retry_pending"  # retryable failure; the backfill sensor decides when to re-run it
    NEEDS_HUMAN = "needs_human"  # job-fatal failure: waits until a person clears the provider
    INCOMPLETE = "incomplete"  # the latest run succeeded but did not materialize the last stage
    SUCCEEDED = "succeeded"
    FAILED_QUALITY_GATE = "failed_quality_gate"
    GAVE_UP = "gave_up"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def failed(self) -> bool:
        return self in (ChunkState.FAILED_QUALITY_GATE, ChunkState.GAVE_UP, ChunkState.CANCELED)


_TERMINAL = {ChunkState.SUCCEEDED, ChunkState.FAILED_QUALITY_GATE, ChunkState.GAVE_UP, ChunkState.CANCELED}


@dataclass(frozen=True)
class ChunkStatus:
    partition_key: str
    state: ChunkState
    latest_run_id: str | None
    runs: int
    """How many runs this partition has had (every attempt, however launched)."""
    start_time: float | None = None
    """Unix seconds: the first run's start."""
    end_time: float | None = None
    """Unix seconds: the latest run's end."""


def latest_runs(instance: dg.DagsterInstance, partition_keys: list[str]) -> dict[str, list[dg.RunRecord]]:
    """Every run record per partition key, newest first (one query per 500 keys)."""
    found: dict[str, list[dg.RunRecord]] = {k: [] for k in partition_keys}
    for start in range(0, len(partition_keys), 500):
        batch = partition_keys[start : start + 500]
        records = instance.get_run_records(filters=dg.RunsFilter(tags={PARTITION_TAG: batch}))
        for record in records:  # newest first
            key = record.dagster_run.tags.get(PARTITION_TAG)
            if key in found:
                found[key].append(record)
    return found


def chunk_states(
    instance: dg.DagsterInstance, partition_keys: list[str], layout: PipelineLayout
) -> dict[str, ChunkStatus]:
    """The state of each chunk partition (see the module docstring for the rules); `layout` names the
    pipeline's last stage (BANKING77's is `enriched`)."""
    runs = latest_runs(instance, partition_keys)
    materialized = instance.get_materialized_partitions(layout.final_key)
    out: dict[str, ChunkStatus] = {}
    for key in partition_keys:
        records = runs[key]
        if not records:
            out[key] = ChunkStatus(key, ChunkState.NOT_STARTED, None, 0)
            continue
        latest = records[0]
        run = latest.dagster_run
        starts = [r.start_time for r in records if r.start_time]
        out[key] = ChunkStatus(
            key,
            _state_of(instance, run, key in materialized),
            run.run_id,
            len(records),
            start_time=min(starts) if starts else None,
            end_time=latest.end_time,
        )
    return out


def _state_of(instance: dg.DagsterInstance, run: dg.DagsterRun, final_materialized: bool) -> ChunkState:
    status = run.status
    if status in IN_FLIGHT_STATUSES:
        return ChunkState.IN_FLIGHT
    if status == dg.DagsterRunStatus.SUCCESS:
        return ChunkState.SUCCEEDED if final_materialized else ChunkState.INCOMPLETE
    if status == dg.DagsterRunStatus.CANCELED:
        return ChunkState.CANCELED
    failure = run_failure_class(instance, run.run_id)
    if failure == FailureClass.QUALITY_GATE:
        return ChunkState.FAILED_QUALITY_GATE
    if run.tags.get(BACKFILL_TAG) == GAVE_UP:
        return ChunkState.GAVE_UP
    if failure == FailureClass.JOB_FATAL:
        return ChunkState.NEEDS_HUMAN
    return ChunkState.RETRY_PENDING
