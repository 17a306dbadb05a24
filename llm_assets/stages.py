"""One way to run an LLM stage over a chunk: checkpointed, resumable, with dead letters and cost metadata.

Both `classified` and `enriched` call `run_stage`. It
1. loads the chunk's checkpoint and skips every item already finished (success or permanent failure) on the
   same user message (a result records its message's hash: an item whose message changed, e.g. a template
   reading an earlier stage's re-made answers, is sent again; in batch mode a batch submitted before the change
   is still taken as the answer);
2. sends the rest through the LLM resource, recording each result durably the moment it arrives;
3. on a chunk-level failure (retryable or job-fatal) lets the exception through with the checkpoint kept,
   so the retry (Dagster's RetryPolicy, then the backfill sensor) pays only for what was not done;
4. on success returns one output row per succeeded item and one dead letter per failed item.
The checkpoint outlives the step: it is removed only when the dataset completes (`clean_up_chunks` in
completion.py, for chunks whose every stage is materialized), so a kill anywhere between a stage's last request
and the chunk's last materialization re-pays nothing (a re-run reads every result from the checkpoint).

`run_batch_stage` is the same stage through the provider's Batch API (half price, results within 24 h). A run
never waits for a batch: it collects the batches that ended (results into the same checkpoint, exactly as
online), submits the items no batch covers (first round, or the follow-up round of retryable/expired lines),
and returns `BatchWait` while anything is at the provider, so the asset ends the run without materializing;
`sensors/batches.py` requests the next run when the batches end. The batch journal (`batches.json`, in the
stage's checkpoint folder) records every submission before the next provider call, so a crash at any point
resumes without sending an item twice. docs/batch_mode.md has the whole life cycle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from llm_assets.materializations import seconds, usd, usd_per_item
from llm_assets.prompts import StagePrompt
from resources.checkpoints import CheckpointCorrupted, ChunkCheckpoint
from resources.checkpoints_pg import PostgresChunkCheckpoint, open_checkpoint
from resources.dead_letters import DeadLetter
from resources.llm import (
    BatchHandle,
    BatchJournal,
    BudgetScope,
    ItemResult,
    ItemUsage,
    LLMRequest,
    LLMResource,
    UsageSummary,
)
from resources.llm.batch_journal import SUBMITTING, SharedBatchJournal
from resources.shared_docs import SharedDocuments
from resources.state_url import state_url

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


BATCH_JOURNAL_FILE = "batches.json"
"""The batch journal's file name inside a stage's checkpoint folder (<home>/checkpoints/<ds>/<chunk>/<stage>/)."""
CANCEL_MARKER_FILE = "cancelled.json"
"""Written by `python -m scripts.cancel_batch` beside the journal: the stage submits nothing more, and lines the
cancel stopped end as `canceled` dead letters when the partial results are collected."""
BATCH_CANCELED = "canceled"


def checkpoint_root(home: Path) -> Path:
    return home / "checkpoints"


def _as_dict(record: Any) -> dict:
    if dataclasses.is_dataclass(record):
        return dataclasses.asdict(record)
    return record.model_dump(mode="json")


def _iso(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _answers_text(record: dict, text: str) -> bool:
    """Whether a checkpointed result was an answer to `text`, the item's user message now. Not when the message
    changed under the same prompt version: a template that reads an earlier stage's answers (`{sentiment.reason}`)
    after that stage was re-made with other answers. Records written before text hashes count as answers."""
    sha = record.get("text_sha256")
    return sha is None or sha == _text_sha(text)


def _result_record(result: ItemResult, run_id: str, text: str) -> dict:
    usage = _as_dict(result.usage)
    return {
        "text_sha256": _text_sha(text),
        "ok": result.ok,
        "output": result.output,
        "error_class": result.error_class,
        "error_message": result.error_message,
        "attempts": result.attempts,
        "first_attempt_at": _iso(result.first_attempt_at),
        "last_attempt_at": _iso(result.last_attempt_at),
        "usage": {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in usage.items()},
        "run_id": run_id,
        "last_reply": result.last_reply,  # a failed item's last reply, for its dead letter
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
    """What the stage's materialization records (llm_assets/materializations.py: USD, seconds, counts)."""
    cost_usd: float = 0.0
    """USD of every attempt on the chunk's items at this stage, unrounded (the metadata's `cost_usd` is rounded)."""


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
    normalize: dict[str, str] | None = None,
) -> StageOutcome:
    """Run `prompt` on every row of `items` (columns item_id, text) not already checkpointed; `normalize`: the
    stage's reply fixes (resources/llm/normalize.py)."""
    partition_key = context.partition_key
    stage = prompt.stage
    checkpoint = (
        open_checkpoint(
            checkpoint_root(home), dataset_id, partition_key, stage, compact_every=checkpoint_every
        )
        if checkpointing
        else _InMemoryResults()
    )
    done = _load_checkpoint(checkpoint, stage, partition_key)
    by_key = _items_by_key(items, dataset_id, prompt, llm)
    pending = [
        LLMRequest(key=key, text=row.text, team=_team(row))
        for key, row in by_key.items()
        if key not in done or not _answers_text(done[key], row.text)
    ]
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
                scope=BudgetScope(run_id=context.run_id, dataset_id=dataset_id, partition_key=partition_key),
                stage=stage,
                on_result=lambda r: checkpoint.record(
                    r.key, _result_record(r, context.run_id, by_key[r.key].text)
                ),
                log=context.log,
                normalize=normalize,
            )
            summary = outcome.summary
    finally:
        # Durable either way; a failure keeps the folder for the retry and for debugging.
        checkpoint.close()

    records = checkpoint.load()
    return _assemble(context, records, by_key, prompt, llm, dataset_id, summary, skipped, checkpoint)


