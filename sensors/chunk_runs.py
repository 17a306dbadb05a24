"""The chunk job the sensors launch, and the one way they build a chunk's run request (key and tags)."""

from __future__ import annotations

import os

import dagster as dg

from llm_assets.chunk_status import ATTEMPT_TAG, DATASET_TAG, PROVIDER_TAG
from llm_assets.partitions import parse_chunk_key

LAUNCHED_BY_TAG = "chunkwise/launched_by"
CHUNK_ASSETS = ("items", "classified", "enriched")

chunk_pipeline_job = dg.define_asset_job(
    "chunk_pipeline",
    selection=dg.AssetSelection.assets(*CHUNK_ASSETS),
    # One process per run, not per step: a chunk's steps run one after another anyway, and parallelism comes
    # from many chunk runs at once (the run queue). The multiprocess executor cost 11 s of fixed cost per chunk
    # run here against 1 s in process (5 step processes, each loading the code location;
    # bench/pipeline_overhead.py).
    executor_def=dg.in_process_executor,
    description="One chunk through items -> classified -> enriched (with their checks). The sensors launch it.",
)
"""Launched by the new-dataset and backfill sensors, one run per chunk partition."""


def default_provider() -> str:
    """The provider label for runs: `$CHUNKWISE_LLM_PROVIDER`, default `openai` (what definitions.py uses)."""
    return os.environ.get("CHUNKWISE_LLM_PROVIDER", "openai")


def chunk_run_request(partition_key: str, attempt: int, provider: str, launched_by: str) -> dg.RunRequest:
    """The run of one chunk's `attempt`-th try; its run_key makes a second launch of the same try a no-op."""
    dataset_id, _ = parse_chunk_key(partition_key)
    return dg.RunRequest(
        run_key=f"{partition_key}:attempt-{attempt}",
        partition_key=partition_key,
        tags={
            DATASET_TAG: dataset_id,
            PROVIDER_TAG: provider,
            ATTEMPT_TAG: str(attempt),
            LAUNCHED_BY_TAG: launched_by,
        },
    )
