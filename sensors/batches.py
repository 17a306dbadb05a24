"""The batch poll sensor: watches the provider batches of batch-mode chunks and requests the collecting run.

A batch-mode stage run (llm_assets/stages.py `run_batch_stage`) submits its chunk as provider batches, records
them in the stage's journal (`<home>/checkpoints/<dataset>/<chunk>/<stage>/batches.json`) and ends without
materializing. One sensor serves every pipeline of the code location (`layouts`, llm_assets/layout.py); two
pipelines may both have a stage called `classified`, so a journal's pipeline is the one named in its dataset's
manifest (`spec.pipeline`). Each tick of `batch_poll_sensor`:
1. finds every journal with batches not yet collected, of a stage of a pipeline served here;
2. polls each batch at the provider through the stage's LLM resource (`layout.llm_key(stage)`,
   `<pipeline>__<stage>__llm`; polling has no side effects and costs nothing);
3. when all of a chunk stage's batches have ended (completed, expired, cancelled), requests a run of the
   pipeline's chunk job for that partition with the stage and everything downstream selected (not `items` nor
   an upstream stage already materialized), `run_key=<partition>:<stage>:collect:<batch ids>`: Dagster never
   launches a run key twice, so a restarted daemon or a lost cursor cannot double-launch, and a follow-up round
   (new batch ids) gets its own run;
4. records the chunk's batch status as an AssetObservation on the stage's partition when it changes
   (`batch_status`: submitted / in_progress / ended, with line counts), so the UI shows where each chunk is.
A chunk with a run of its partition queued or running is left alone until that run ends.
Batches that are still being created (a crashed submission) are resumed by the next run of the chunk
(the backfill sensor re-runs the failed run), not here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import dagster as dg

from llm_assets.chunk_status import (
    ATTEMPT_TAG,
    DATASET_TAG,
    IN_FLIGHT_STATUSES,
    PARTITION_TAG,
    PROVIDER_TAG,
)
from llm_assets.datasets import DatasetError, load_dataset
from llm_assets.layout import PipelineLayout, layout_named
from llm_assets.partitions import parse_chunk_key
from llm_assets.run_liveness import launcher_tags
from llm_assets.stages import BATCH_JOURNAL_FILE, checkpoint_root, stage_batch_journal
from resources.llm import BatchHandle, BatchStatus, LLMResource
from resources.llm.batch_journal import SUBMITTING, SharedBatchJournal
from resources.state_url import state_url
from sensors.chunk_runs import LAUNCHED_BY_TAG, ExecutableJob, sensor_targets

BATCH_STATUS_TAG = "chunkwise/batch_status"
"""On collecting runs: `ended`; the stage whose batches it collects is in `chunkwise/batch_stage`."""
BATCH_STAGE_TAG = "chunkwise/batch_stage"


@dataclass
class ChunkBatches:
    """The batches of one chunk stage that are not collected yet, read from its journal."""

    dataset_id: str
    partition_key: str
    stage: str
    journal_path: Path
    pending: list[BatchHandle]
    layout: PipelineLayout
    """The pipeline the chunk's dataset was registered for: whose LLM resource polls, whose job collects."""


@dataclass
class ChunkBatchStatus:
    chunk: ChunkBatches
    state: str
    """`submitted` (no line done yet), `in_progress`, `ended` (every batch ended), `submitting` (cut off)."""
    statuses: list[BatchStatus]

    def counts(self) -> dict[str, int]:
        names = ("total", "succeeded", "errored", "processing", "expired", "canceled")
        return {n: sum(getattr(s, n) for s in self.statuses) for n in names}