def _team(row: Any) -> str:
    team = getattr(row, "team", "")
    return team if isinstance(team, str) else ""


def _load_checkpoint(
    checkpoint: ChunkCheckpoint | PostgresChunkCheckpoint | _InMemoryResults, stage: str, partition_key: str
) -> dict[str, dict]:
    try:
        return checkpoint.load()
    except CheckpointCorrupted as exc:
        # Retrying cannot repair a damaged file: halt the chunk and say what to do.
        raise dg.Failure(
            description=f"{stage} checkpoint of {partition_key} is damaged: {exc}",
            metadata={"checkpoint_dir": str(checkpoint.path)},
            allow_retries=False,
        ) from exc


def _items_by_key(
    items: pd.DataFrame, dataset_id: str, prompt: StagePrompt, llm: LLMResource
) -> dict[str, Any]:
    return {
        idempotency_key(dataset_id, row.item_id, prompt.stage, prompt.version, llm.model): row
        for row in items.itertuples(index=False)
    }


def _assemble(
    context: dg.AssetExecutionContext,
    records: dict[str, dict],
    by_key: dict[str, Any],
    prompt: StagePrompt,
    llm: LLMResource,
    dataset_id: str,
    summary: UsageSummary | None,
    skipped: int,
    checkpoint: ChunkCheckpoint | PostgresChunkCheckpoint | _InMemoryResults,
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
                    last_reply=record.get("last_reply"),
                )
            )

    all_usage = [records[k].get("usage") or {} for k in by_key]
    cost = float(sum(u.get("cost_usd", 0.0) for u in all_usage))
    n_items = len(by_key)
    metadata: dict[str, Any] = {
        # Whole-chunk totals (every attempt that produced these outputs, resumed runs included).
        "cost_usd": usd(cost),
        "input_tokens": dg.MetadataValue.int(int(sum(u.get("input_tokens", 0) for u in all_usage))),
        "cached_input_tokens": dg.MetadataValue.int(
            int(sum(u.get("cached_input_tokens", 0) for u in all_usage))
        ),
        "output_tokens": dg.MetadataValue.int(int(sum(u.get("output_tokens", 0) for u in all_usage))),
        "cache_savings_usd": usd(sum(u.get("cache_savings_usd", 0.0) for u in all_usage)),
        "items_total": dg.MetadataValue.int(n_items),
        "items_succeeded": dg.MetadataValue.int(len(rows)),
        "items_failed": dg.MetadataValue.int(len(dead)),
        "items_resumed_from_checkpoint": dg.MetadataValue.int(skipped),
        "cost_per_item_usd": usd_per_item(cost / n_items if n_items else 0.0),
        "model": dg.MetadataValue.text(llm.model),
        "prompt_version": dg.MetadataValue.text(prompt.version),
    }
    # This run's transport figures: requests, retries, 429s, latency, wall time (0 when nothing was sent).
    ran = summary if summary is not None else UsageSummary(provider=llm.provider, model=llm.model)
    metadata.update(
        {
            "requests": dg.MetadataValue.int(ran.requests),
            "retries": dg.MetadataValue.int(ran.retries),
            "rate_limited": dg.MetadataValue.int(ran.rate_limited),
            "duration_s": seconds(ran.duration_s),
        }
    )
    if summary is not None:
        metadata["latency_p50_s"] = seconds(summary.latency_p50_s)
        metadata["latency_p95_s"] = seconds(summary.latency_p95_s)
    columns = [*KEY_COLUMNS, *prompt.schema.get("properties", {}), *USAGE_COLUMNS]
    return StageOutcome(
        rows=pd.DataFrame(rows, columns=columns),
        dead_letters=dead,
        metadata=metadata,
        cost_usd=cost,
    )


