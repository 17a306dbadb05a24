"""The one way to read what a stage partition's latest materialization recorded (metadata, time, output)."""

from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd

from io_managers.parquet_files import read_parquet


@dataclass(frozen=True)
class Recorded:
    metadata: dict[str, Any]
    """Metadata values as plain Python (floats, ints, text, paths)."""
    timestamp: float
    """When it was materialized (Unix seconds)."""


def latest_materialization(
    instance: dg.DagsterInstance, asset: str | dg.AssetKey, partition: str
) -> Recorded | None:
    """The latest materialization of `asset` for `partition`, or None when it was never materialized."""
    key = asset if isinstance(asset, dg.AssetKey) else dg.AssetKey(asset)
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    materialization = records[0].asset_materialization
    return Recorded({k: v.value for k, v in materialization.metadata.items()}, records[0].timestamp)


def load_stage_output(
    instance: dg.DagsterInstance, asset: str | dg.AssetKey, partition: str, s3: Any = None
) -> pd.DataFrame:
    """A stage partition's output, from the path its latest materialization recorded (`uri` metadata; `s3`, an
    S3Resource, when outputs live on S3)."""
    recorded = latest_materialization(instance, asset, partition)
    if recorded is None or "uri" not in recorded.metadata:
        raise FileNotFoundError(f"{asset} partition {partition} has no recorded output; re-materialize it")
    return read_parquet(str(recorded.metadata["uri"]), s3=s3)