def find_pending_batches(home: Path, layouts: list[PipelineLayout]) -> list[ChunkBatches]:
    """Every chunk stage under `<home>/checkpoints` whose journal holds batches not yet collected, of a stage of
    a pipeline in `layouts`, each with its pipeline's layout."""
    served = list(layouts)
    pipelines: dict[str, PipelineLayout | None] = {}
    found: list[ChunkBatches] = []
    for dataset_id, partition_key, stage in _journals(home):
        if dataset_id not in pipelines:
            pipelines[dataset_id] = _dataset_pipeline(dataset_id, home, served)
        layout = pipelines[dataset_id]
        if layout is None or stage not in layout.stages:
            continue
        journal = stage_batch_journal(home, dataset_id, partition_key, stage)
        pending = journal.pending
        if pending:
            found.append(
                ChunkBatches(
                    dataset_id=dataset_id,
                    partition_key=partition_key,
                    stage=stage,
                    journal_path=journal.path,
                    pending=pending,
                    layout=layout,
                )
            )
    return found


def _journals(home: Path) -> list[tuple[str, str, str]]:
    """(dataset, partition, stage) of every batch journal: the files under `<home>/checkpoints`, or the shared
    database's rows (CHUNKWISE_STATE_URL), where workers on any machine record them."""
    url = state_url()
    if url is not None:
        return sorted(SharedBatchJournal.keys(url))
    found = []
    for path in sorted(checkpoint_root(home).glob(f"*/*/*/{BATCH_JOURNAL_FILE}")):
        stage_dir = path.parent
        found.append(
            (unquote(stage_dir.parent.parent.name), unquote(stage_dir.parent.name), unquote(stage_dir.name))
        )
    return found


def _dataset_pipeline(dataset_id: str, home: Path, layouts: list[PipelineLayout]) -> PipelineLayout | None:
    """The served pipeline `dataset_id` was registered for (its manifest's `spec.pipeline`); None: another
    pipeline's, or no manifest."""
    try:
        name = load_dataset(dataset_id, home).spec.pipeline
    except DatasetError:
        return None
    return layout_named(layouts, name)


def poll_chunk(llm: LLMResource, chunk: ChunkBatches) -> ChunkBatchStatus:
    """The provider's status of each pending batch of `chunk`, summed into one state."""
    statuses = [llm.poll_batch(handle) for handle in chunk.pending]
    if any(s.state == SUBMITTING for s in statuses):
        state = SUBMITTING
    elif all(s.ended for s in statuses):
        state = "ended"
    elif any(s.succeeded or s.errored or s.expired for s in statuses):
        state = "in_progress"
    else:
        state = "submitted"
    return ChunkBatchStatus(chunk=chunk, state=state, statuses=statuses)


def collect_run_request(status: ChunkBatchStatus, provider: str) -> dg.RunRequest:
    """The run that collects `status.chunk`'s ended batches and materializes the stage (and what follows)."""
    chunk = status.chunk
    layout = chunk.layout
    batch_ids = "+".join(h.batch_id or h.submission_id for h in chunk.pending)
    return dg.RunRequest(
        run_key=f"{chunk.partition_key}:{chunk.stage}:collect:{batch_ids}",
        partition_key=chunk.partition_key,
        job_name=layout.chunk_job,
        # The stage and what depends on it, never `items` or an earlier stage (already materialized).
        asset_selection=[layout.key(stage) for stage in layout.stages_from(chunk.stage)],
        tags={
            DATASET_TAG: chunk.dataset_id,
            PROVIDER_TAG: provider,
            ATTEMPT_TAG: "1",
            LAUNCHED_BY_TAG: "batch_poll",
            BATCH_STATUS_TAG: "ended",
            BATCH_STAGE_TAG: chunk.stage,
            **launcher_tags(),
        },
    )


def _status_observation(status: ChunkBatchStatus) -> dg.AssetObservation:
    chunk = status.chunk
    counts = status.counts()
    return dg.AssetObservation(
        asset_key=chunk.layout.key(chunk.stage),
        partition=chunk.partition_key,
        metadata={
            "mode": dg.MetadataValue.text("batch"),
            "batch_status": dg.MetadataValue.text(status.state),
            "batch_ids": dg.MetadataValue.text(", ".join(h.batch_id or "(creating)" for h in chunk.pending)),
            "batches_pending": dg.MetadataValue.int(len(chunk.pending)),
            **{f"lines_{name}": dg.MetadataValue.int(value) for name, value in counts.items()},
        },
    )


