"""ChunkParquetIOManager: one Parquet file per asset partition, written atomically, local or S3.

Layout: ``<base_uri>/<asset key path>/<partition key>.parquet`` (unpartitioned assets:
``<base_uri>/<asset key path>.parquet``). The partition key is percent-encoded for the file name; chunk keys
(``banking77-3f2a9c1d__c00012``) need no encoding, so file names equal partition keys.

``base_uri`` is a local directory (default ``$CHUNKWISE_HOME/outputs``; ``$CHUNKWISE_HOME`` defaults to
``./.chunkwise``) or ``s3://bucket/prefix`` (then ``s3`` must be set to a dagster-aws ``S3Resource``).
Re-materializing a partition replaces its file: outputs never duplicate.
"""

import os
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from io_managers.parquet_files import (
    is_s3_uri,
    join_uri,
    partition_file_name,
    read_parquet,
    write_parquet_atomic,
)

DEFAULT_HOME = "./.chunkwise"


def resolve_base_uri(base_uri: str) -> str:
    """Expand ``$CHUNKWISE_HOME`` (default ``./.chunkwise``) and other env vars in a local base URI."""
    if is_s3_uri(base_uri):
        return base_uri
    home = os.environ.get("CHUNKWISE_HOME") or DEFAULT_HOME
    expanded = base_uri.replace("${CHUNKWISE_HOME}", home).replace("$CHUNKWISE_HOME", home)
    return os.path.abspath(os.path.expanduser(os.path.expandvars(expanded)))


class ChunkParquetIOManager(dg.ConfigurableIOManager):
    """Stores each asset partition's pandas DataFrame as one Parquet file; loads the upstream partition's file."""

    base_uri: str = Field(
        default="$CHUNKWISE_HOME/outputs",
        description="Local directory or s3://bucket/prefix under which asset partitions are stored.",
    )
    # Typed as a resource dependency, not `S3Resource | None`: importing dagster_aws costs every run worker
    # ~0.6 s at start-up (its package __init__ loads all its components), paid even by local-only deployments.
    # (No `from __future__ import annotations` in this module: Dagster must see this annotation unstringified.)
    s3: dg.ResourceDependency[Any | None] = Field(
        default=None, description="dagster-aws S3Resource; required when base_uri is s3://."
    )

    def __repr__(self) -> str:
        # The nested S3Resource's own repr would print credentials: show only where data goes.
        s3 = "None" if self.s3 is None else f"S3Resource(endpoint_url={self.s3.endpoint_url!r})"
        return f"ChunkParquetIOManager(base_uri={self.base_uri!r}, s3={s3})"

    def uri_for(self, asset_key: dg.AssetKey, partition_key: str | None) -> str:
        """Where an asset partition lives (a path or s3:// URI a person can open)."""
        base = resolve_base_uri(self.base_uri)
        if partition_key is None:
            return join_uri(base, *asset_key.path[:-1], f"{asset_key.path[-1]}.parquet")
        return join_uri(base, *asset_key.path, partition_file_name(partition_key))

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return  # the asset returned nothing to store (e.g. it emitted a MaterializeResult only)
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"ChunkParquetIOManager stores pandas DataFrames, but {context.asset_key.to_user_string()} "
                f"returned {type(obj).__name__}; return a DataFrame or set another io_manager_key on the asset"
            )
        partition_key = context.asset_partition_key if context.has_asset_partitions else None
        uri = self.uri_for(context.asset_key, partition_key)
        write_parquet_atomic(obj, uri, s3=self.s3)
        context.add_output_metadata(
            {
                "uri": dg.MetadataValue.path(uri),
                "dagster/row_count": dg.MetadataValue.int(len(obj)),
            }
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        asset_key = context.asset_key
        if not context.has_asset_partitions:
            return read_parquet(self.uri_for(asset_key, None), s3=self.s3)
        keys = list(context.asset_partition_keys)
        frames = [self._read_partition(asset_key, key) for key in keys]
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

    def _read_partition(self, asset_key: dg.AssetKey, partition_key: str) -> pd.DataFrame:
        uri = self.uri_for(asset_key, partition_key)
        try:
            return read_parquet(uri, s3=self.s3)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{asset_key.to_user_string()} partition {partition_key!r} has no stored output at {uri}; "
                "materialize that partition first (or check base_uri / CHUNKWISE_HOME)"
            ) from None
