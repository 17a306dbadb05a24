"""The new-dataset sensors: a file landing in a watched folder (or S3 prefix) becomes a dataset and its runs.

One sensor per pipeline, `<pipeline>__new_dataset_sensor` (`build_pipeline_new_dataset_sensor`): it watches the
spec's `input.watch` (default `<CHUNKWISE_HOME>/inbox/<pipeline>`, created when the code location loads and again
by a tick that finds it gone; a configured local folder under CHUNKWISE_HOME is created too, one elsewhere must
exist or the tick fails naming `input.watch`).

Watched: `.csv`, `.jsonl`/`.ndjson`, `.parquet`/`.pq` files directly in the folder (or under the S3 prefix);
names starting with `.` or `_` and `*.tmp` are ignored (writers' temp files).

"Fully written" rule (a half-written file must never register):
- a marker object `<file>._SUCCESS` beside the file says it is complete (Spark/Hadoop style; write it last), or
- without a marker, the file's size and modification time are unchanged between two ticks
  (`minimum_interval_seconds` apart, so a writer that pauses longer than that must use the marker).

A tick never reads a data file's bytes (only lists and stats them): registering means hashing the whole file,
which for a multi-GB S3 object would pass the tick's timeout. So, per file:
1. fully written -> the tick requests a `<pipeline>__register_job` run (sensors/registration.py) with
   `run_key=register:<uri>:<size>:<mtime>:attempt-1`; the run reads the file once and writes its manifest;
2. a later tick finds that run by its run key: succeeded -> it returns the dataset's missing chunk partitions as
   `dynamic_partitions_requests` (Dagster adds them to `<pipeline>__chunks` after the tick) and one RunRequest
   of `<pipeline>__chunk_job` per chunk, `run_key=<partition>:attempt-1`, tags `chunkwise/dataset`,
   `chunkwise/provider`, `chunkwise/attempt=1`; refused (the file does not fit the spec) or canceled -> logged
   with the reason and skipped until the file changes; failed otherwise (storage down, a killed worker) -> a
   new registration run, up to `MAX_REGISTRATION_RUNS`, then skipped like a refused one.
Dagster never launches a sensor's run key twice, and each run key is derived from the file (uri, size, mtime)
or the chunk, so the same file seen again, a restart or a lost cursor launches nothing twice: with no cursor the
file settles again, its registration run key is already used (nothing launched), the tick finds that run and
requests the same chunk run keys (nothing launched). The runs go through the run queue; deploy/dagster.yaml
bounds how many run at once per provider. While any provider the pipeline calls is stopped
(sensors/halts.py), files still register and their partitions are added, but their chunk runs are held until it
is cleared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from io_managers.parquet_files import is_s3_uri, parse_s3_uri, s3_client
from io_managers.s3_config import S3_ENDPOINT_ENV, S3_ON_ENV
from llm_assets.datasets import DatasetError, RegisteredDataset, load_dataset
from llm_assets.estimate import Estimate, estimate_job_name, estimate_run_config, load_estimate, verdict_for
from llm_assets.partitions import missing_partitions
from llm_assets.pipeline_assets import spec_layout
from llm_assets.settings import chunkwise_home
from llm_assets.spec import PipelineSpec
from sensors.chunk_runs import ExecutableJob, chunk_run_request, sensor_targets
from sensors.halts import provider_stop
from sensors.registration import (
    REGISTERED_DATASET_TAG,
    RegistrationRefused,
    build_register_job,
    register_run_config,
    register_run_tags,
)
from sensors.webhooks import deliver, webhook_url

DATA_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet", ".pq")
SUCCESS_SUFFIX = "._SUCCESS"
MAX_REGISTRATION_RUNS = 3
"""Registration runs per file version that fail for a reason other than the file itself (then it is skipped)."""
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"


@dataclass(frozen=True)
class FileSeen:
    uri: str
    size: int
    mtime: float


@dataclass
class NewDatasetCursor:
    seen: dict[str, list[float]] = field(default_factory=dict)
    """uri -> [size, mtime] at the last tick, for files not fully written yet."""
    registering: dict[str, dict[str, Any]] = field(default_factory=dict)
    """uri -> {size, mtime, attempt}: a registration run was requested for this version of the file."""
    registered: dict[str, dict[str, Any]] = field(default_factory=dict)
    """uri -> {size, mtime, dataset_id}"""
    rejected: dict[str, dict[str, Any]] = field(default_factory=dict)
    """uri -> {size, mtime, error}: skipped until the file changes."""
    held: list[str] = field(default_factory=list)
    """chunk partition keys registered while their provider was stopped: launched once it is cleared."""
    estimating: dict[str, dict[str, Any]] = field(default_factory=dict)
    """dataset_id -> {uri, attempt}: registered, its estimate run requested (`estimate.before_launch`)."""
    over_budget: dict[str, str] = field(default_factory=dict)
    """dataset_id -> why its chunks are not launched (estimate over budget, or the estimate failed)."""
    alerts: list[dict[str, Any]] = field(default_factory=list)
    """Notices for the pipeline's alert webhook not delivered yet (it was down): sent on a later tick."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> NewDatasetCursor:
        return cls(**json.loads(text)) if text else cls()

    def forget_missing(self, present: set[str]) -> None:
        """Drop what it keeps about files no longer in the folder (moved away once processed), so the cursor
        stays small; a file that comes back is registered again, which launches nothing twice."""
        for kept in (self.seen, self.registering, self.registered, self.rejected):
            for uri in [u for u in kept if u not in present]:
                del kept[uri]


