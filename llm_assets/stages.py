"""One way to run an LLM stage over a chunk: checkpointed, resumable, with dead letters and cost metadata.

Both `classified` and `enriched` call `run_stage`. It
1. loads the chunk's checkpoint and skips every item already finished (success or permanent failure);
2. sends the rest through the LLM resource, recording each result durably the moment it arrives;
3. on a chunk-level failure (retryable or job-fatal) lets the exception through with the checkpoint kept,
   so the retry (Dagster's RetryPolicy, then the backfill sensor) pays only for what was not done;
4. on success returns one output row per succeeded item and one dead letter per failed item.
The checkpoint is removed by `remove_checkpoints_on_success` after the IO manager has stored the output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from llm_assets.prompts import StagePrompt
from resources.checkpoints import CheckpointCorrupted, ChunkCheckpoint
from resources.dead_letters import DeadLetter
from resources.llm import BudgetScope, ItemResult, LLMRequest, LLMResource, UsageSummary

KEY_COLUMNS = ("idempotency_key", "dataset_id", "item_id", "stage", "prompt_version", "model", "team")
USAGE_COLUMNS = (
    "cost_usd",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "cache_savings_usd",
    "attempts",
    "latency_s",
)


def idempotency_key(dataset_id: str, item_id: str, stage: str, prompt_version: str, model: str) -> str:
    """The key every output row carries: processing an item twice overwrites, never appends."""
    return f"{dataset_id}|{item_id}|{stage}|{prompt_version}|{model}"


def checkpoint_root(home: Path) -> Path:
    return home / "checkpoints"


def _as_dict(record: Any) -> dict:
    if dataclasses.is_dataclass(record):
        return dataclasses.asdict(record)
    return record.model_dump(mode="json")


def _iso(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _result_record(result: ItemResult, run_id: str) -> dict:
    usage = _as_dict(result.usage)
    return {
        "ok": result.ok,
        "output": result.output,
        "error_class": result.error_class,
        "error_message": result.error_message,
        "attempts": result.attempts,
        "first_attempt_at": _iso(result.first_attempt_at),
        "last_attempt_at": _iso(result.last_attempt_at),
        "usage": {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in usage.items()},
        "run_id": run_id,
    }


class _InMemoryResults:
    """Stands in for ChunkCheckpoint when checkpointing is off (benchmarks only): nothing survives a crash."""

    def __init__(self) -> None:
        self._records: dict[str, dict] = {}
        self.path = "(checkpointing off)"

    def load(self) -> dict[str, dict]:
        return dict(self._records)

    def record(self, key: str, record: dict) -> None:
        self._records[key] = record

    def close(self) -> None:
        pass


@dataclass
class StageOutcome:
    rows: pd.DataFrame
    """One row per succeeded item: the idempotency key columns, the stage output fields and usage columns."""
    dead_letters: list[DeadLetter]
    metadata: dict[str, Any]
    checkpoint_dir: str


def run_stage(
    context: dg.AssetExecutionContext,
    *,
    llm: LLMResource,
    prompt: StagePrompt,
    items: pd.DataFrame,
    dataset_id: str,
    home: Path,
    checkpoint_every: int,
    checkpointing: bool = True,
) -> StageOutcome:
    """Run `prompt` on every row of `items` (columns item_id, text) not already checkpointed."""
    partition_key = context.partition_key
    stage = prompt.stage
    version = prompt.version
    checkpoint = (
        ChunkCheckpoint(
            checkpoint_root(home), dataset_id, partition_key, stage, compact_every=checkpoint_every
        )
        if checkpointing
        else _InMemoryResults()
    )
    try:
        done = checkpoint.load()
    except CheckpointCorrupted as exc:
        # Retrying cannot repair a damaged file: halt the chunk and say what to do.
        raise dg.Failure(
            description=f"{stage} checkpoint of {partition_key} is damaged: {exc}",
            metadata={"checkpoint_dir": str(checkpoint.path)},
            allow_retries=False,
        ) from exc
    by_key = {
        idempotency_key(dataset_id, row.item_id, stage, version, llm.model): row
        for row in items.itertuples(index=False)
    }
    pending = [LLMRequest(key=key, text=row.text) for key, row in by_key.items() if key not in done]
    skipped = len(by_key) - len(pending)
    if skipped:
        context.log.info(
            f"{stage}: {skipped} of {len(by_key)} items already done (checkpoint); sending {len(pending)}"
        )

    summary: UsageSummary | None = None
    try:
        if pending:
            outcome = llm.run_prompts(
                pending,
                system_prompt=prompt.system_prompt,
                schema=prompt.schema,
                schema_name=prompt.schema_name,
                scope=BudgetScope(run_id=context.run_id, dataset_id=dataset_id),
                stage=stage,
                on_result=lambda r: checkpoint.record(r.key, _result_record(r, context.run_id)),
                log=context.log,
            )
            summary = outcome.summary
    finally:
        # Durable either way; a failure keeps the folder for the retry and for debugging.
        checkpoint.close()

    records = checkpoint.load()
    return _assemble(context, records, by_key, prompt, llm, dataset_id, summary, skipped, checkpoint)


def _assemble(
    context: dg.AssetExecutionContext,
    records: dict[str, dict],
    by_key: dict[str, Any],
    prompt: StagePrompt,
    llm: LLMResource,
    dataset_id: str,
    summary: UsageSummary | None,
    skipped: int,
    checkpoint: ChunkCheckpoint | _InMemoryResults,
) -> StageOutcome:
    rows: list[dict] = []
    dead: list[DeadLetter] = []
    missing = [key for key in by_key if key not in records]
    if missing:
        # run_prompts returned without raising, so every item must have a final result.
        raise RuntimeError(
            f"{prompt.stage}: {len(missing)} items have no result after the LLM call (first: {missing[0]}); "
            f"the checkpoint at {checkpoint.path} is kept for inspection"
        )
    for key, item in by_key.items():
        record = records[key]
        usage = record.get("usage") or {}
        if record["ok"]:
            row = {
                "idempotency_key": key,
                "dataset_id": dataset_id,
                "item_id": item.item_id,
                "stage": prompt.stage,
                "prompt_version": prompt.version,
                "model": llm.model,
                "team": item.team,
                **(record["output"] or {}),
            }
            row.update({f"{c}": usage.get(c, 0) for c in USAGE_COLUMNS})
            rows.append(row)
        else:
            dead.append(
                DeadLetter(
                    dataset_id=dataset_id,
                    partition_key=context.partition_key,
                    item_id=item.item_id,
                    stage=prompt.stage,
                    error_class=record.get("error_class") or "unknown",
                    error_message=record.get("error_message") or "",
                    attempts=int(record.get("attempts") or 0),
                    first_attempt_at=record.get("first_attempt_at") or "",
                    last_attempt_at=record.get("last_attempt_at") or "",
                    model=llm.model,
                    run_id=record.get("run_id") or context.run_id,
                    input_text=item.text,
                    input_json=item.extra_json if hasattr(item, "extra_json") else "{}",
                )
            )

    all_usage = [records[k].get("usage") or {} for k in by_key]
    cost = float(sum(u.get("cost_usd", 0.0) for u in all_usage))
    n_items = len(by_key)
    metadata: dict[str, Any] = {
        # Whole-chunk totals (every attempt that produced these outputs, resumed runs included).
        "cost_usd": dg.MetadataValue.float(cost),
        "input_tokens": dg.MetadataValue.int(int(sum(u.get("input_tokens", 0) for u in all_usage))),
        "cached_input_tokens": dg.MetadataValue.int(
            int(sum(u.get("cached_input_tokens", 0) for u in all_usage))
        ),
        "output_tokens": dg.MetadataValue.int(int(sum(u.get("output_tokens", 0) for u in all_usage))),
        "cache_savings_usd": dg.MetadataValue.float(
            float(sum(u.get("cache_savings_usd", 0.0) for u in all_usage))
        ),
        "items_total": dg.MetadataValue.int(n_items),
        "items_succeeded": dg.MetadataValue.int(len(rows)),
        "items_failed": dg.MetadataValue.int(len(dead)),
        "items_resumed_from_checkpoint": dg.MetadataValue.int(skipped),
        "cost_per_item_usd": dg.MetadataValue.float(cost / n_items if n_items else 0.0),
        "model": dg.MetadataValue.text(llm.model),
        "prompt_version": dg.MetadataValue.text(prompt.version),
    }
    if summary is not None:
        # This run's transport figures: requests, retries, 429s, latency, wall time.
        run_meta = summary.to_metadata()
        for name in ("requests", "retries", "rate_limited", "duration_s", "latency_p50_s", "latency_p95_s"):
            if name in run_meta:
                metadata[name] = run_meta[name]
    else:
        metadata.update(
            {
                "requests": dg.MetadataValue.int(0),
                "retries": dg.MetadataValue.int(0),
                "rate_limited": dg.MetadataValue.int(0),
                "duration_s": dg.MetadataValue.float(0.0),
            }
        )
    columns = [*KEY_COLUMNS, *prompt.schema.get("properties", {}), *USAGE_COLUMNS]
    return StageOutcome(
        rows=pd.DataFrame(rows, columns=columns),
        dead_letters=dead,
        metadata=metadata,
        checkpoint_dir=str(checkpoint.path),
    )
