"""The completion sensor: each dataset finishes exactly once, and downstream is told.

One sensor serves every pipeline of the code location (`layouts`, llm_assets/layout.py): a dataset belongs to
the pipeline named in its manifest (`spec.pipeline`, set at registration; "" = the built-in one), and a dataset
of a pipeline not served here is skipped. Each tick, for every registered dataset not finished yet:
1. when every chunk is terminal (succeeded, or failed for good: see llm_assets/chunk_status.py), it asks Dagster
   to add the dataset's partition to its pipeline's dataset partitions (`dynamic_partitions_requests`, applied
   after the tick, never written by the tick itself) and requests one run of its pipeline's completion
   job (cost ledger + report asset; built-in: `dataset_completion` -> `dataset_complete`, a spec pipeline's:
   `<pipeline>__completion_job` -> `<pipeline>/completion_report`) with `run_key=complete:<dataset_id>`:
   Dagster never launches a run key twice, so the report is materialized once however many ticks or daemon
   restarts see the dataset complete;
2. once the report asset is materialized for it, POSTs the report summary (the materialization's `summary`
   metadata) to `$CHUNKWISE_COMPLETION_WEBHOOK_URL` (a secret, never logged) and records the delivery in the
   instance's key-value store (`chunkwise/completion/notified/<dataset_id>`), so a restart or a lost cursor
   never notifies twice; a failed POST is retried next tick (at-least-once only if the process dies between a
   POST and its record; bodies carry `dataset_id` for a receiver to drop the rare duplicate).
   Without the variable, completion is recorded as `not configured` and nothing is sent.
A job-fatal failure (a blocked provider) keeps its dataset open until a person clears it: the report
would otherwise be final while work was still to come.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg

from llm_assets.chunk_status import chunk_states
from llm_assets.datasets import DatasetError, list_datasets, load_dataset
from llm_assets.layout import DEFAULT_COMPLETION_WEBHOOK_ENV, PipelineLayout, layout_named
from llm_assets.run_liveness import launcher_tags
from sensors.chunk_runs import ExecutableJob, sensor_targets
from sensors.webhooks import post_json, webhook_url

COMPLETION_WEBHOOK_ENV = DEFAULT_COMPLETION_WEBHOOK_ENV
"""The default of a spec's `notifications.completion_webhook_env`."""
NOTIFIED_KEY_PREFIX = "chunkwise/completion/notified/"


@dataclass
class CompletionCursor:
    requested: dict[str, float] = field(default_factory=dict)
    """dataset -> when its latest completion run was requested (unix s)."""
    gave_up: list[str] = field(default_factory=list)
    """Datasets whose completion run failed `max_attempts` times: a person materializes them by hand."""
    done: list[str] = field(default_factory=list)
    """Datasets completed and notified: never looked at again."""
    failed_posts_total: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> CompletionCursor:
        return cls(**json.loads(text)) if text else cls()


def _completion_summary(
    instance: dg.DagsterInstance, layout: PipelineLayout, dataset_id: str
) -> dict[str, Any] | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=layout.completion_key, asset_partitions=[dataset_id]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    summary = records[0].asset_materialization.metadata.get("summary")
    return dict(summary.value) if summary is not None else {"dataset_id": dataset_id}


def _completion_runs(job_name: str, dataset_id: str) -> dg.RunsFilter:
    return dg.RunsFilter(job_name=job_name, tags={"dagster/partition": dataset_id})


def _latest_completion_run(
    instance: dg.DagsterInstance, job_name: str, dataset_id: str
) -> dg.RunRecord | None:
    records = instance.get_run_records(filters=_completion_runs(job_name, dataset_id), limit=1)
    return records[0] if records else None


def _notified(instance: dg.DagsterInstance, dataset_id: str) -> bool:
    key = NOTIFIED_KEY_PREFIX + dataset_id
    return bool(instance.run_storage.get_cursor_values({key}).get(key))


def _mark_notified(instance: dg.DagsterInstance, dataset_id: str, how: str) -> None:
    instance.run_storage.set_cursor_values({NOTIFIED_KEY_PREFIX + dataset_id: f"{how} at {time.time():.0f}"})