class WatchFolderMissing(FileNotFoundError):
    """A configured local watch folder outside CHUNKWISE_HOME does not exist (Chunkwise creates only its own)."""


def _is_data_file(name: str) -> bool:
    return not name.startswith((".", "_")) and name.lower().endswith(DATA_SUFFIXES)


def ensure_watch_folder(watch_uri: str, home: Path, pipeline: str) -> None:
    """Make sure a local watch folder exists: created when it is under `home` (CHUNKWISE_HOME: the default
    inbox, or a configured folder there); elsewhere WatchFolderMissing, naming the spec field to fix.
    S3 prefixes need nothing (a prefix exists once an object is under it)."""
    if is_s3_uri(watch_uri):
        return
    folder = Path(watch_uri).resolve()
    if folder.is_dir():
        return
    if folder.is_relative_to(Path(home).resolve()):
        folder.mkdir(parents=True, exist_ok=True)
        return
    raise WatchFolderMissing(
        f"the watched folder {folder} of pipeline `{pipeline}` does not exist and is outside CHUNKWISE_HOME "
        f"({Path(home).resolve()}), so Chunkwise does not create it: create it, or fix the spec's `input.watch` "
        f"(unset, the pipeline watches {Path(home).resolve() / 'inbox' / pipeline}, created for you)"
    )


def list_input_files(watch_uri: str, s3: Any = None) -> tuple[list[FileSeen], set[str]]:
    """The data files under `watch_uri` and the URIs that have a `._SUCCESS` marker. Lists and stats only."""
    files: list[FileSeen] = []
    markers: set[str] = set()
    if is_s3_uri(watch_uri):
        loc = parse_s3_uri(watch_uri)
        prefix = loc.key.rstrip("/") + "/" if loc.key else ""
        client = s3_client(s3, watch_uri)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                uri = f"s3://{loc.bucket}/{obj['Key']}"
                if "/" in name:
                    continue
                if name.endswith(SUCCESS_SUFFIX):
                    markers.add(uri[: -len(SUCCESS_SUFFIX)])
                elif _is_data_file(name):
                    files.append(FileSeen(uri, int(obj["Size"]), obj["LastModified"].timestamp()))
        return files, markers
    with os.scandir(watch_uri) as entries:
        for entry in entries:
            if not entry.is_file():
                continue
            uri = str(Path(entry.path).resolve())
            if entry.name.endswith(SUCCESS_SUFFIX):
                markers.add(uri[: -len(SUCCESS_SUFFIX)])
            elif _is_data_file(entry.name):
                stat = entry.stat()
                files.append(FileSeen(uri, stat.st_size, stat.st_mtime))
    return files, markers


def estimate_run_key(dataset_id: str, mtime: float, attempt: int) -> str:
    """The estimate run of a dataset the sensor registered (`estimate.before_launch`), per version of its file
    (touching the file asks again: the estimate is read back, nothing paid, and judged against the budgets now)."""
    return f"estimate:{dataset_id}:{mtime!r}:attempt-{attempt}"


def registration_run_key(uri: str, size: float, mtime: float, attempt: int) -> str:
    """One per version of a file (size and mtime) and attempt: Dagster launches it once per sensor."""
    return f"register:{uri}:{int(size)}:{mtime!r}:attempt-{attempt}"