# ---------------------------------------------------------------------------------------------- batch mode


@dataclass
class BatchWait:
    """A batch-mode stage whose items are at the provider: the run ends here and the partition is NOT
    materialized (downstream stages do not run); `batch_poll_sensor` requests the run that collects it."""

    stage: str
    status: str
    """`submitted` (this run sent a batch) or `in_progress` (batches sent earlier have not ended yet)."""
    pending: list[BatchHandle]
    items_total: int
    items_done: int
    round: int
    collected_now: int
    """Items whose results this run collected from ended batches."""

    def metadata(self) -> dict[str, Any]:
        """What the UI shows on the stage's partition (an AssetObservation) while it waits."""
        return {
            "mode": dg.MetadataValue.text("batch"),
            "batch_status": dg.MetadataValue.text(self.status),
            "batch_ids": dg.MetadataValue.text(", ".join(h.batch_id or "(creating)" for h in self.pending)),
            "batches_pending": dg.MetadataValue.int(len(self.pending)),
            "batch_round": dg.MetadataValue.int(self.round),
            "items_total": dg.MetadataValue.int(self.items_total),
            "items_done": dg.MetadataValue.int(self.items_done),
            "items_at_provider": dg.MetadataValue.int(sum(len(h.keys) for h in self.pending)),
            "items_collected_this_run": dg.MetadataValue.int(self.collected_now),
        }

    def message(self) -> str:
        ids = ", ".join(h.batch_id or h.submission_id for h in self.pending)
        return (
            f"{self.stage}: {self.status}, round {self.round}: {sum(len(h.keys) for h in self.pending)} items in "
            f"{len(self.pending)} provider batches ({ids}); {self.items_done} of {self.items_total} done. The run "
            "ends without materializing; batch_poll_sensor requests the collecting run when the batches end."
        )


def batch_journal_path(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / BATCH_JOURNAL_FILE


def cancel_marker_path(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / CANCEL_MARKER_FILE


# A batch stage's journal and cancel mark: files beside the file checkpoint, or, with the shared backend
# (CHUNKWISE_STATE_URL), rows of its database that the batch sensor and a re-run on any machine read.
CANCEL_KIND = "batch_cancel"


def _stage_folder(home: Path, dataset_id: str, partition_key: str, stage: str) -> Path:
    return ChunkCheckpoint(checkpoint_root(home), dataset_id, partition_key, stage).path


def stage_batch_journal(home: Path, dataset_id: str, partition_key: str, stage: str) -> BatchJournal:
    url = state_url()
    if url is not None:
        return SharedBatchJournal(url, dataset_id, partition_key, stage)
    return BatchJournal(batch_journal_path(_stage_folder(home, dataset_id, partition_key, stage)))


def stage_cancelled(home: Path, dataset_id: str, partition_key: str, stage: str) -> bool:
    url = state_url()
    if url is not None:
        return SharedDocuments(url, CANCEL_KIND).get(f"{dataset_id}/{partition_key}/{stage}") is not None
    return cancel_marker_path(_stage_folder(home, dataset_id, partition_key, stage)).exists()


def mark_stage_cancelled(home: Path, dataset_id: str, partition_key: str, stage: str, mark: dict) -> None:
    url = state_url()
    if url is not None:
        SharedDocuments(url, CANCEL_KIND).put(f"{dataset_id}/{partition_key}/{stage}", mark)
        return
    path = cancel_marker_path(_stage_folder(home, dataset_id, partition_key, stage))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mark))


