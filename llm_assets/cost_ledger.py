"""The cost ledger: every dollar and token a dataset was billed, one row per billed attempt, one partition per dataset.

Answers "what did dataset X cost, per team, per model, per stage, per day, and how much of it was useful" with a
group-by (`rollup`). Built from the spend ledger (resources/llm/spend_ledger.py), the append-only table every
request attempt is written to before its result is used, so it adds up to the provider's bill after crashes,
retries, budget halts, re-materializations and backfills, nothing estimated:
- one row per `billed` event (an HTTP reply with usage, or a collected batch line) of the dataset, valid or not,
  the quality gates' judge included;
- `kind` is `useful`, `repaid`, `wasted` or `quality_checks`, defined in llm_assets/report.py (`spend_kinds`):
  the last paid `ok` reply of a kept output is useful, earlier ones re-paid, the judge's spend quality checks,
  everything else billed wasted;
- `team` is the team billed for the item, `(no team)` when it has none, `(quality checks)` for the judge;
- `day` is the UTC day the provider billed the attempt (batch lines: the day they were collected).
Attempts that were sent and never settled (a process killed mid-request) are not rows: nobody knows their cost.
The completion report counts them (`unsettled_requests`, `unsettled_max_usd`).
"""

from typing import Any

import dagster as dg
import pandas as pd

from llm_assets.datasets import load_dataset
from llm_assets.layout import PipelineLayout
from llm_assets.materializations import USD_DECIMALS, usd
from llm_assets.report import NO_TEAM, QUALITY_CHECKS, SPEND_KINDS, item_buckets, spend_rows, sum_by
from llm_assets.settings import PipelineSettings
from resources.dead_letters import DeadLetterStore
from resources.llm import LLMResource

TOKEN_COLUMNS = ("input_tokens", "cached_input_tokens", "output_tokens")
LEDGER_COLUMNS = [
    "dataset_id", "partition_key", "item_id", "team", "stage", "model", "mode", "day", "kind", "outcome",
    "attempt", "run_id", "idempotency_key", "provider_request_id",
    *TOKEN_COLUMNS, "cost_usd", "cache_savings_usd",
]  # fmt: skip
__all__ = ["NO_TEAM", "QUALITY_CHECKS", "SPEND_KINDS", "build_ledger", "cost_ledger_asset", "rollup"]


def build_ledger(ledger_rows: pd.DataFrame, dataset_id: str, kept_keys: set[str]) -> pd.DataFrame:
    """The cost ledger of `dataset_id` from its spend-ledger events (`SpendLedger.rows(dataset_id)`) and the
    idempotency keys whose output is kept (`item_buckets(...).kept_keys`)."""
    rows = spend_rows(ledger_rows, dataset_id, kept_keys)
    frame = rows.reindex(columns=LEDGER_COLUMNS)
    for column in (*TOKEN_COLUMNS, "attempt"):
        frame[column] = frame[column].fillna(0).astype("int64")
    for column in ("cost_usd", "cache_savings_usd"):
        frame[column] = frame[column].fillna(0.0).astype(float)
    return frame.reset_index(drop=True)


def rollup(ledger: pd.DataFrame, by: str) -> dict[str, float]:
    """USD per value of `by` (`team`, `model`, `stage`, `day`, `kind`, ...), largest first."""
    return sum_by(ledger, by)


LEDGER_TABLE_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("dataset_id", "string"),
        dg.TableColumn("partition_key", "string", description="the chunk"),
        dg.TableColumn("item_id", "string"),
        dg.TableColumn("team", "string", description="who is billed; `(quality checks)` for the judge"),
        dg.TableColumn("stage", "string", description="the pipeline stage, or judge"),
        dg.TableColumn("model", "string"),
        dg.TableColumn("mode", "string", description="online or batch"),
        dg.TableColumn("day", "string", description="UTC day the attempt was billed"),
        dg.TableColumn("kind", "string", description="useful, repaid, wasted or quality_checks"),
        dg.TableColumn("outcome", "string", description="ok, invalid, refusal or content_filter"),
        dg.TableColumn("attempt", "int", description="the item's attempt number (batch: the round)"),
        dg.TableColumn("run_id", "string"),
        dg.TableColumn("idempotency_key", "string"),
        dg.TableColumn("provider_request_id", "string", description="the provider's id of the reply"),
        dg.TableColumn("input_tokens", "int", description="all input tokens, cached included"),
        dg.TableColumn("cached_input_tokens", "int"),
        dg.TableColumn("output_tokens", "int"),
        dg.TableColumn("cost_usd", "float", description="USD"),
        dg.TableColumn("cache_savings_usd", "float", description="USD saved by prompt caching"),
    ]
)


