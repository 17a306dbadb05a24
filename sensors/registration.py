"""The run that registers a landed file: `<pipeline>__register_job`, launched by the pipeline's new-dataset sensor.

Registering reads every byte of the file (the SHA-256 that names the dataset, the chunk boundaries, the
duplicate-id audit: llm_assets/datasets.py), which for a multi-GB S3 object takes minutes: too long for a sensor
tick, whose evaluation Dagster times out (60 s by default). So the sensor only lists and stats files, and for a
fully-written one requests this job; the run writes the manifest (`<home>/datasets/<id>/manifest.json`) and tags
itself with the dataset id (`chunkwise/registered_dataset`); a later tick of the same sensor reads that tag, adds
the chunk partitions through Dagster (`dynamic_partitions_requests`) and requests the chunk runs.

The run adds no partition itself: it only checks that they would fit under the live-partition limit. A file
that cannot be registered as configured (a missing column, not UTF-8, too many chunks, ...) fails the run with
`RegistrationRefused` (the one-line DatasetError message, not retried); any other error (storage unreachable)
is retried by the op's RetryPolicy, then by the sensor with a new run (sensors/new_datasets.py).

Run config: `{"ops": {"<pipeline>__register_file": {"config": {"uri": ..., "chunk_size": ...}}}}`; it can also be
launched by hand from the Launchpad (the sensor only acts on the runs it requested itself).
"""

from typing import Any

import dagster as dg

from io_managers.parquet_files import is_s3_uri
from llm_assets.datasets import DatasetError, register_dataset
from llm_assets.partitions import PartitionLimitExceeded
from llm_assets.pipeline_assets import PIPELINE_TAG, chunks_partitions_name, dataset_spec
from llm_assets.run_liveness import process_tags
from llm_assets.spec import PipelineSpec

REGISTERED_DATASET_TAG = "chunkwise/registered_dataset"
"""Set by a registration run that succeeded: the id of the dataset it registered (its manifest's folder)."""
INPUT_URI_TAG = "chunkwise/input_uri"
# Dagster's queued run coordinator starts higher priorities first: a registration is cheap and unblocks chunks.
_PRIORITY_TAG = "dagster/priority"


class RegistrationRefused(dg.Failure):
    """The file cannot be registered as the spec reads it (DatasetError) or its chunks would pass the
    live-partition limit: the same file fails the same way, so neither Dagster nor the sensor retries it."""

    def __init__(self, description: str) -> None:
        super().__init__(description=description, allow_retries=False)


class RegisterFileConfig(dg.Config):
    uri: str
    """The file: a local path or `s3://bucket/key`."""
    chunk_size: int = 0
    """Rows per chunk; 0: the spec's `input.chunk_size`."""


def register_job_name(pipeline: str) -> str:
    return f"{pipeline}__register_job"


def register_op_name(pipeline: str) -> str:
    return f"{pipeline}__register_file"


def register_run_config(pipeline: str, uri: str, chunk_size: int) -> dict[str, Any]:
    """The run config of `<pipeline>__register_job` for one file."""
    return {"ops": {register_op_name(pipeline): {"config": {"uri": uri, "chunk_size": chunk_size}}}}


def register_run_tags(uri: str) -> dict[str, str]:
    """The tags of a registration run the sensor requests (the job adds `chunkwise/pipeline`)."""
    return {INPUT_URI_TAG: uri, _PRIORITY_TAG: "1"}


def build_register_job(spec: PipelineSpec) -> dg.JobDefinition:
    """`<pipeline>__register_job`: registers one file as a dataset of `spec` (its column mapping and chunk size)
    and writes its manifest, without adding partitions. Needs the `settings` and `s3` resources."""
    partitions_name = chunks_partitions_name(spec)

    @dg.op(
        name=register_op_name(spec.name),
        required_resource_keys={"settings", "s3"},
        # Storage hiccups (S3 5xx, a slow mount) are retried here; a refused file is not (allow_retries=False).
        out=dg.Out(dg.Nothing),  # the manifest is the result; nothing for an IO manager to store
        retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
        description=f"Reads a landed file once (SHA-256, chunk boundaries, duplicate ids) and writes its "
        f"manifest as a dataset of `{spec.name}`; the new-dataset sensor then adds its chunks to "
        f"`{partitions_name}`.",
    )
    def _register(context: dg.OpExecutionContext, config: RegisterFileConfig) -> dg.Output:
        # Host and pid, so a registration run killed mid-read is found and failed by the liveness sweep.
        context.instance.add_run_tags(context.run_id, process_tags())
        home = context.resources.settings.home_path()
        s3 = context.resources.s3 if is_s3_uri(config.uri) else None
        try:
            dataset = register_dataset(
                dataset_spec(spec, config.uri, config.chunk_size or None),
                context.instance,
                home,
                s3=s3,
                partitions_name=partitions_name,
                add_partitions=False,
            )
        except (DatasetError, PartitionLimitExceeded) as exc:
            raise RegistrationRefused(str(exc)) from None
        context.instance.add_run_tags(context.run_id, {REGISTERED_DATASET_TAG: dataset.dataset_id})
        context.log.info(
            f"registered {config.uri} as {dataset.dataset_id}: {dataset.total_rows} rows in {dataset.n_chunks} "
            f"chunks of {dataset.chunk_size}"
        )
        return dg.Output(
            None,
            metadata={
                "dataset_id": dg.MetadataValue.text(dataset.dataset_id),
                "uri": dg.MetadataValue.text(dataset.uri),
                "rows": dg.MetadataValue.int(dataset.total_rows),
                "chunks": dg.MetadataValue.int(dataset.n_chunks),
                "size_bytes": dg.MetadataValue.int(dataset.size_bytes),
                "content_sha256": dg.MetadataValue.text(dataset.content_sha256),
                "duplicate_ids": dg.MetadataValue.int(len(dataset.duplicate_rows)),
            },
        )

    @dg.job(
        name=register_job_name(spec.name),
        tags={PIPELINE_TAG: spec.name},
        executor_def=dg.in_process_executor,
        description=f"Registers one landed file as a dataset of `{spec.name}` (reads it once, writes its manifest). "
        f"`{spec.name}__new_dataset_sensor` launches it for each fully-written file, then adds the chunks and "
        "requests their runs.",
    )
    def _job() -> None:
        _register()

    return _job
