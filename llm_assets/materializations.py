"""Materialization metadata: the one way to read what a stage partition's latest materialization recorded
(metadata, time, output), and the one way to write the numbers and tables people read in the UI.

Numbers stay numbers (the UI plots them per partition), rounded to what a person can read:
- USD per chunk or dataset: 6 decimals (a millionth of a dollar), `usd`;
- USD per item: 8 decimals (4 significant digits at $0.0001 an item), `usd_per_item`;
- seconds: 2 decimals, `seconds`.
Every key carries its unit: `_usd` dollars, `_s` seconds, `_tokens` tokens; counts are plain.
"""

from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd

from io_managers.parquet_files import read_parquet
from resources.dead_letters import DeadLetter

USD_DECIMALS = 6
USD_PER_ITEM_DECIMALS = 8
SECONDS_DECIMALS = 2
DEAD_LETTERS_PREVIEW_ROWS = 10
"""Dead letters shown in a stage materialization's `dead_letters_preview` table (the file has all of them)."""
ERROR_PREVIEW_CHARS = 160


def usd(value: float) -> dg.FloatMetadataValue:
    """A USD amount of a chunk or a dataset, to the millionth of a dollar."""
    return dg.MetadataValue.float(round(float(value), USD_DECIMALS))


def usd_per_item(value: float) -> dg.FloatMetadataValue:
    """A USD amount per item, to 8 decimals."""
    return dg.MetadataValue.float(round(float(value), USD_PER_ITEM_DECIMALS))


def seconds(value: float) -> dg.FloatMetadataValue:
    """A duration in seconds, to the hundredth."""
    return dg.MetadataValue.float(round(float(value), SECONDS_DECIMALS))


STAGE_METADATA_KEYS = (
    "Metadata per chunk: `cost_usd` (USD, every attempt of this stage on the chunk, resumed runs included), "
    "`cost_per_item_usd`, `cache_savings_usd` (USD), `input_tokens` / `cached_input_tokens` / `output_tokens` "
    "(tokens), `duration_s` / `latency_p50_s` / `latency_p95_s` (seconds, this run), `requests`, `retries`, "
    "`rate_limited`, `items_*` (counts), `dead_letters` (count) with `dead_letters_preview` (the first "
    f"{DEAD_LETTERS_PREVIEW_ROWS}) and `dead_letters_uri` (the file, only when there are any), "
    "`dagster/row_count` (rows stored)."
)
"""What a stage asset's materializations record, with units: appended to the stage asset's description."""

TOTAL_COST_DESCRIPTION = (
    "`total_cost_usd` (USD): the chunk's LLM spend summed over every stage of the pipeline, recorded on the "
    "last stage only, so it is one series per chunk partition; the quality gates' judge is not in it (its cost "
    "is the sampled_quality check's `cost_usd`), and the dataset's whole bill is the cost ledger's `cost_usd`."
)
"""What the last stage's `total_cost_usd` is: appended to the last stage asset's description."""


# ---------------------------------------------------------------------------------------------- reading


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


# ---------------------------------------------------------------------------------------------- writing


def chunk_total_cost(
    instance: dg.DagsterInstance, earlier: list[dg.AssetKey], partition: str, stage_cost_usd: float
) -> dict[str, Any]:
    """`total_cost_usd` of a chunk, for its last stage's materialization: `stage_cost_usd` (this stage, USD) plus
    the `cost_usd` the latest materialization of each `earlier` stage recorded for `partition`."""
    total = float(stage_cost_usd)
    for key in earlier:
        recorded = latest_materialization(instance, key, partition)
        total += float(recorded.metadata.get("cost_usd", 0.0) or 0.0) if recorded is not None else 0.0
    return {"total_cost_usd": usd(total)}


DEAD_LETTERS_PREVIEW_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("item_id", "string"),
        dg.TableColumn("stage", "string"),
        dg.TableColumn("reason", "string", description="the error class, e.g. schema_invalid, refusal"),
        dg.TableColumn(
            "error", "string", description=f"the message, cut at {ERROR_PREVIEW_CHARS} characters"
        ),
        dg.TableColumn("attempts", "int", description="requests sent for the item at this stage"),
    ]
)


def _cut(text: str, limit: int = ERROR_PREVIEW_CHARS) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dead_letters_metadata(rows: list[DeadLetter], uri: str | None) -> dict[str, Any]:
    """A stage partition's dead letters for the UI: their count; when there are any, a table of the first
    DEAD_LETTERS_PREVIEW_ROWS (`dead_letters_preview`) and the file holding all of them (`dead_letters_uri`,
    `uri`: where they were written). No path when there are none: nothing was written."""
    metadata: dict[str, Any] = {"dead_letters": dg.MetadataValue.int(len(rows))}
    if not rows:
        return metadata
    records = [
        dg.TableRecord(
            {
                "item_id": str(r.item_id),
                "stage": r.stage,
                "reason": r.error_class,
                "error": _cut(r.error_message),
                "attempts": int(r.attempts),
            }
        )
        for r in rows[:DEAD_LETTERS_PREVIEW_ROWS]
    ]
    metadata["dead_letters_preview"] = dg.MetadataValue.table(records, schema=DEAD_LETTERS_PREVIEW_SCHEMA)
    if uri:
        metadata["dead_letters_uri"] = dg.MetadataValue.path(uri)
    return metadata
