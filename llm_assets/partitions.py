"""Chunk partitions: one dynamic partition per chunk of a registered dataset.

Key scheme: ``f"{dataset_id}__c{chunk_index:05d}"``, e.g. ``banking77-3f2a9c1d__c00012``.
- Human-readable: the dataset name, its content hash and the chunk number.
- Sorts in chunk order: the index is zero-padded to 5 digits, so lexicographic order is chunk order
  (the UI and ``sorted()`` agree). Registration refuses more than ``MAX_CHUNKS_PER_DATASET`` chunks
  (raise ``chunk_size`` instead), so the padding never overflows.
- Legal for Dagster: no ``...``, control characters, ``|``, ``,``, ``[`` or ``]`` (dataset ids are slugs of
  ``[a-z0-9-]`` and never contain ``__``), so the key parses back unambiguously.

Partition counts: see docs/partitions.md for the measured cost of large dynamic partition sets and the
retention rule (``prune_dataset_partitions``) that keeps a year of nightly datasets within it.
"""

from __future__ import annotations

import re

import dagster as dg

CHUNK_PARTITIONS_NAME = "chunks"
chunk_partitions = dg.DynamicPartitionsDefinition(name=CHUNK_PARTITIONS_NAME)

CHUNK_INDEX_WIDTH = 5
MAX_CHUNKS_PER_DATASET = 10**CHUNK_INDEX_WIDTH  # indexes 0 .. 99_999
_KEY_SEPARATOR = "__c"
_CHUNK_KEY_RE = re.compile(r"^(?P<dataset_id>[a-z0-9][a-z0-9-]*)__c(?P<index>\d{5})$")
# Dagster recommends at most 100,000 partitions per asset (docs: "Partitioning assets"); every chunk
# partition of every live dataset counts. docs/partitions.md has the measurements behind it.
MAX_LIVE_CHUNK_PARTITIONS = 100_000
# Adds go in batches: the SQL storage checks existing keys with one `IN (...)` per call.
_ADD_BATCH_SIZE = 1_000


class PartitionLimitExceeded(RuntimeError):
    """Registering would push the instance past MAX_LIVE_CHUNK_PARTITIONS."""


def chunk_key(dataset_id: str, chunk_index: int) -> str:
    """The partition key of chunk ``chunk_index`` (0-based) of ``dataset_id``."""
    if not 0 <= chunk_index < MAX_CHUNKS_PER_DATASET:
        raise ValueError(
            f"chunk index {chunk_index} is outside 0..{MAX_CHUNKS_PER_DATASET - 1}; "
            "register the dataset with a larger chunk_size"
        )
    if _KEY_SEPARATOR in dataset_id:
        raise ValueError(f"dataset id {dataset_id!r} must not contain {_KEY_SEPARATOR!r}")
    return f"{dataset_id}{_KEY_SEPARATOR}{chunk_index:0{CHUNK_INDEX_WIDTH}d}"


def parse_chunk_key(key: str) -> tuple[str, int]:
    """``"banking77-3f2a9c1d__c00012"`` -> ``("banking77-3f2a9c1d", 12)``; ValueError for any other key."""
    match = _CHUNK_KEY_RE.match(key)
    if match is None:
        raise ValueError(
            f"{key!r} is not a chunk partition key; expected '<dataset_id>__c<5 digits>', "
            "e.g. 'banking77-3f2a9c1d__c00012'"
        )
    return match["dataset_id"], int(match["index"])


def dataset_partition_keys(dataset_id: str, n_chunks: int) -> list[str]:
    """Every partition key of a dataset with ``n_chunks`` chunks, in chunk order."""
    return [chunk_key(dataset_id, i) for i in range(n_chunks)]


def add_chunk_partitions(
    instance: dg.DagsterInstance,
    keys: list[str],
    max_live: int | None = MAX_LIVE_CHUNK_PARTITIONS,
    partitions_name: str = CHUNK_PARTITIONS_NAME,
) -> list[str]:
    """Add the keys not yet present (in order); returns the keys that were new.

    Membership is checked once, only for ``keys`` (bounded ``IN (...)`` queries), so re-registering is cheap
    however many datasets exist. When keys are missing, the live partition count is checked once against
    ``max_live`` (PartitionLimitExceeded, nothing added); ``max_live=None`` skips the check (benchmarks only).
    ``partitions_name``: the dynamic partitions set (a pipeline spec's is ``<pipeline>__chunks``).
    """
    missing = missing_partitions(instance, keys, partitions_name)
    if missing and max_live is not None:
        check_partition_room(instance, keys, partitions_name, max_live, missing=missing)
    for start in range(0, len(missing), _ADD_BATCH_SIZE):
        instance.add_dynamic_partitions(partitions_name, missing[start : start + _ADD_BATCH_SIZE])
    return missing


def missing_partitions(instance: dg.DagsterInstance, keys: list[str], partitions_name: str) -> list[str]:
    """The `keys` not in `partitions_name`, in order (bounded `IN (...)` queries)."""
    missing: list[str] = []
    for start in range(0, len(keys), _ADD_BATCH_SIZE):
        batch = keys[start : start + _ADD_BATCH_SIZE]
        existing = set(instance.get_existing_dynamic_partitions(partitions_name, batch))
        missing += [k for k in batch if k not in existing]
    return missing


def check_partition_room(
    instance: dg.DagsterInstance,
    keys: list[str],
    partitions_name: str = CHUNK_PARTITIONS_NAME,
    max_live: int = MAX_LIVE_CHUNK_PARTITIONS,
    *,
    missing: list[str] | None = None,
) -> None:
    """PartitionLimitExceeded when adding the missing `keys` (`missing`, when the caller has them) to
    `partitions_name` would pass `max_live` live partitions; adds nothing (a registration run checks before the
    sensor adds them; `add_chunk_partitions`)."""
    count = len(missing if missing is not None else missing_partitions(instance, keys, partitions_name))
    if not count:
        return
    live = len(instance.get_dynamic_partitions(partitions_name))
    if live + count > max_live:
        raise PartitionLimitExceeded(
            f"adding {count} chunk partitions would bring the instance to {live + count}, over the limit of "
            f"{max_live}; prune datasets past their retention window (prune_dataset_partitions) or raise the "
            "pipeline's `input.chunk_size`"
        )


def prune_dataset_partitions(
    instance: dg.DagsterInstance, dataset_id: str, partitions_name: str = CHUNK_PARTITIONS_NAME
) -> int:
    """Delete every chunk partition of ``dataset_id`` from the instance's ``partitions_name`` set (a pipeline's
    `<pipeline>__chunks`); returns how many were deleted.

    Materialization history (event log) stays; only the partition keys go, so the partitions set that every
    UI page and sensor tick loads stays small. Call it for datasets past their retention window.
    """
    prefix = f"{dataset_id}{_KEY_SEPARATOR}"
    doomed = [k for k in instance.get_dynamic_partitions(partitions_name) if k.startswith(prefix)]
    for key in doomed:
        instance.delete_dynamic_partition(partitions_name, key)
    return len(doomed)