def build_completion_sensor(
    *,
    name: str = "dataset_completion_sensor",
    layouts: list[PipelineLayout],
    jobs: list[ExecutableJob] | None = None,
    minimum_interval_seconds: int = 60,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    max_attempts: int = 3,
    retry_base_s: float = 60.0,
) -> dg.SensorDefinition:
    """The completion sensor of the pipelines in `layouts`. `jobs`: their completion jobs' definitions
    (`pipeline_definitions(spec).jobs`), needed when it serves several pipelines. Needs the `settings` resource
    (PipelineSettings: where datasets are registered). Each summary goes to its pipeline's
    `notifications.completion_webhook_env`.

    A failed (or canceled) completion run is requested again, `retry_base_s` x 2^(n-1) seconds after the n-th
    ended, up to `max_attempts` runs in all; then the sensor logs an error naming the last run and stops
    trying for that dataset (materializing the report asset by hand then finishes it as usual)."""
    served = list(layouts)
    job_names = [layout.completion_job for layout in served]
    reports = ", ".join(f"`{layout.completion_key.to_user_string()}`" for layout in served)
    envs = sorted({layout.completion_webhook_env for layout in served if layout.completion_webhook_env})
    completion_envs = " / ".join(f"${env}" for env in envs) or "none named"

    @dg.sensor(
        name=name,
        **sensor_targets(job_names, list(jobs or [])),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={"settings"},
        description=(
            "Watches the datasets registered under CHUNKWISE_HOME (their manifests) and the runs of their chunks. "
            "When every chunk of a dataset succeeded or failed for good, launches its pipeline's completion job "
            f"once ({', '.join(job_names)}: {reports}), then POSTs the summary to the webhook in the variable its "
            f"spec names ({completion_envs}; unset: nobody is notified). Needs the Dagster daemon and the "
            "`settings` resource (CHUNKWISE_HOME)."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        instance = context.instance
        home = context.resources.settings.home_path()
        state = CompletionCursor.from_json(context.cursor)
        failed_envs: set[str] = set()
        requests: list[dg.RunRequest] = []
        new_partitions: dict[str, list[str]] = {}  # added by Dagster after the tick, before the runs launch
        open_count = notified = 0
        not_served: dict[str, int] = {}
        problem = None
        now = time.time()
        for dataset_id in list_datasets(home):
            if dataset_id in state.done:
                continue
            try:
                dataset = load_dataset(dataset_id, home)
            except DatasetError as exc:
                context.log.error(f"cannot read dataset {dataset_id}: {exc}")
                continue
            layout = layout_named(served, dataset.spec.pipeline)
            if layout is None:
                not_served[dataset.spec.pipeline] = not_served.get(dataset.spec.pipeline, 0) + 1
                continue
            summary = _completion_summary(instance, layout, dataset_id)
            if summary is not None:
                if _notified(instance, dataset_id):
                    state.done.append(dataset_id)
                    continue
                env = layout.completion_webhook_env
                url = webhook_url(env) if env else None
                if url is None:
                    _mark_notified(instance, dataset_id, "webhook not configured")
                    context.log.info(
                        f"{dataset_id} complete; {f'${env}' if env else 'no completion webhook'} not set: "
                        "nobody notified"
                    )
                    state.done.append(dataset_id)
                    continue
                if env in failed_envs:
                    continue  # that webhook already failed this tick: its datasets are retried next tick
                failure = post_json(url, summary)
                if failure:
                    problem = failure
                    failed_envs.add(env)
                    state.failed_posts_total += 1
                    continue
                _mark_notified(instance, dataset_id, "posted")
                state.done.append(dataset_id)
                notified += 1
                continue
            if dataset_id in state.requested:
                retry = _retry_request(context, state, layout, dataset_id, now, max_attempts, retry_base_s)
                if retry is not None:
                    requests.append(retry)
                continue
            states = chunk_states(instance, dataset.partition_keys, layout)
            if not all(s.state.terminal for s in states.values()):
                open_count += 1
                continue
            if not instance.has_dynamic_partition(layout.datasets_partitions, dataset_id):
                new_partitions.setdefault(layout.datasets_partitions, []).append(dataset_id)
            requests.append(
                dg.RunRequest(
                    run_key=f"complete:{dataset_id}",
                    partition_key=dataset_id,
                    job_name=layout.completion_job,
                    tags=launcher_tags(),
                )
            )
            state.requested[dataset_id] = time.time()
            context.log.info(
                f"every chunk of {dataset_id} is terminal: requesting its completion report ({layout.completion_job})"
            )
        if problem:
            context.log.warning(f"completion webhook failed ({problem}); retrying next tick")
        if not_served:
            context.log.info(
                "skipped datasets of pipelines this sensor does not serve: "
                + ", ".join(f"{name or 'built-in'} ({n})" for name, n in sorted(not_served.items()))
            )
        summary_text = (
            f"{open_count} datasets still running, {len(requests)} completion runs requested, {notified} notified"
            + (f", webhook failed ({problem})" if problem else "")
            + (f", {len(state.gave_up)} completion runs failed for good" if state.gave_up else "")
            + (f", {sum(not_served.values())} datasets of other pipelines skipped" if not_served else "")
        )
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[
                dg.DynamicPartitionsDefinition(name=name).build_add_request(keys)
                for name, keys in new_partitions.items()
            ]
            or None,
            cursor=state.to_json(),
            skip_reason=None if requests else dg.SkipReason(summary_text),
        )

    return _sensor


def _retry_request(
    context: dg.SensorEvaluationContext,
    state: CompletionCursor,
    layout: PipelineLayout,
    dataset_id: str,
    now: float,
    max_attempts: int,
    retry_base_s: float,
) -> dg.RunRequest | None:
    """Another completion run when the last one failed and its backoff is over; None while it is queued,
    running, succeeded (its summary is read next tick), backing off, or out of attempts."""
    if dataset_id in state.gave_up:
        return None
    job_name = layout.completion_job
    record = _latest_completion_run(context.instance, job_name, dataset_id)
    if record is None or record.dagster_run.status not in (
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.CANCELED,
    ):
        return None
    # Counted from the runs themselves, not the cursor: a restart that lost its cursor keeps the count.
    attempt = context.instance.get_runs_count(_completion_runs(job_name, dataset_id))
    run_id = record.dagster_run.run_id
    if attempt >= max_attempts:
        state.gave_up.append(dataset_id)
        context.log.error(
            f"the completion run of {dataset_id} failed {attempt} times (last: run {run_id}); fix what that "
            f"run's error says, then materialize {layout.completion_key.to_user_string()} for partition "
            f"{dataset_id} by hand"
        )
        return None
    ended = record.end_time or record.update_timestamp.timestamp()
    if now - ended < retry_base_s * 2 ** (attempt - 1):
        return None
    attempt += 1
    state.requested[dataset_id] = now
    context.log.warning(
        f"the completion run {run_id} of {dataset_id} failed; requesting attempt {attempt} of {max_attempts}"
    )
    return dg.RunRequest(
        run_key=f"complete:{dataset_id}:attempt-{attempt}",
        partition_key=dataset_id,
        job_name=job_name,
        tags=launcher_tags(),
    )
