"""The cost ledger: every dollar and token a dataset spent, one row per item per stage, one partition per dataset.

Answers "what did dataset X cost, per team, per model, per stage, per day" with a group-by (`rollup`).
Built from what the stages recorded, nothing estimated:
- one row per item that produced output (the stage Parquet files carry per-item usage columns and `team`);
  `enriched` rows the routing rule did not send to the model cost nothing and are left out;
- one `(failed items)` row per chunk and stage for the spend of items that failed for good (dead letters were
  billed too): the stage's `cost_usd`/token metadata minus the item rows, so the ledger always adds up to the
  metadata and to the provider's bill;
- `day` is the UTC day the stage's chunk materialized (when the money was spent, to the run).
Every chunk whose stage materialized counts, including chunks a quality gate later blocked: money spent is spent.
Stage outputs are read from the paths in their materialization metadata (local outputs; S3 outputs need the
IO manager's S3 resource, not wired here yet).
"""

from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pandas as pd

from io_managers.parquet_files import read_parquet
from llm_assets.datasets import RegisteredDataset, load_dataset
from llm_assets.materializations import latest_materialization
from llm_assets.settings import PipelineSettings

dataset_partitions = dg.DynamicPartitionsDefinition(name="datasets")
"""One partition per registered dataset id (the completion sensor adds it when the dataset finishes)."""

LEDGER_STAGES = ("classified", "enriched")
FAILED_ITEMS = "(failed items)"
NO_TEAM = "(no team)"
TOKEN_COLUMNS = ("input_tokens", "cached_input_tokens", "output_tokens")
LEDGER_COLUMNS = [
    "dataset_id", "partition_key", "item_id", "team", "stage", "model", "day",
    *TOKEN_COLUMNS, "cost_usd", "cache_savings_usd",
]  # fmt: skip


def _stage_rows(
    dataset_id: str, partition: str, stage: str, meta: dict[str, Any], day: str, s3: Any
) -> pd.DataFrame:
    frame = read_parquet(str(meta["uri"]), s3=s3)
    if stage == "enriched" and "routed" in frame.columns:
        frame = frame[frame["routed"].astype(bool)]
    rows = pd.DataFrame(
        {
            "dataset_id": dataset_id,
            "partition_key": partition,
            "item_id": frame["item_id"].astype(str),
            "team": frame["team"].fillna(NO_TEAM).astype(str).replace("", NO_TEAM),
            "stage": stage,
            "model": frame["model"].astype(str),
            "day": day,
            **{c: frame[c].fillna(0).astype("int64") for c in TOKEN_COLUMNS},
            "cost_usd": frame["cost_usd"].fillna(0.0).astype(float),
            "cache_savings_usd": frame.get("cache_savings_usd", pd.Series(0.0, index=frame.index))
            .fillna(0.0)
            .astype(float),
        }
    )
    residual = {
        "cost_usd": float(meta.get("cost_usd", 0.0)) - float(rows["cost_usd"].sum()),
        "cache_savings_usd": float(meta.get("cache_savings_usd", 0.0))
        - float(rows["cache_savings_usd"].sum()),
        **{c: int(meta.get(c, 0)) - int(rows[c].sum()) for c in TOKEN_COLUMNS},
    }
    if abs(residual["cost_usd"]) > 1e-12 or any(residual[c] for c in TOKEN_COLUMNS):
        failed = {
            "dataset_id": dataset_id,
            "partition_key": partition,
            "item_id": "",
            "team": FAILED_ITEMS,
            "stage": stage,
            "model": str(meta.get("model", "")),
            "day": day,
            **residual,
        }
        rows = pd.concat([rows, pd.DataFrame([failed])], ignore_index=True)
    return rows


