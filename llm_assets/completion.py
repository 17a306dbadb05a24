"""`dataset_complete`: the once-per-dataset materialization downstream consumers depend on, with the report.

Materialized by the `dataset_completion` job (requested exactly once per dataset by the completion sensor,
sensors/completion.py) when every chunk is terminal (llm_assets/chunk_status.py). It
1. builds the completion report: report.py's `build_completion_report` (items, cost, tokens, retries, dead
   letters, cost by stage/model/team, cached savings) plus what the on-call person needs on top: chunk states,
   the success threshold and whether it was met, cost by day (from the cost ledger), the 10% most expensive
   items with their share of tokens and dollars, the quality-gate summary, runs launched;
2. writes it to `<home>/reports/<dataset_id>/completion_report.json` and `.md` (atomically) and attaches the
   Markdown as metadata, with a `summary` JSON the sensor POSTs to the completion webhook;
3. cleans up: removes the checkpoint folders of succeeded chunks and leftover `*.tmp` files of their outputs;
   failed chunks keep theirs for debugging.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from io_managers.atomic_files import write_bytes_atomic
from llm_assets.chunk_status import ChunkState, ChunkStatus, chunk_states
from llm_assets.cost_ledger import FAILED_ITEMS, cost_ledger, dataset_partitions, rollup
from llm_assets.datasets import RegisteredDataset, load_dataset
from llm_assets.report import CompletionReport, build_completion_report
from llm_assets.settings import PipelineSettings
from llm_assets.stages import checkpoint_root
from resources.checkpoints import ChunkCheckpoint
from resources.dead_letters import DeadLetterStore

TOP_ITEMS_LISTED = 50


@dataclass
class TopItems:
    """The most expensive 10% of items (at least one) by USD, summed over stages."""

    count: int
    token_share: float
    """Their tokens (input + output) / all items' tokens, 0..1."""
    cost_share: float
    items: list[dict[str, Any]] = field(default_factory=list)
    """Up to TOP_ITEMS_LISTED: item_id, team, cost_usd, tokens."""


@dataclass
class DatasetCompletion:
    """The completion report: `report` (report.py's) plus the fields below. USD, tokens, seconds."""

    report: CompletionReport
    success_rate: float
    success_threshold: float
    threshold_met: bool
    chunk_states: dict[str, int]
    failed_chunks: dict[str, str]
    """partition -> why (failed_quality_gate, gave_up, canceled)."""
    runs_launched: int
    cost_by_day: dict[str, float]
    ledger_cost_usd: float
    top_items: TopItems
    report_uri: str = ""

    def to_json(self) -> dict[str, Any]:
        body = {k: v for k, v in asdict(self).items() if k != "report"}
        return {**self.report.to_json(), **body}

    def summary(self) -> dict[str, Any]:
        """What the completion webhook receives (Slack-compatible `text` plus fields)."""
        r = self.report
        verdict = "met" if self.threshold_met else "NOT met"
        text = (
            f"Chunkwise finished dataset `{r.dataset_id}`: {r.headline()}. Success threshold "
            f"{self.success_threshold:.0%} {verdict} ({self.success_rate:.1%}). Report: {self.report_uri}"
        )
        return {
            "text": text,
            "kind": "dataset_complete",
            "dataset_id": r.dataset_id,
            "total_items": r.total_items,
            "succeeded": r.succeeded,
            "failed": r.failed,
            "total_cost_usd": r.total_cost_usd,
            "cost_per_item_usd": r.cost_per_item_usd,
            "success_rate": self.success_rate,
            "threshold_met": self.threshold_met,
            "failed_items_uri": r.failed_items_uri,
            "report_uri": self.report_uri,
        }


