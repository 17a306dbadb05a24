"""The dead-letter store: every item that failed for good, with the context needed to understand and replay it.

Layout: ``<base_uri>/dataset=<dataset_id>/stage=<stage>/<partition_key>.parquet`` (Hive-style, so the tree
can be opened directly with pandas/pyarrow/duckdb as a partitioned dataset). One file per (partition, stage),
replaced atomically on every write: re-running a partition replaces its dead letters, never duplicates them;
writing an empty list removes the file. ``base_uri`` is a local directory or ``s3://bucket/prefix``.
Files written before a column was added (e.g. ``last_reply``) are read with that column empty.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import pandas as pd

from io_managers.parquet_files import (
    delete_uri,
    join_uri,
    list_uris,
    partition_file_name,
    read_parquet,
    write_parquet_atomic,
)

# Pipeline stages write here ("items", "classified", "enriched"); any slug is accepted so new stages need no change.
_STAGE_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class DeadLetter:
    """One item that failed for good at one stage. Times are ISO 8601 UTC strings."""

    dataset_id: str
    partition_key: str
    item_id: str
    stage: str  # "items" | "classified" | "enriched"
    error_class: str  # e.g. "invalid_input", "schema_invalid", "content_refused"
    error_message: str
    attempts: int
    first_attempt_at: str
    last_attempt_at: str
    model: str | None
    run_id: str
    input_text: str | None
    input_json: str  # the original input row as JSON
    last_reply: str | None = None  # the model's last reply (at most 2,000 characters); None if none arrived


DEAD_LETTER_COLUMNS = [f.name for f in fields(DeadLetter)]
# Columns added after the first release; files written before them lack them.
_ADDED_COLUMNS = ("last_reply",)


class DeadLetterStore:
    """Writes and queries dead letters under ``base_uri``; ``s3`` (S3Resource or boto3 client) for s3:// bases."""

    def __init__(self, base_uri: str, s3: Any = None) -> None:
        self.base_uri = base_uri
        self._s3 = s3

    def __repr__(self) -> str:
        return f"DeadLetterStore(base_uri={self.base_uri!r})"

    def uri_for(self, dataset_id: str, partition_key: str | None = None, stage: str | None = None) -> str:
        """Where a person finds dead letters: the dataset's folder, or with ``partition_key`` and ``stage``
        the one file for that partition and stage (with ``partition_key`` only: the dataset folder, since
        a partition's letters are spread over one folder per stage)."""
        dataset_dir = join_uri(self.base_uri, f"dataset={dataset_id}")
        if partition_key is None or stage is None:
            return dataset_dir
        return join_uri(dataset_dir, f"stage={stage}", partition_file_name(partition_key))

    def write_partition(
        self, dataset_id: str, partition_key: str, stage: str, rows: list[DeadLetter]
    ) -> str | None:
        """Replace the dead letters of (partition, stage) with ``rows``; returns the file's URI.

        An empty ``rows`` removes the file (the partition has no dead letters at that stage any more) and returns
        None: there is no file to point a person at.
        """
        _check_stage(stage)
        uri = self.uri_for(dataset_id, partition_key, stage)
        stray = [
            r.item_id
            for r in rows
            if (r.dataset_id, r.partition_key, r.stage) != (dataset_id, partition_key, stage)
        ]
        if stray:
            raise ValueError(
                f"dead letters for items {stray[:5]} belong to another dataset/partition/stage than "
                f"({dataset_id}, {partition_key}, {stage}); write each partition's letters separately"
            )
        if not rows:
            delete_uri(uri, s3=self._s3)
            return None
        frame = pd.DataFrame([asdict(r) for r in rows], columns=DEAD_LETTER_COLUMNS)
        frame["attempts"] = frame["attempts"].astype("int64")
        write_parquet_atomic(frame, uri, s3=self._s3)
        return uri

    def query(
        self, dataset_id: str, partition_key: str | None = None, stage: str | None = None
    ) -> pd.DataFrame:
        """All dead letters of a dataset, optionally of one partition and/or stage (empty frame when none)."""
        if stage is not None:
            _check_stage(stage)
        if partition_key is not None and stage is not None:
            uris = [self.uri_for(dataset_id, partition_key, stage)]
        else:
            uris = list_uris(self.uri_for(dataset_id), suffix=".parquet", s3=self._s3)
            if stage is not None:
                uris = [u for u in uris if f"/stage={stage}/" in u.replace("\\", "/")]
            if partition_key is not None:
                uris = [
                    u for u in uris if u.replace("\\", "/").endswith("/" + partition_file_name(partition_key))
                ]
        frames = []
        for uri in uris:
            try:
                frames.append(read_parquet(uri, s3=self._s3))
            except FileNotFoundError:
                continue  # the exact (partition, stage) file is absent: that partition has no letters there
        if not frames:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in DEAD_LETTER_COLUMNS})
        merged = pd.concat(frames, ignore_index=True)
        # Older files lack newer columns: they read as empty (None), never as an error.
        merged = merged.reindex(columns=DEAD_LETTER_COLUMNS)
        for column in _ADDED_COLUMNS:
            values = merged[column].astype(object)
            merged[column] = values.where(values.notna(), None)
        return merged


def _check_stage(stage: str) -> None:
    if not _STAGE_RE.match(stage):
        raise ValueError(
            f"stage {stage!r} is not a lowercase name like 'classified'; pass the asset's stage name"
        )