@dataclass(frozen=True)
class RegistrationOutcome:
    """Where the registration run of one run key is: `none` (not launched yet), `running`, `succeeded`
    (`dataset_id`), `refused` (the file does not fit the spec), `canceled` or `failed` (`message`)."""

    state: str
    run_id: str | None = None
    dataset_id: str | None = None
    message: str = ""


def registration_outcome(instance: dg.DagsterInstance, sensor_name: str, run_key: str) -> RegistrationOutcome:
    """The run this sensor launched for `run_key`, read from the instance (so a lost cursor loses nothing)."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: sensor_name}), limit=1
    )
    if not runs:
        return RegistrationOutcome("none")
    run = runs[0]
    if not run.is_finished:
        return RegistrationOutcome("running", run.run_id)
    if run.status == dg.DagsterRunStatus.SUCCESS:
        dataset_id = run.tags.get(REGISTERED_DATASET_TAG)
        if dataset_id:
            return RegistrationOutcome("succeeded", run.run_id, dataset_id=dataset_id)
        return RegistrationOutcome("failed", run.run_id, message="the run succeeded without naming a dataset")
    if run.status == dg.DagsterRunStatus.CANCELED:
        return RegistrationOutcome(
            "canceled", run.run_id, message=f"registration run {run.run_id} was canceled"
        )
    refused, message = _step_failure(instance, run.run_id)
    return RegistrationOutcome("refused" if refused else "failed", run.run_id, message=message)


def _step_failure(instance: dg.DagsterInstance, run_id: str) -> tuple[bool, str]:
    """(was it RegistrationRefused, its message) of a failed registration run's last step failure."""
    failures = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    data = failures[-1].dagster_event.step_failure_data if failures and failures[-1].dagster_event else None
    if data is None:
        return False, f"registration run {run_id} failed before its step ran; see the run's logs"
    if data.user_failure_data is not None and data.user_failure_data.description:
        message = data.user_failure_data.description
    else:
        message = data.error.message.strip() if data.error else "unknown error"
    refused = data.error is not None and data.error.cls_name == RegistrationRefused.__name__
    return refused, message


