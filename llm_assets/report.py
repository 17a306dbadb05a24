"""The completion report of a dataset: what happened and what it cost, built from what Dagster recorded.

Numbers come from the stage materializations' metadata (tokens, dollars, requests, retries per partition),
the stage outputs (per-item cost rows, labels) and the dead-letter store; nothing is estimated here.
A dataset "succeeded" per item: an item succeeded when it is in the final `enriched` table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg
import pandas as pd

from llm_assets.checks import checks_section
from llm_assets.cost_ledger import FAILED_ITEMS, NO_TEAM
from llm_assets.datasets import RegisteredDataset
from llm_assets.materializations import latest_materialization, load_stage_output
from resources.dead_letters import DeadLetterStore

STAGES = ("classified", "enriched")


@dataclass
class CompletionReport:
    dataset_id: str
    total_items: int
    succeeded: int
    failed: int
    dead_lettered: int
    not_processed: int
    retried: int
    wall_clock_s: float
    total_cost_usd: float
    cost_per_item_usd: float
    failed_items_uri: str
    partitions_total: int
    partitions_materialized: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cache_savings_usd: float
    cost_by_stage: dict[str, float] = field(default_factory=dict)
    cost_by_model: dict[str, float] = field(default_factory=dict)
    cost_by_mode: dict[str, float] = field(default_factory=dict)
    """`online` or `batch` (provider Batch API, half price): where the stages' money went."""
    cost_by_team: dict[str, float] = field(default_factory=dict)
    dead_letters_by_class: dict[str, int] = field(default_factory=dict)
    top_decile_token_share: float = 0.0
    accuracy: float | None = None
    """Every classified item with a gold label, scored (free: the labels are in the input)."""
    sampled_accuracy: float | None = None
    """Pooled over the chunks' `sampled_quality` gate samples (what the gates decided on)."""
    sample_size: int = 0
    blocked_partitions: list[str] = field(default_factory=list)
    """Chunks a blocking quality gate stopped: their items count as failed, their outputs feed nothing."""
    checks: dict[str, Any] = field(default_factory=dict)
    """Per check: partitions passed / failed; the sampled accuracy; the judge's spend."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> str:
        return (
            f"{self.succeeded:,} of {self.total_items:,} items succeeded, {self.failed:,} failed "
            f"({self.dead_lettered:,} dead-lettered, {self.not_processed:,} not processed); "
            f"${self.total_cost_usd:.4f} (${self.cost_per_item_usd:.6f} per item)"
        )


def _latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str) -> dict[str, Any] | None:
    recorded = latest_materialization(instance, asset, partition)
    return None if recorded is None else recorded.metadata


def build_completion_report(
    instance: dg.DagsterInstance,
    dataset: RegisteredDataset,
    dead_letters: DeadLetterStore,
    wall_clock_s: float,
    s3: Any = None,
) -> CompletionReport:
    checks = checks_section(instance, dataset)
    blocked = set(checks["blocked_partitions"])
    cost_by_stage: dict[str, float] = {}
    cost_by_model: dict[str, float] = {}
    cost_by_mode: dict[str, float] = {}
    totals = {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0, "cache_savings_usd": 0.0}
    retried = 0
    frames: dict[str, list[pd.DataFrame]] = {s: [] for s in STAGES}
    materialized = 0
    items_in_materialized = 0
    for index, partition in enumerate(dataset.partition_keys):
        # Spend counts wherever it happened; outputs count only for chunks that passed their gates.
        enriched_done = False
        for stage in STAGES:
            meta = _latest_metadata(instance, stage, partition)
            if meta is None:
                continue
            enriched_done = enriched_done or stage == "enriched"
            cost = float(meta.get("cost_usd", 0.0))
            cost_by_stage[stage] = cost_by_stage.get(stage, 0.0) + cost
            model = str(meta.get("model", "") or "none")
            cost_by_model[model] = cost_by_model.get(model, 0.0) + cost
            mode = str(meta.get("mode", "") or "online")
            cost_by_mode[mode] = cost_by_mode.get(mode, 0.0) + cost
            for name in totals:
                totals[name] += meta.get(name, 0) or 0
            retried += int(meta.get("retries", 0) or 0)
            if partition not in blocked:
                frames[stage].append(
                    load_stage_output(instance, stage, partition, s3).assign(_partition=partition)
                )
        if enriched_done:
            materialized += 1
            items_in_materialized += _chunk_size(dataset, index)
    if checks["judge_cost_usd"]:
        cost_by_stage["judge"] = float(checks["judge_cost_usd"])
        cost_by_mode["online"] = cost_by_mode.get("online", 0.0) + float(
            checks["judge_cost_usd"]
        )  # judge: online

    enriched = pd.concat(frames["enriched"], ignore_index=True) if frames["enriched"] else pd.DataFrame()
    classified = (
        pd.concat(frames["classified"], ignore_index=True) if frames["classified"] else pd.DataFrame()
    )
    dead = dead_letters.query(dataset.dataset_id)
    total_cost = float(sum(cost_by_stage.values()))
    succeeded = int(enriched["item_id"].nunique()) if len(enriched) else 0
    not_processed = dataset.total_rows - items_in_materialized

    cost_by_team: dict[str, float] = {}
    per_item_tokens = pd.Series(dtype=float)
    rows = (
        pd.concat([f for f in (classified, enriched) if not f.empty], ignore_index=True)
        if succeeded
        else None
    )
    if rows is not None:
        rows["team"] = rows["team"].fillna(NO_TEAM)
        cost_by_team = {k: float(v) for k, v in rows.groupby("team")["cost_usd"].sum().items()}
        attributed = sum(cost_by_team.values())
        if total_cost - attributed > 1e-9:
            cost_by_team[FAILED_ITEMS] = total_cost - attributed
        per_item_tokens = (rows["input_tokens"] + rows["output_tokens"]).groupby(rows["item_id"]).sum()
    top_share = 0.0
    if len(per_item_tokens) and per_item_tokens.sum() > 0:
        top_n = max(1, len(per_item_tokens) // 10)
        top_share = float(per_item_tokens.nlargest(top_n).sum() / per_item_tokens.sum())

    labelled = classified[classified["gold_label"].notna()] if len(classified) else classified
    accuracy = float((labelled["label"] == labelled["gold_label"]).mean()) if len(labelled) else None
    sampled = checks["sampled_accuracy"]
    return CompletionReport(
        dataset_id=dataset.dataset_id,
        total_items=dataset.total_rows,
        succeeded=succeeded,
        failed=dataset.total_rows - succeeded,
        dead_lettered=len(dead),
        not_processed=not_processed,
        retried=retried,
        wall_clock_s=round(wall_clock_s, 3),
        total_cost_usd=total_cost,
        cost_per_item_usd=total_cost / dataset.total_rows if dataset.total_rows else 0.0,
        failed_items_uri=dead_letters.uri_for(dataset.dataset_id),
        partitions_total=len(dataset.partition_keys),
        partitions_materialized=materialized,
        input_tokens=int(totals["input_tokens"]),
        cached_input_tokens=int(totals["cached_input_tokens"]),
        output_tokens=int(totals["output_tokens"]),
        cache_savings_usd=float(totals["cache_savings_usd"]),
        cost_by_stage=cost_by_stage,
        cost_by_model=cost_by_model,
        cost_by_mode=cost_by_mode,
        cost_by_team=cost_by_team,
        dead_letters_by_class={str(k): int(v) for k, v in dead["error_class"].value_counts().items()}
        if len(dead)
        else {},
        top_decile_token_share=top_share,
        accuracy=accuracy,
        sampled_accuracy=sampled["accuracy"],
        sample_size=int(sampled["scored"]),
        blocked_partitions=sorted(blocked),
        checks=checks,
    )


def _chunk_size(dataset: RegisteredDataset, chunk_index: int) -> int:
    return min(dataset.chunk_size, dataset.total_rows - chunk_index * dataset.chunk_size)