def run_batch_stage(
    context: dg.AssetExecutionContext,
    *,
    llm: LLMResource,
    prompt: StagePrompt,
    items: pd.DataFrame,
    dataset_id: str,
    home: Path,
    checkpoint_every: int,
) -> StageOutcome | BatchWait:
    """`run_stage` through the provider's Batch API: collect ended batches, submit what no batch covers, and
    return BatchWait while anything is at the provider, else the chunk's outcome (same rows and dead letters as
    online, costs at batch prices; metadata adds `mode`, `batches`, `batch_rounds`)."""
    partition_key = context.partition_key
    stage = prompt.stage
    checkpoint = open_checkpoint(
        checkpoint_root(home), dataset_id, partition_key, stage, compact_every=checkpoint_every
    )
    by_key = _items_by_key(items, dataset_id, prompt, llm)
    journal = stage_batch_journal(home, dataset_id, partition_key, stage)
    cancelled = stage_cancelled(home, dataset_id, partition_key, stage)

    def record(result: ItemResult) -> None:
        row = by_key.get(result.key)  # every journal key is an item of this chunk; "" would only re-send it
        checkpoint.record(
            result.key, _result_record(result, context.run_id, row.text if row is not None else "")
        )

    collected_now = 0
    summaries: list[UsageSummary] = []
    try:
        _load_checkpoint(
            checkpoint, stage, partition_key
        )  # a damaged checkpoint halts before any provider call
        # 1. Collect every batch that ended (completed, expired, cancelled): results go to the checkpoint.
        for handle in journal.pending:
            if handle.status == SUBMITTING:
                continue  # cut off mid-submission: resumed by submit_batch below
            if not llm.poll_batch(handle).ended:
                continue
            collection = llm.collect_batch(handle, schema=prompt.schema, on_result=record, log=context.log)
            collected_now += len(collection.results)
            if collection.summary is not None:
                summaries.append(collection.summary)
            if cancelled:
                # A person cancelled: lines the cancel stopped are not resubmitted; they fail as `canceled`.
                for key in collection.to_resubmit:
                    record(_canceled_result(key, llm, stage))
        done = checkpoint.load()

        # 2. Submit the items no live batch covers (first round, a follow-up round, or a cut-off submission).
        at_provider = {k for h in journal.pending if h.status != SUBMITTING for k in h.keys}
        uncovered = [
            key
            for key, row in by_key.items()
            if (key not in done or not _answers_text(done[key], row.text)) and key not in at_provider
        ]
        if uncovered and cancelled:
            for key in uncovered:
                record(_canceled_result(key, llm, stage))
            uncovered = []
        submitted = False
        if uncovered:
            resuming = [h.round for h in journal.pending if h.status == SUBMITTING]
            round_ = min(resuming) if resuming else journal.last_round + 1
            llm.submit_batch(
                [LLMRequest(key=key, text=by_key[key].text, team=_team(by_key[key])) for key in uncovered],
                system_prompt=prompt.system_prompt,
                schema=prompt.schema,
                schema_name=prompt.schema_name,
                scope=BudgetScope(run_id=context.run_id, dataset_id=dataset_id, partition_key=partition_key),
                stage=stage,
                journal=journal,
                round=round_,
                partition=partition_key,
                log=context.log,
            )
            submitted = True
            context.log.info(f"{stage}: submitted {len(uncovered)} items as batch round {round_}")
    finally:
        checkpoint.close()

    records = checkpoint.load()
    if journal.pending:
        return BatchWait(
            stage=stage,
            status="submitted" if submitted else "in_progress",
            pending=journal.pending,
            items_total=len(by_key),
            items_done=sum(1 for key in by_key if key in records),
            round=journal.last_round,
            collected_now=collected_now,
        )
    summary = _merge_summaries(summaries, llm)
    outcome = _assemble(context, records, by_key, prompt, llm, dataset_id, summary, 0, checkpoint)
    handles = journal.handles
    lines_sent = sum(len(h.keys) for h in handles)
    outcome.metadata.update(
        {
            "mode": dg.MetadataValue.text("batch"),
            "batches": dg.MetadataValue.int(len(handles)),
            "batch_rounds": dg.MetadataValue.int(journal.last_round),
            "batch_ids": dg.MetadataValue.text(", ".join(h.batch_id or "" for h in handles)),
            # Lines sent over every round (a resubmitted item counts once per round) and the rounds' extras.
            "requests": dg.MetadataValue.int(lines_sent),
            "retries": dg.MetadataValue.int(max(0, lines_sent - len({k for h in handles for k in h.keys}))),
            "batch_canceled": dg.MetadataValue.bool(cancelled),
        }
    )
    return outcome


def _canceled_result(key: str, llm: LLMResource, stage: str) -> ItemResult:
    now = datetime.now(UTC)
    return ItemResult(
        key=key,
        ok=False,
        output=None,
        error_class=BATCH_CANCELED,
        error_message="its provider batch was cancelled by a person (python -m scripts.cancel_batch) before the "
        "line ran; re-materialize the partition to send it again",
        attempts=0,
        first_attempt_at=now,
        last_attempt_at=now,
        usage=ItemUsage(key=key, provider=llm.provider, model=llm.model, stage=stage, mode="batch"),
    )


def _merge_summaries(summaries: list[UsageSummary], llm: LLMResource) -> UsageSummary:
    total = UsageSummary(provider=llm.provider, model=llm.model)
    for s in summaries:
        total.duration_s += s.duration_s
        total.rate_limited += s.rate_limited
    return total
