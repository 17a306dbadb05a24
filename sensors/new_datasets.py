"""The new-dataset sensor: a file landing in a watched folder (or S3 prefix) becomes a dataset and its runs.

Watched: `.csv`, `.jsonl`/`.ndjson`, `.parquet`/`.pq` files directly in the folder (or under the S3 prefix);
names starting with `.` or `_` and `*.tmp` are ignored (writers' temp files).

"Fully written" rule (a half-written file must never register):
- a marker object `<file>._SUCCESS` beside the file says it is complete (Spark/Hadoop style; write it last), or
- without a marker, the file's size and modification time are unchanged between two ticks
  (`minimum_interval_seconds` apart, so a writer that pauses longer than that must use the marker).
The cursor keeps each file's last seen (size, mtime) and the files already registered.

Registration is `register_dataset` (idempotent: same bytes, same dataset id and partitions). Each chunk
gets one RunRequest of `chunk_pipeline` with `run_key=<partition>:attempt-1` and the tags
`chunkwise/dataset`, `chunkwise/provider`, `chunkwise/attempt=1`: Dagster never launches a run key twice, so
the same file seen again, a restart, or a lost cursor launches nothing twice. The runs go through the run
queue; deploy/dagster.yaml bounds how many run at once per provider. A file that cannot be registered (no
`text` column, bad CSV, ...) is logged with the reason and skipped until it changes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from io_managers.parquet_files import is_s3_uri, parse_s3_uri, s3_client
from llm_assets.datasets import DatasetError, DatasetSpec, register_dataset
from sensors.chunk_runs import chunk_pipeline_job, chunk_run_request, default_provider
from sensors.halts import provider_stop

DATA_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet", ".pq")
SUCCESS_SUFFIX = "._SUCCESS"


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
    name: str = "new_dataset_sensor",
    chunk_size: int = 250,
    spec_options: dict[str, Any] | None = None,
    provider: str | None = None,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """Watch `watch_uri` (a local folder or `s3://bucket/prefix`; S3 needs an `s3` S3Resource in the definitions).

    `spec_options` are DatasetSpec fields applied to every file (`column_map`, `id_column`, `team_from_label`);
    the dataset name is the file stem. Needs the `settings` resource (PipelineSettings: where manifests live).
    """
    options = dict(spec_options or {})
    resource_keys = {"settings", "s3"} if is_s3_uri(watch_uri) else {"settings"}

    @dg.sensor(
        name=name,
        job=chunk_pipeline_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys=resource_keys,
        description=(
            f"Registers each new data file in {watch_uri} as a dataset (chunks of {chunk_size} rows) once it is "
            "fully written (a `<file>._SUCCESS` marker, or size and mtime unchanged over two ticks) and "
            "requests one run per chunk."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        s3 = getattr(context.resources, "s3", None) if "s3" in resource_keys else None
        home = context.resources.settings.home_path()
        state = NewDatasetCursor.from_json(context.cursor)
        files, markers = list_input_files(watch_uri, s3)
        chosen = provider or default_provider()
        stopped = provider_stop(context.instance, chosen)
        requests: list[dg.RunRequest] = []
        if state.held and stopped is None:
            requests += [chunk_run_request(k, 1, chosen, "new_dataset") for k in state.held]
            context.log.info(f"provider {chosen} cleared: launching {len(state.held)} held chunk runs")
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
            spec = DatasetSpec(uri=seen.uri, chunk_size=chunk_size, **options)
            try:
                dataset = register_dataset(spec, context.instance, home, s3=s3)
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
                    f"registered {seen.uri} as {dataset.dataset_id}: {dataset.n_chunks} chunk runs held, provider "
                    f"{chosen} is stopped ({stopped}); `python -m sensors.backfill clear {chosen}` after fixing it"
                )
                continue
            requests += [chunk_run_request(k, 1, chosen, "new_dataset") for k in dataset.partition_keys]
            context.log.info(
                f"registered {seen.uri} as {dataset.dataset_id}: {dataset.total_rows} rows in "
                f"{dataset.n_chunks} chunks; requested {dataset.n_chunks} runs"
            )
        summary = f"{len(files)} data files, {waiting} still being written, {len(requests)} runs requested"
        if state.held:
            summary += f", {len(state.held)} chunk runs held: provider {chosen} is stopped ({stopped})"
        return dg.SensorResult(
            run_requests=requests,
            cursor=state.to_json(),
            skip_reason=None if requests else dg.SkipReason(summary),
        )

    return _sensor
