"""The new-dataset sensors: a file landing in a watched folder (or S3 prefix) becomes a dataset and its runs.

One sensor per pipeline, `<pipeline>__new_dataset_sensor` (`build_pipeline_new_dataset_sensor`): it watches the
spec's `input.watch` (default `<CHUNKWISE_HOME>/inbox/<pipeline>`), registers each file with the spec's column
mapping into `<pipeline>__chunks` and launches `<pipeline>__chunk_job`.

Watched: `.csv`, `.jsonl`/`.ndjson`, `.parquet`/`.pq` files directly in the folder (or under the S3 prefix);
names starting with `.` or `_` and `*.tmp` are ignored (writers' temp files).

"Fully written" rule (a half-written file must never register):
- a marker object `<file>._SUCCESS` beside the file says it is complete (Spark/Hadoop style; write it last), or
- without a marker, the file's size and modification time are unchanged between two ticks
  (`minimum_interval_seconds` apart, so a writer that pauses longer than that must use the marker).
The cursor keeps each file's last seen (size, mtime) and the files already registered.

Registration is idempotent (same bytes, same dataset id and partitions). Each chunk gets one RunRequest of the
pipeline's chunk job with `run_key=<partition>:attempt-1` and the tags `chunkwise/dataset`,
`chunkwise/provider`, `chunkwise/attempt=1`: Dagster never launches a run key twice, so the same file seen
again, a restart, or a lost cursor launches nothing twice. The runs go through the run queue;
deploy/dagster.yaml bounds how many run at once per provider. A file that cannot be registered (no `text`
column, bad CSV, ...) is logged with the reason and skipped until it changes. While any provider the pipeline
calls is stopped (sensors/halts.py), files still register but their runs are held until it is cleared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from io_managers.parquet_files import is_s3_uri, parse_s3_uri, s3_client
from llm_assets import pipeline_assets
from llm_assets.datasets import DatasetError, RegisteredDataset
from llm_assets.settings import chunkwise_home
from llm_assets.spec import PipelineSpec
from sensors.chunk_runs import (
    ExecutableJob,
    chunk_run_request,
    sensor_targets,
)
from sensors.halts import provider_stop

DATA_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet", ".pq")
SUCCESS_SUFFIX = "._SUCCESS"

RegisterFile = Callable[[str, dg.DagsterInstance, Path, Any], RegisteredDataset]
"""(uri, instance, home, s3) -> the dataset registered with its chunk partitions; raises DatasetError for a
file that cannot be registered (the sensor logs the reason and skips the file until it changes)."""


@dataclass(frozen=True)
class FileSeen:
    uri: str
    size: int
    mtime: float


@dataclass
class NewDatasetCursor:
    seen: dict[str, list[float]] = field(default_factory=dict)
    """uri -> [size, mtime] at the last tick, for files not registered yet."""
    registered: dict[str, dict[str, Any]] = field(default_factory=dict)
    """uri -> {size, mtime, dataset_id}"""
    rejected: dict[str, dict[str, Any]] = field(default_factory=dict)
    """uri -> {size, mtime, error}: skipped until the file changes."""
    held: list[str] = field(default_factory=list)
    """chunk partition keys registered while their provider was stopped: launched once it is cleared."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> NewDatasetCursor:
        return cls(**json.loads(text)) if text else cls()


def _is_data_file(name: str) -> bool:
    return not name.startswith((".", "_")) and name.lower().endswith(DATA_SUFFIXES)


def list_input_files(watch_uri: str, s3: Any = None) -> tuple[list[FileSeen], set[str]]:
    """The data files under `watch_uri` and the URIs that have a `._SUCCESS` marker."""
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
    folder = Path(watch_uri)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"the watched folder {folder} does not exist; create it or fix the sensor's watch path"
        )
    with os.scandir(folder) as entries:
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