def top_items(ledger: pd.DataFrame) -> TopItems:
    items = ledger[ledger["item_id"] != ""]
    if items.empty:
        return TopItems(0, 0.0, 0.0)
    grouped = items.assign(tokens=items["input_tokens"] + items["output_tokens"]).groupby("item_id")
    per_item = grouped.agg(cost_usd=("cost_usd", "sum"), tokens=("tokens", "sum"), team=("team", "first"))
    n = max(1, len(per_item) // 10)
    top = per_item.sort_values(["cost_usd", "tokens"], ascending=False).head(n)
    total_tokens = float(per_item["tokens"].sum())
    total_cost = float(per_item["cost_usd"].sum())
    return TopItems(
        count=n,
        token_share=float(top["tokens"].sum()) / total_tokens if total_tokens else 0.0,
        cost_share=float(top["cost_usd"].sum()) / total_cost if total_cost else 0.0,
        items=[
            {"item_id": str(i), "team": str(r.team), "cost_usd": float(r.cost_usd), "tokens": int(r.tokens)}
            for i, r in top.head(TOP_ITEMS_LISTED).iterrows()
        ],
    )


def wall_clock_s(states: dict[str, ChunkStatus]) -> float:
    """From the first chunk run's start to the last one's end, seconds."""
    starts = [s.start_time for s in states.values() if s.start_time]
    ends = [s.end_time for s in states.values() if s.end_time]
    return max(0.0, max(ends) - min(starts)) if starts and ends else 0.0


def build_dataset_completion(
    instance: dg.DagsterInstance,
    dataset: RegisteredDataset,
    states: dict[str, ChunkStatus],
    home: Path,
    ledger: pd.DataFrame,
    success_threshold: float,
    s3: Any = None,
) -> DatasetCompletion:
    """The report of a dataset whose chunks (`states`, from chunk_states) are all terminal; dg.Failure (no
    retry) if some are not."""
    waiting = {k: s.state.value for k, s in states.items() if not s.state.terminal}
    if waiting:
        first = next(iter(waiting.items()))
        raise dg.Failure(
            description=(
                f"dataset {dataset.dataset_id} is not complete: {len(waiting)} of {len(states)} chunks are not "
                f"terminal (first: {first[0]} is {first[1]}). The completion sensor requests this once they are; "
                "materialize it by hand only after every chunk succeeded or failed for good."
            ),
            allow_retries=False,
        )
    store = DeadLetterStore(str(home / "dead_letters"))
    report = build_completion_report(instance, dataset, store, wall_clock_s(states), s3)
    counts: dict[str, int] = {}
    for status in states.values():
        counts[status.state.value] = counts.get(status.state.value, 0) + 1
    rate = report.succeeded / report.total_items if report.total_items else 1.0
    return DatasetCompletion(
        report=report,
        success_rate=rate,
        success_threshold=success_threshold,
        threshold_met=rate >= success_threshold,
        chunk_states=counts,
        failed_chunks={k: s.state.value for k, s in states.items() if s.state.failed},
        runs_launched=sum(s.runs for s in states.values()),
        cost_by_day=rollup(ledger, "day"),
        ledger_cost_usd=float(ledger["cost_usd"].sum()) if len(ledger) else 0.0,
        top_items=top_items(ledger),
    )


def _money(value: float) -> str:
    return f"${value:,.4f}"


def _table(title: str, values: dict[str, float]) -> list[str]:
    lines = [f"| {title} | USD |", "| --- | ---: |"]
    lines += [f"| {k} | {_money(v)} |" for k, v in sorted(values.items(), key=lambda kv: -kv[1])]
    return lines


def render_markdown(done: DatasetCompletion) -> str:
    """The report as Markdown, for the materialization's metadata and the `.md` file beside the JSON."""
    r = done.report
    top = done.top_items
    lines = [
        f"# Dataset `{r.dataset_id}`: completion report",
        "",
        f"**{r.succeeded:,} of {r.total_items:,} items succeeded, {r.failed:,} failed** "
        f"({r.dead_lettered:,} dead-lettered, {r.not_processed:,} not processed). "
        f"Success rate {done.success_rate:.1%}, threshold {done.success_threshold:.0%}: "
        f"**{'met' if done.threshold_met else 'NOT met'}**.",
        "",
        f"- Total cost {_money(r.total_cost_usd)} ({_money(r.cost_per_item_usd)} per item); "
        f"cached-token savings {_money(r.cache_savings_usd)}",
        f"- Tokens: {r.input_tokens:,} input ({r.cached_input_tokens:,} cached), {r.output_tokens:,} output",
        f"- Chunks: {r.partitions_total} ({', '.join(f'{k} {v}' for k, v in sorted(done.chunk_states.items()))}); "
        f"runs launched {done.runs_launched}; request retries {r.retried}",
        f"- Wall-clock time {r.wall_clock_s:,.1f} s",
        f"- Failed items: `{r.failed_items_uri}`"
        + (
            f" ({', '.join(f'{k}: {v}' for k, v in r.dead_letters_by_class.items())})"
            if r.dead_letters_by_class
            else ""
        ),
        "",
        *_table("team", r.cost_by_team),
        "",
        *_table("model", r.cost_by_model),
        "",
        *_table("stage", r.cost_by_stage),
        "",
        *_table("mode", r.cost_by_mode),
        "",
        *_table("day (UTC)", done.cost_by_day),
        "",
        f"## The {top.count} most expensive items (10%): {top.token_share:.1%} of tokens, {top.cost_share:.1%} of cost",
        "",
        "| item | team | tokens | USD |",
        "| --- | --- | ---: | ---: |",
        *[
            f"| {i['item_id']} | {i['team']} | {i['tokens']:,} | {_money(i['cost_usd'])} |"
            for i in top.items[:10]
        ],
    ]
    if done.failed_chunks:
        lines += [
            "",
            "## Failed chunks",
            "",
            *[f"- `{k}`: {v}" for k, v in sorted(done.failed_chunks.items())],
        ]
    if FAILED_ITEMS in r.cost_by_team or done.ledger_cost_usd:
        lines += ["", f"Cost ledger total {_money(done.ledger_cost_usd)} (includes spend on failed items)."]
    return "\n".join(lines) + "\n"


def write_completion(done: DatasetCompletion, home: Path) -> Path:
    """Write `<home>/reports/<id>/completion_report.json` and `.md` atomically; returns the JSON path."""
    folder = home / "reports" / done.report.dataset_id
    path = folder / "completion_report.json"
    done.report_uri = str(path)
    write_bytes_atomic(path, json.dumps(done.to_json(), indent=2, sort_keys=True, default=str).encode())
    write_bytes_atomic(folder / "completion_report.md", render_markdown(done).encode())
    return path


def clean_up_chunks(home: Path, dataset_id: str, states: dict[str, ChunkStatus]) -> tuple[int, int]:
    """Remove the checkpoints and output temp files of succeeded chunks; keep failed ones'.

    Returns (checkpoint folders removed, checkpoint folders kept)."""
    root = checkpoint_root(home)
    removed = kept = 0
    succeeded = {key for key, status in states.items() if status.state == ChunkState.SUCCEEDED}
    for tmp in (home / "outputs").glob("**/.*.parquet.*.tmp"):  # one walk of the tree, not one per chunk
        if tmp.name[1:].split(".parquet.", 1)[0] in succeeded:
            tmp.unlink(missing_ok=True)
    for key, status in states.items():
        folder = root / dataset_id / key
        stages = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        if status.state != ChunkState.SUCCEEDED:
            kept += len(stages)
            continue
        for stage in stages:
            ChunkCheckpoint(root, dataset_id, key, stage).remove()
            removed += 1
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed, kept


class CompletionSettings(dg.ConfigurableResource):
    """Dataset-level success: the share of items that must succeed for `threshold_met` (0..1)."""

    min_success_rate: float = 0.95


@dg.asset(
    partitions_def=dataset_partitions,
    group_name="chunkwise",
    kinds={"json"},
    owners=["team:data-platform"],
    description=(
        "Materialized once per dataset (partition = dataset id) when every chunk succeeded or failed for good: "
        "the completion report (JSON + Markdown in metadata), whether the success threshold was met. Depend "
        "on this asset to run when a nightly dataset is done."
    ),
)
def dataset_complete(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    completion: CompletionSettings,
    s3: dg.ResourceParam[Any],
    cost_ledger: pd.DataFrame,
) -> dg.MaterializeResult:
    home = settings.home_path()
    dataset = load_dataset(context.partition_key, home)
    states = chunk_states(context.instance, dataset.partition_keys)
    done = build_dataset_completion(
        context.instance, dataset, states, home, cost_ledger, completion.min_success_rate, s3
    )
    path = write_completion(done, home)
    removed, kept = clean_up_chunks(home, dataset.dataset_id, states)
    r = done.report
    context.log.info(f"{r.dataset_id} complete: {r.headline()}; report {path}")
    return dg.MaterializeResult(
        metadata={
            "report_uri": dg.MetadataValue.path(str(path)),
            "report": dg.MetadataValue.md(render_markdown(done)),
            "summary": dg.MetadataValue.json(done.summary()),
            "total_items": dg.MetadataValue.int(r.total_items),
            "succeeded": dg.MetadataValue.int(r.succeeded),
            "failed": dg.MetadataValue.int(r.failed),
            "total_cost_usd": dg.MetadataValue.float(r.total_cost_usd),
            "cost_per_item_usd": dg.MetadataValue.float(r.cost_per_item_usd),
            "success_rate": dg.MetadataValue.float(done.success_rate),
            "threshold_met": dg.MetadataValue.bool(done.threshold_met),
            "wall_clock_s": dg.MetadataValue.float(r.wall_clock_s),
            "checkpoints_removed": dg.MetadataValue.int(removed),
            "checkpoints_kept": dg.MetadataValue.int(kept),
        }
    )


ledger_assets = [cost_ledger, dataset_complete]
"""Add to definitions.py's assets, with the resource `completion=CompletionSettings()`."""