def ledger_metadata(ledger: pd.DataFrame) -> dict[str, Any]:
    """The cost ledger's numeric and JSON metadata: totals, per kind, per team (plotted per dataset). USD to the
    millionth of a dollar (llm_assets/materializations.py), tokens and counts as integers."""
    by_team = rollup(ledger, "team")
    by_kind = {kind: 0.0 for kind in SPEND_KINDS} | rollup(ledger, "kind")

    def rounded(values: dict[str, float]) -> dict[str, float]:
        return {k: round(v, USD_DECIMALS) for k, v in values.items()}

    return {
        "cost_usd": usd(float(ledger["cost_usd"].sum())),
        "requests_billed": dg.MetadataValue.int(len(ledger)),
        "items": dg.MetadataValue.int(int(ledger.loc[ledger["team"] != QUALITY_CHECKS, "item_id"].nunique())),
        "input_tokens": dg.MetadataValue.int(int(ledger["input_tokens"].sum())),
        "output_tokens": dg.MetadataValue.int(int(ledger["output_tokens"].sum())),
        "cost_by_kind": dg.MetadataValue.json(rounded(by_kind)),
        "cost_by_team": dg.MetadataValue.json(rounded(by_team)),
        "cost_by_model": dg.MetadataValue.json(rounded(rollup(ledger, "model"))),
        "cost_by_stage": dg.MetadataValue.json(rounded(rollup(ledger, "stage"))),
        "cost_by_day": dg.MetadataValue.json(rounded(rollup(ledger, "day"))),
        **{f"{kind}_usd": usd(value) for kind, value in by_kind.items()},
        **{f"team_cost_usd/{team}": usd(value) for team, value in by_team.items()},
    }


def cost_ledger_asset(
    layout: PipelineLayout,
    partitions_def: dg.DynamicPartitionsDefinition,
    *,
    group_name: str,
    owners: list[str] | None,
) -> dg.AssetsDefinition:
    """The cost ledger of `layout`'s pipeline (key `layout.ledger_key`), one partition per dataset; it reads
    the spend ledger through the first stage's LLM resource (every stage writes the same one)."""
    llm_key = layout.llm_keys[0]

    @dg.asset(
        key=layout.ledger_key,
        partitions_def=partitions_def,
        deps=[
            dg.AssetDep(layout.key(stage), partition_mapping=dg.AllPartitionMapping())
            for stage in layout.stages
        ],
        group_name=group_name,
        kinds={"pandas", "parquet"},
        owners=owners,
        description=(
            "Every billed request attempt of one dataset (partition = dataset id), from the spend ledger: chunk, "
            "item, team, stage, model, mode, UTC day, tokens, USD, and `kind` (useful / repaid / wasted / "
            "quality_checks). Sums to the provider's bill. Metadata (USD to 6 decimals): `cost_usd`, the "
            "dataset's whole bill; `team_cost_usd/<team>` per team and `<kind>_usd` per kind; `cost_by_*` as JSON. "
            "The cost of one chunk over every stage is the last stage's `total_cost_usd`."
        ),
        metadata={"dagster/column_schema": LEDGER_TABLE_SCHEMA},
        required_resource_keys={"settings", "s3", llm_key},
    )
    def _cost_ledger(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        settings: PipelineSettings = context.resources.settings
        llm: LLMResource = getattr(context.resources, llm_key)
        home = settings.home_path()
        dataset = load_dataset(context.partition_key, home)
        store = DeadLetterStore(settings.dead_letters_uri(), s3=context.resources.s3)
        buckets = item_buckets(context.instance, dataset, store, s3=context.resources.s3, layout=layout)
        events = llm.spend_ledger().rows(dataset.dataset_id)
        ledger = build_ledger(events, dataset.dataset_id, buckets.kept_keys)
        return dg.MaterializeResult(value=ledger, metadata=ledger_metadata(ledger))

    return _cost_ledger