def build_new_dataset_sensor(
    *,
    watch_uri: str,
    name: str,
    chunk_size: int,
    providers: Sequence[str],
    job: ExecutableJob | str,
    register: RegisterFile,
    pipeline: str,
    missing_folder_ok: bool = False,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """Watch `watch_uri` (a local folder or `s3://bucket/prefix`; S3 needs an `s3` S3Resource in the definitions)
    and launch one run of `job` (a definition, or the name of one defined elsewhere) per chunk of each new file.

    `register` registers a file as a dataset of `pipeline` (chunks of `chunk_size` rows, said in the
    description). `providers`: a halt of any of them holds the runs; the first labels them.
    `missing_folder_ok`: a local folder that does not exist holds no files yet (a default inbox nobody uses)
    instead of failing the tick. Needs the `settings` resource (PipelineSettings: where manifests live).
    """
    resource_keys = {"settings", "s3"} if is_s3_uri(watch_uri) else {"settings"}
    job_name = job if isinstance(job, str) else job.name

    which = f"pipeline `{pipeline}`"

    @dg.sensor(
        name=name,
        **sensor_targets([job_name], [] if isinstance(job, str) else [job]),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys=resource_keys,
        description=(
            f"Registers each new data file in {watch_uri} as a dataset of {which} (chunks of {chunk_size} rows) "
            "once it is fully written (a `<file>._SUCCESS` marker, or size and mtime unchanged over two ticks) "
            f"and requests one `{job_name}` run per chunk."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        s3 = getattr(context.resources, "s3", None) if "s3" in resource_keys else None
        home = context.resources.settings.home_path()
        state = NewDatasetCursor.from_json(context.cursor)
        if missing_folder_ok and not is_s3_uri(watch_uri) and not Path(watch_uri).is_dir():
            files, markers = [], set()  # nothing has landed yet
        else:
            files, markers = list_input_files(watch_uri, s3)
        held_by = tuple(providers)
        chosen = held_by[0]
        halts = {p: why for p in held_by if (why := provider_stop(context.instance, p))}
        stopped = "; ".join(f"provider {p} is stopped ({why})" for p, why in halts.items()) or None
        requests: list[dg.RunRequest] = []

        def runs_of(keys: list[str]) -> list[dg.RunRequest]:
            return [chunk_run_request(k, 1, chosen, "new_dataset", job_name=job_name) for k in keys]

        if state.held and stopped is None:
            requests += runs_of(state.held)
            context.log.info(
                f"provider {', '.join(held_by)} cleared: launching {len(state.held)} held chunk runs"
            )
            state.held = []
        waiting = 0
        for seen in sorted(files, key=lambda f: f.uri):
            signature = [seen.size, seen.mtime]
            done = state.registered.get(seen.uri) or state.rejected.get(seen.uri)
            if done and [done["size"], done["mtime"]] == signature:
                continue
            settled = state.seen.get(seen.uri) == signature and seen.size > 0
            if not (seen.uri in markers or settled):
                state.seen[seen.uri] = signature
                waiting += 1
                continue
            state.seen.pop(seen.uri, None)
            try:
                dataset = register(seen.uri, context.instance, home, s3)
            except DatasetError as exc:
                state.rejected[seen.uri] = {"size": seen.size, "mtime": seen.mtime, "error": str(exc)}
                context.log.error(f"cannot register {seen.uri}: {exc} (skipped until the file changes)")
                continue
            state.registered[seen.uri] = {
                "size": seen.size,
                "mtime": seen.mtime,
                "dataset_id": dataset.dataset_id,
            }
            if stopped is not None:
                state.held += dataset.partition_keys
                context.log.warning(
                    f"registered {seen.uri} as {dataset.dataset_id}: {dataset.n_chunks} chunk runs held, {stopped}; "
                    f"`python -m sensors.backfill clear {' / '.join(halts)}` after fixing it"
                )
                continue
            requests += runs_of(dataset.partition_keys)
            context.log.info(
                f"registered {seen.uri} as {dataset.dataset_id}: {dataset.total_rows} rows in "
                f"{dataset.n_chunks} chunks; requested {dataset.n_chunks} `{job_name}` runs"
            )
        summary = f"{len(files)} data files, {waiting} still being written, {len(requests)} runs requested"
        if state.held:
            summary += f", {len(state.held)} chunk runs held: {stopped}"
        return dg.SensorResult(
            run_requests=requests,
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
    inbox: Path | None = None,
    chunk_size: int | None = None,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """`<pipeline>__new_dataset_sensor`: registers files landing in `watch_uri` (None: `pipeline_watch_uri`, its
    `input.watch` or `<inbox>/<pipeline>`) with the spec's column mapping (`pipeline_assets.register`, chunks of
    `chunk_size` rows, default the spec's) and launches `<pipeline>__chunk_job` per chunk; a halt of any provider
    its stages call holds the runs. The default inbox folder may not exist yet (nothing has landed); a folder
    that was configured must exist."""
    layout = pipeline_assets.spec_layout(spec)
    rows = chunk_size or spec.input.chunk_size

    def _register(uri: str, instance: dg.DagsterInstance, home: Path, s3: Any) -> RegisteredDataset:
        return pipeline_assets.register(spec, uri, instance, home, s3=s3, chunk_size=rows)

    return build_new_dataset_sensor(
        watch_uri=watch_uri or pipeline_watch_uri(spec, inbox),
        name=f"{spec.name}__new_dataset_sensor",
        chunk_size=rows,
        providers=layout.providers,
        job=layout.chunk_job,
        register=_register,
        pipeline=spec.name,
        missing_folder_ok=not (watch_uri or spec.input.watch),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
    )