def build_new_dataset_sensor(
    *,
    watch_uri: str,
    name: str,
    pipeline: str,
    chunk_size: int,
    providers: Sequence[str],
    chunk_job: ExecutableJob,
    register_job: dg.JobDefinition,
    chunks_partitions: str,
    api_key_envs: Sequence[str] = (),
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    estimate_job: dg.JobDefinition | None = None,
    alert_webhook_env: str | None = None,
    budgets_usd: tuple[float | None, float | None] = (None, None),
) -> dg.SensorDefinition:
    """Watch `watch_uri` (a local folder or `s3://bucket/prefix`; S3 needs an `s3` S3Resource in the definitions)
    and, per fully-written file, launch `register_job` (a file of `pipeline`, chunks of `chunk_size` rows), then
    add its chunks to `chunks_partitions` and launch one `chunk_job` run per chunk.

    `providers`: a halt of any of them holds the chunk runs; the first labels them. `api_key_envs`: the variables
    the chunk runs read their keys from (named in the description, never read here). Needs the `settings`
    resource (PipelineSettings: CHUNKWISE_HOME, where manifests live and the default inbox is).

    `estimate_job` (the spec's `estimate.before_launch`): after registration the tick requests that job for the
    dataset (`run_key=estimate:<dataset id>:<file mtime>:attempt-1`) and launches the chunk runs only once it succeeded and its
    `estimate.json` fits `budgets_usd` (the spec's dataset and run caps, as they are now); otherwise the chunks are held (`over_budget` in the cursor), the tick logs
    why, and the same notice goes to the webhook in `alert_webhook_env`. To go on after raising the budget, touch
    the file: it registers again (the same dataset) and its estimate is read back (nothing paid) and judged
    against the new budget; or launch the chunks by hand (a backfill of their partitions in the UI). Without
    `estimate_job`, an estimate made before (`make estimate`, the job from the Launchpad) is judged the same way at
    registration: over budget, the chunks are held and the alert goes out; no estimate, they launch."""
    s3_watch = is_s3_uri(watch_uri)
    resource_keys = {"settings", "s3"} if s3_watch else {"settings"}
    chunk_job_name = chunk_job.name
    partitions = dg.DynamicPartitionsDefinition(name=chunks_partitions)
    if s3_watch:
        needs = f"the `s3` resource (${S3_ENDPOINT_ENV} or ${S3_ON_ENV}=1, AWS credentials from the standard chain)"
    else:
        needs = "the folder (created when under CHUNKWISE_HOME)"
    keys_needed = (
        f"; its chunk runs read the API key from ${', $'.join(api_key_envs)}" if api_key_envs else ""
    )

    targets = [chunk_job, register_job, *([estimate_job] if estimate_job is not None else [])]

    @dg.sensor(
        name=name,
        **sensor_targets([job.name for job in targets], targets),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys=resource_keys,
        description=(
            f"Watches {watch_uri} for new .csv/.jsonl/.parquet files of pipeline `{pipeline}`. Once a file is fully "
            "written (a `<file>._SUCCESS` marker, or size and mtime unchanged over two ticks) it launches "
            f"`{register_job.name}` (reads the file in a run, never in the tick), then adds the dataset's chunks "
            f"of {chunk_size} rows to `{chunks_partitions}` and launches one `{chunk_job_name}` run per chunk. "
            f"Needs the Dagster daemon, {needs}{keys_needed}."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        s3 = getattr(context.resources, "s3", None) if s3_watch else None
        home = context.resources.settings.home_path()
        state = NewDatasetCursor.from_json(context.cursor)
        ensure_watch_folder(watch_uri, home, pipeline)
        files, markers = list_input_files(watch_uri, s3)
        chosen = tuple(providers)[0]
        halts = {p: why for p in providers if (why := provider_stop(context.instance, p))}
        stopped = "; ".join(f"provider {p} is stopped ({why})" for p, why in halts.items()) or None
        registrations: list[dg.RunRequest] = []
        chunk_runs: list[dg.RunRequest] = []
        new_partitions: list[str] = []

        def runs_of(keys: list[str]) -> list[dg.RunRequest]:
            return [chunk_run_request(k, 1, chosen, "new_dataset", job_name=chunk_job_name) for k in keys]

        def register_request(uri: str, entry: dict[str, Any]) -> dg.RunRequest:
            return dg.RunRequest(
                run_key=registration_run_key(uri, entry["size"], entry["mtime"], entry["attempt"]),
                job_name=register_job.name,
                run_config=register_run_config(pipeline, uri, chunk_size),
                tags=register_run_tags(uri),
            )

        def registered(uri: str, entry: dict[str, Any], dataset: RegisteredDataset) -> None:
            state.registered[uri] = {
                "size": entry["size"],
                "mtime": entry["mtime"],
                "dataset_id": dataset.dataset_id,
            }
            new_partitions.extend(
                missing_partitions(context.instance, dataset.partition_keys, chunks_partitions)
            )
            if estimate_job is not None:  # chunks wait for the estimate (follow_estimate)
                entry = {"uri": uri, "mtime": entry["mtime"], "attempt": 1}
                state.estimating[dataset.dataset_id] = entry
                state.over_budget.pop(dataset.dataset_id, None)
                registrations.append(estimate_request(dataset.dataset_id, entry))
                context.log.info(
                    f"registered {uri} as {dataset.dataset_id}: {dataset.n_chunks} chunks; estimating it before "
                    f"launching them (`{estimate_job.name}`)"
                )
                return
            if not judge_estimate(dataset.dataset_id, load_estimate(home, pipeline, dataset.dataset_id)):
                return
            launch_chunks(dataset)

        def judge_estimate(dataset_id: str, estimate: Estimate | None) -> bool:
            """False (and the chunks held, with an alert) when the dataset's estimate is over budget. Without
            `estimate.before_launch` an estimate exists only when someone made one (`make estimate`, the estimate
            job from the Launchpad); none means nothing to judge."""
            if estimate is None:
                return True
            # Judged against the budgets as they are now (estimate.json keeps the projection, not the caps).
            verdict = verdict_for(
                *budgets_usd, estimate.total_cost_usd_in_mode, estimate.budget.largest_chunk_cost_usd
            )
            if not verdict.within_budget:
                hold(dataset_id, f"estimate over budget: {verdict.message}")
                return False
            context.log.info(f"{dataset_id}: estimate {verdict.message}")
            return True

        def launch_chunks(dataset: RegisteredDataset) -> None:
            if stopped is not None:
                state.held += dataset.partition_keys
                context.log.warning(
                    f"registered {dataset.uri} as {dataset.dataset_id}: {dataset.n_chunks} chunk runs held, "
                    f"{stopped}; `python -m sensors.backfill clear {' / '.join(halts)}` after fixing it"
                )
                return
            chunk_runs.extend(runs_of(dataset.partition_keys))
            context.log.info(
                f"registered {dataset.uri} as {dataset.dataset_id}: {dataset.total_rows} rows in "
                f"{dataset.n_chunks} chunks; requested {dataset.n_chunks} `{chunk_job_name}` runs"
            )

        def estimate_request(dataset_id: str, entry: dict[str, Any]) -> dg.RunRequest:
            assert estimate_job is not None
            return dg.RunRequest(
                run_key=estimate_run_key(dataset_id, entry["mtime"], entry["attempt"]),
                job_name=estimate_job.name,
                run_config=estimate_run_config(pipeline, dataset_id),
                tags={"chunkwise/dataset": dataset_id},
            )

        def hold(dataset_id: str, why: str) -> None:
            state.over_budget[dataset_id] = why
            context.log.error(f"{dataset_id}: chunk runs not launched: {why}")
            state.alerts.append(
                {
                    "text": f":warning: Chunkwise held the chunks of dataset `{dataset_id}` (pipeline `{pipeline}`): "
                    f"{why}",
                    "pipeline": pipeline,
                    "dataset_id": dataset_id,
                    "kind": "estimate_hold",
                    "reason": why,
                }
            )

        def follow_estimate(dataset_id: str, entry: dict[str, Any]) -> None:
            key = estimate_run_key(dataset_id, entry["mtime"], entry["attempt"])
            runs = context.instance.get_runs(
                filters=dg.RunsFilter(tags={RUN_KEY_TAG: key, SENSOR_NAME_TAG: name}), limit=1
            )
            if not runs:
                registrations.append(estimate_request(dataset_id, entry))  # not launched yet
                return
            run = runs[0]
            if not run.is_finished:
                return
            del state.estimating[dataset_id]
            if run.status != dg.DagsterRunStatus.SUCCESS:
                _, message = _step_failure(context.instance, run.run_id)
                hold(dataset_id, f"its estimate failed ({message or run.status.value}, run {run.run_id}); "
                     f"launch `{estimate_job.name if estimate_job else ''}` again or lower the sample")  # fmt: skip
                return
            estimate = load_estimate(home, pipeline, dataset_id)
            if estimate is None:
                hold(dataset_id, f"its estimate run {run.run_id} wrote no estimate.json under {home}")
                return
            if judge_estimate(dataset_id, estimate):
                launch_chunks(load_dataset(dataset_id, home))

        def reject(uri: str, entry: dict[str, Any], why: str) -> None:
            state.rejected[uri] = {"size": entry["size"], "mtime": entry["mtime"], "error": why}
            context.log.error(f"cannot register {uri}: {why} (skipped until the file changes)")

        def follow_registration(uri: str, entry: dict[str, Any]) -> bool:
            """Act on the registration run of `entry`; True while it is still to come or running."""
            key = registration_run_key(uri, entry["size"], entry["mtime"], entry["attempt"])
            outcome = registration_outcome(context.instance, name, key)
            if outcome.state == "none":
                registrations.append(register_request(uri, entry))  # not launched yet: the same key again
                return True
            if outcome.state == "running":
                return True
            del state.registering[uri]
            if outcome.state == "succeeded":
                try:
                    registered(uri, entry, load_dataset(str(outcome.dataset_id), home))
                except DatasetError as exc:  # the run wrote its manifest under another CHUNKWISE_HOME
                    reject(uri, entry, str(exc))
            elif outcome.state == "failed" and entry["attempt"] < MAX_REGISTRATION_RUNS:
                state.registering[uri] = {**entry, "attempt": entry["attempt"] + 1}
                registrations.append(register_request(uri, state.registering[uri]))
                context.log.warning(
                    f"registration run {outcome.run_id} of {uri} failed ({outcome.message}); requesting attempt "
                    f"{entry['attempt'] + 1} of {MAX_REGISTRATION_RUNS}"
                )
                return True
            else:
                reject(uri, entry, f"{outcome.message} (registration run {outcome.run_id})")
            return False

        for dataset_id, entry in list(state.estimating.items()):
            follow_estimate(dataset_id, entry)
        if state.held and stopped is None:
            chunk_runs += runs_of(state.held)
            context.log.info(
                f"provider {', '.join(providers)} cleared: launching {len(state.held)} held chunk runs"
            )
            state.held = []
        writing = registering = 0
        for seen in sorted(files, key=lambda f: f.uri):
            signature = [seen.size, seen.mtime]
            done = state.registered.get(seen.uri) or state.rejected.get(seen.uri)
            if done and [done["size"], done["mtime"]] == signature:
                continue
            pending = state.registering.get(seen.uri)
            if pending and [pending["size"], pending["mtime"]] == signature:
                registering += int(follow_registration(seen.uri, pending))
                continue
            settled = state.seen.get(seen.uri) == signature and seen.size > 0
            if not (seen.uri in markers or settled):
                state.registering.pop(seen.uri, None)  # changed since its registration was requested
                state.seen[seen.uri] = signature
                writing += 1
                continue
            state.seen.pop(seen.uri, None)
            state.registered.pop(seen.uri, None)  # a new version of the file: registered anew
            state.rejected.pop(seen.uri, None)
            state.registering[seen.uri] = {"size": seen.size, "mtime": seen.mtime, "attempt": 1}
            registrations.append(register_request(seen.uri, state.registering[seen.uri]))
            registering += 1
        state.forget_missing({f.uri for f in files})
        if state.alerts:  # holds from the estimates followed and the registrations just read
            url = webhook_url(alert_webhook_env) if alert_webhook_env else None
            if url is None:
                state.alerts.clear()  # no webhook configured: the hold was logged above, and nothing waits for it
            else:
                _, problem = deliver(url, state.alerts)
                if problem:
                    context.log.warning(f"alert webhook failed ({problem}); {len(state.alerts)} notices kept")
        requests = registrations + chunk_runs
        summary = (
            f"{len(files)} data files, {writing} still being written, {registering} being registered, "
            f"{len(requests)} runs requested"
        )
        if state.held:
            summary += f", {len(state.held)} chunk runs held: {stopped}"
        if state.over_budget:
            summary += f", {len(state.over_budget)} datasets held by their estimate"
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[partitions.build_add_request(new_partitions)]
            if new_partitions
            else None,
            cursor=state.to_json(),
            skip_reason=None if requests else dg.SkipReason(summary),
        )

    return _sensor


def pipeline_watch_uri(spec: PipelineSpec, inbox: Path | None = None) -> str:
    """Where a spec pipeline's files land: its `input.watch`, else `<inbox>/<pipeline>` (default inbox:
    `<CHUNKWISE_HOME>/inbox`)."""
    return spec.input.watch or str((inbox or chunkwise_home() / "inbox") / spec.name)


def build_pipeline_new_dataset_sensor(
    spec: PipelineSpec,
    watch_uri: str | None = None,
    *,
    jobs: Sequence[ExecutableJob],
    inbox: Path | None = None,
    chunk_size: int | None = None,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """`<pipeline>__new_dataset_sensor`: registers files landing in `watch_uri` (None: `pipeline_watch_uri`, its
    `input.watch` or `<inbox>/<pipeline>`) with the spec's column mapping, through its own
    `<pipeline>__register_job` (sensors/registration.py; chunks of `chunk_size` rows, default the spec's), and
    launches `<pipeline>__chunk_job` per chunk; a halt of any provider its stages call holds the runs.
    `jobs`: the pipeline's job definitions (`pipeline_definitions(spec).jobs`; others are ignored)."""
    layout = spec_layout(spec)
    rows = chunk_size or spec.input.chunk_size
    chunk_job = next((job for job in jobs if job.name == layout.chunk_job), None)
    if chunk_job is None:
        raise ValueError(
            f"the new-dataset sensor of `{spec.name}` launches {layout.chunk_job}: pass its definition in `jobs=` "
            "(`pipeline_definitions(spec).jobs`)"
        )
    api_key_envs = dict.fromkeys(spec.profile(stage).api_key_env for stage in spec.stages)
    return build_new_dataset_sensor(
        watch_uri=watch_uri or pipeline_watch_uri(spec, inbox),
        name=f"{spec.name}__new_dataset_sensor",
        pipeline=spec.name,
        chunk_size=rows,
        providers=layout.providers,
        chunk_job=chunk_job,
        register_job=build_register_job(spec),
        chunks_partitions=layout.chunks_partitions,
        api_key_envs=[env for env in api_key_envs if env],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        estimate_job=next((job for job in jobs if job.name == estimate_job_name(spec.name)), None)
        if spec.estimate.before_launch
        else None,
        alert_webhook_env=layout.alert_webhook_env,
        budgets_usd=(spec.budgets.dataset_usd, spec.budgets.run_usd),
    )