def build_ledger(instance: dg.DagsterInstance, dataset: RegisteredDataset, s3: Any = None) -> pd.DataFrame:
    """The ledger rows of `dataset` from the latest materialization of each stage of each chunk."""
    parts: list[pd.DataFrame] = []
    for partition in dataset.partition_keys:
        for stage in LEDGER_STAGES:
            recorded = latest_materialization(instance, stage, partition)
            if recorded is None:
                continue
            day = datetime.fromtimestamp(recorded.timestamp, UTC).date().isoformat()
            parts.append(_stage_rows(dataset.dataset_id, partition, stage, recorded.metadata, day, s3))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in LEDGER_COLUMNS})
    return pd.concat(parts, ignore_index=True)[LEDGER_COLUMNS]


def rollup(ledger: pd.DataFrame, by: str) -> dict[str, float]:
    """USD per value of `by` (`team`, `model`, `stage`, `day`, ...), largest first."""
    if ledger.empty:
        return {}
    sums = ledger.groupby(by)["cost_usd"].sum().sort_values(ascending=False)
    return {str(k): float(v) for k, v in sums.items()}


@dg.asset(
    partitions_def=dataset_partitions,
    deps=[dg.AssetDep(stage, partition_mapping=dg.AllPartitionMapping()) for stage in LEDGER_STAGES],
    group_name="chunkwise",
    kinds={"pandas", "parquet"},
    owners=["team:data-platform"],
    description=(
        "Per-item cost rows of one dataset (partition = dataset id): dataset, chunk, item, team, stage, model, "
        "UTC day, tokens, USD. Spend of failed items is one `(failed items)` row per chunk and stage, so the "
        "ledger adds up to the stages' metadata. Numeric metadata `team_cost_usd/<team>` per team."
    ),
    metadata={
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn("dataset_id", "string"),
                dg.TableColumn("partition_key", "string", description="the chunk"),
                dg.TableColumn("item_id", "string", description="empty on `(failed items)` rows"),
                dg.TableColumn(
                    "team", "string", description="who is billed; `(failed items)` for dead letters"
                ),
                dg.TableColumn("stage", "string"),
                dg.TableColumn("model", "string"),
                dg.TableColumn("day", "string", description="UTC day the chunk's stage materialized"),
                dg.TableColumn("input_tokens", "int", description="all input tokens, cached included"),
                dg.TableColumn("cached_input_tokens", "int"),
                dg.TableColumn("output_tokens", "int"),
                dg.TableColumn("cost_usd", "float", description="USD"),
                dg.TableColumn("cache_savings_usd", "float", description="USD saved by prompt caching"),
            ]
        )
    },
)
def cost_ledger(
    context: dg.AssetExecutionContext, settings: PipelineSettings, s3: dg.ResourceParam[Any]
) -> dg.MaterializeResult:
    dataset = load_dataset(context.partition_key, settings.home_path())
    ledger = build_ledger(context.instance, dataset, s3)
    by_team = rollup(ledger, "team")
    metadata: dict[str, Any] = {
        "cost_usd": dg.MetadataValue.float(float(ledger["cost_usd"].sum()) if len(ledger) else 0.0),
        "items": dg.MetadataValue.int(int(ledger.loc[ledger["item_id"] != "", "item_id"].nunique())),
        "input_tokens": dg.MetadataValue.int(int(ledger["input_tokens"].sum()) if len(ledger) else 0),
        "output_tokens": dg.MetadataValue.int(int(ledger["output_tokens"].sum()) if len(ledger) else 0),
        "cost_by_team": dg.MetadataValue.json(by_team),
        "cost_by_model": dg.MetadataValue.json(rollup(ledger, "model")),
        "cost_by_stage": dg.MetadataValue.json(rollup(ledger, "stage")),
        "cost_by_day": dg.MetadataValue.json(rollup(ledger, "day")),
        **{f"team_cost_usd/{team}": dg.MetadataValue.float(usd) for team, usd in by_team.items()},
    }
    return dg.MaterializeResult(value=ledger, metadata=metadata)