def _run_in_flight(instance: dg.DagsterInstance, partition_key: str) -> bool:
    return bool(
        instance.get_runs_count(
            filters=dg.RunsFilter(statuses=IN_FLIGHT_STATUSES, tags={PARTITION_TAG: partition_key})
        )
    )


def evaluate_batches(
    instance: dg.DagsterInstance,
    home: Path,
    llms: dict[str, LLMResource],
    cursor: str | None,
    layouts: list[PipelineLayout],
) -> tuple[list[dg.RunRequest], list[dg.AssetObservation], str, str]:
    """One tick's decisions for the pipelines in `layouts`: (run requests, status
    observations, new cursor, summary line). `llms`: LLM resources by resource key, each layout's `llm_keys`.

    The cursor maps `<partition>/<stage>` to the last status observed, so each change is recorded once."""
    seen: dict[str, str] = json.loads(cursor) if cursor else {}
    requests: list[dg.RunRequest] = []
    observations: list[dg.AssetObservation] = []
    states: dict[str, int] = {}
    current: dict[str, str] = {}
    for chunk in find_pending_batches(home, layouts):
        try:
            parse_chunk_key(chunk.partition_key)
        except ValueError:
            continue
        llm = llms[chunk.layout.llm_key(chunk.stage)]
        status = poll_chunk(llm, chunk)
        key = f"{chunk.partition_key}/{chunk.stage}"
        current[key] = status.state
        states[status.state] = states.get(status.state, 0) + 1
        if seen.get(key) != status.state:
            observations.append(_status_observation(status))
        if status.state == "ended" and not _run_in_flight(instance, chunk.partition_key):
            requests.append(collect_run_request(status, llm.provider))
    summary = (
        f"{sum(states.values())} chunk stages with batches at the provider "
        f"({', '.join(f'{k} {v}' for k, v in sorted(states.items())) or 'none'}); "
        f"{len(requests)} collecting runs requested"
    )
    return requests, observations, json.dumps(current, sort_keys=True), summary


def build_batch_poll_sensor(
    *,
    name: str = "batch_poll_sensor",
    layouts: list[PipelineLayout],
    jobs: list[ExecutableJob] | None = None,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """The batch poll sensor of the pipelines in `layouts`; `jobs`: their chunk jobs'
    definitions (a spec pipeline's from `pipeline_definitions(spec).jobs`), needed when it serves several.
    Needs `settings` and every stage's LLM resource. `minimum_interval_seconds` is the polling interval
    (batches take minutes to hours, so 30 s wastes nothing and costs nothing: polling is free at both
    providers)."""
    served = list(layouts)
    job_names = [layout.chunk_job for layout in served]
    llm_keys = [key for layout in served for key in layout.llm_keys]

    @dg.sensor(
        name=name,
        **sensor_targets(job_names, list(jobs or [])),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={"settings", *llm_keys},
        description=(
            "Watches the provider batches of batch-mode chunk stages (their journals under "
            f"CHUNKWISE_HOME/checkpoints), polling them every {minimum_interval_seconds}s (free at both providers). "
            f"When a chunk stage's batches have ended, launches the run of its pipeline's chunk job "
            f"({', '.join(job_names)}) that collects them and materializes the partition; records batch_status "
            "(submitted / in_progress / ended) on the stage's partition. Needs the Dagster daemon and each stage's "
            f"LLM resource ({', '.join(llm_keys)}), so the API key variable of its provider profile."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        llms = {key: getattr(context.resources, key) for key in llm_keys}
        home = context.resources.settings.home_path()
        requests, observations, cursor, summary = evaluate_batches(
            context.instance, home, llms, context.cursor, served
        )
        context.log.info(summary)
        return dg.SensorResult(
            run_requests=requests,
            asset_events=observations,
            cursor=cursor,
            skip_reason=None if requests else dg.SkipReason(summary),
        )

    return _sensor
