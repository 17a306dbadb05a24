"""`dataset_complete`: the once-per-dataset materialization downstream consumers depend on, with the report.

Materialized by the `dataset_completion` job (requested exactly once per dataset by the completion sensor,
sensors/completion.py) when every chunk is terminal (llm_assets/chunk_status.py). It
1. builds the completion report: report.py's `build_completion_report` (every input row in one bucket with a
   reason: succeeded, dead-lettered, quarantined, not processed; every dollar from the spend ledger: total,
   useful, re-paid, wasted, quality checks, unsettled; tokens, retries, cost by stage/model/mode/team, cached
   savings) plus what the on-call person needs on top: chunk states, the success threshold and whether it was
   met, cost by day (from the cost ledger), the 10% most expensive items with their share of tokens and
   dollars, the quality gates (per gate: chunks passed / warned / failed, from the instance's check evaluations)
   and the sampled accuracy, the stages priced at $0 by `allow_unpriced` (no price row), runs launched;
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
from io_managers.parquet_files import join_uri, write_object
from llm_assets.chunk_status import ChunkState, ChunkStatus, chunk_states
from llm_assets.cost_ledger import rollup
from llm_assets.datasets import RegisteredDataset, load_dataset
from llm_assets.judge import JUDGE_STAGE
from llm_assets.layout import PipelineLayout
from llm_assets.materializations import seconds, usd, usd_per_item
from llm_assets.report import NOT_PROCESSED_WHY, CompletionReport, build_completion_report
from llm_assets.settings import PipelineSettings
from llm_assets.stages import CANCEL_KIND, checkpoint_root
from resources.checkpoints import ChunkCheckpoint
from resources.checkpoints_pg import remove_checkpoints
from resources.dead_letters import DeadLetterStore
from resources.llm.batch_journal import SharedBatchJournal
from resources.llm.prices import ModelPrice
from resources.shared_docs import SharedDocuments
from resources.state_url import state_url

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
    """The `cost_ledger` asset's total: equals `total_cost_usd` (both are the spend ledger's billed rows)."""
    top_items: TopItems
    report_uri: str = ""
    final_stage: str = "enriched"
    """The pipeline's last stage: a succeeded item is in its output."""

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
            "buckets": r.buckets,
            "total_cost_usd": r.total_cost_usd,
            "useful_cost_usd": r.useful_cost_usd,
            "repaid_usd": r.repaid_usd,
            "wasted_usd": r.wasted_usd,
            "quality_checks_usd": r.quality_checks_usd,
            "unsettled_max_usd": r.unsettled_max_usd,
            "cost_per_item_usd": r.cost_per_item_usd,
            "success_rate": self.success_rate,
            "threshold_met": self.threshold_met,
            "failed_items_uri": r.failed_items_uri,
            "priced_at_zero": [asdict(p) for p in r.priced_at_zero],
            "report_uri": self.report_uri,
        }


def top_items(ledger: pd.DataFrame) -> TopItems:
    """Over the cost ledger's item spend (every billed attempt; the judge's spend is not an item's)."""
    items = ledger[(ledger["item_id"] != "") & (ledger["stage"] != JUDGE_STAGE)]
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
    *,
    ledger_rows: pd.DataFrame,
    layout: PipelineLayout,
    prices: dict[str, ModelPrice] | None = None,
    dead_letters_uri: str | None = None,
) -> DatasetCompletion:
    """The report of a dataset whose chunks (`states`, from chunk_states) are all terminal; dg.Failure (no
    retry) if some are not. `ledger`: the cost_ledger asset's rows; `ledger_rows`: the dataset's spend-ledger
    events (`SpendLedger.rows(dataset_id)`, for the report's money and the unsettled attempts); `prices`: stage
    -> the price row its LLM resource uses (which stages were priced at zero by `allow_unpriced`)."""
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
    store = DeadLetterStore(dead_letters_uri or str(home / "dead_letters"), s3=s3)
    report = build_completion_report(
        instance,
        dataset,
        store,
        wall_clock_s(states),
        s3,
        ledger_rows=ledger_rows,
        states=states,
        layout=layout,
        prices=prices,
    )
    from llm_assets.estimate import load_estimate  # it imports the pipeline assets, which import this module

    estimate = load_estimate(home, layout.name, dataset.dataset_id)
    if estimate is not None:
        report.estimated_cost_usd = estimate.total_cost_usd_in_mode
        if estimate.total_cost_usd_high > 0:  # estimates written before the interval have none
            report.estimated_cost_usd_low = estimate.total_cost_usd_low
            report.estimated_cost_usd_high = estimate.total_cost_usd_high
        report.estimated_wall_clock_s = estimate.wall_clock_s
        report.estimate_sample_cost_usd = estimate.sample_cost_usd
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
        final_stage=layout.stages[-1],
    )


def _money(value: float) -> str:
    return f"${value:,.4f}"


def _estimate_lines(r: CompletionReport) -> list[str]:
    """Estimate vs actual, when the dataset was estimated (llm_assets/estimate.py)."""
    if r.estimated_cost_usd is None:
        return []
    cost_ratio = r.total_cost_usd / r.estimated_cost_usd if r.estimated_cost_usd else float("nan")
    line = (
        f"- Estimate vs actual: cost {_money(r.estimated_cost_usd)} estimated"
        + (
            f" (95%: {_money(r.estimated_cost_usd_low)}-{_money(r.estimated_cost_usd_high)})"
            if r.estimated_cost_usd_low is not None and r.estimated_cost_usd_high is not None
            else ""
        )
        + f", {_money(r.total_cost_usd)} billed (actual/estimate {cost_ratio:.2f})"
    )
    if r.estimated_wall_clock_s:
        line += (
            f"; wall clock {r.estimated_wall_clock_s:,.1f} s estimated, {r.wall_clock_s:,.1f} s actual "
            f"({r.wall_clock_s / r.estimated_wall_clock_s:.2f})"
        )
    return [
        line + f"; the estimate's sample cost {_money(r.estimate_sample_cost_usd or 0.0)} (not in the total)"
    ]


def _table(title: str, values: dict[str, float]) -> list[str]:
    lines = [f"| {title} | USD |", "| --- | ---: |"]
    lines += [f"| {k} | {_money(v)} |" for k, v in sorted(values.items(), key=lambda kv: -kv[1])]
    return lines


def _reasons(counts: dict[str, int], meaning: dict[str, str] | None = None) -> str:
    parts = []
    for key, n in counts.items():
        why = (meaning or {}).get(key)
        parts.append(f"{key} {n:,}" + (f" ({why})" if why else ""))
    return ", ".join(parts)


def rows_table(r: CompletionReport, final_stage: str = "enriched") -> list[str]:
    """Where every input row went: one line per bucket, with why; the lines add up to the row count."""
    return [
        "| bucket | rows | why |",
        "| --- | ---: | --- |",
        f"| succeeded | {r.succeeded:,} | in the final `{final_stage}` output |",
        f"| dead-lettered | {r.dead_lettered:,} | {_reasons(r.dead_lettered_by_reason)} |",
        f"| quarantined | {r.quarantined:,} | {_reasons(r.quarantined_by_gate)} |",
        f"| not processed | {r.not_processed:,} | {_reasons(r.not_processed_by_reason, NOT_PROCESSED_WHY)} |",
        f"| **total** | **{sum(r.buckets.values()):,}** | the input's {r.total_items:,} rows |",
    ]


def cost_table(r: CompletionReport) -> list[str]:
    """Where every dollar went: the provider's bill split into useful, re-paid, wasted and quality checks."""
    lines = [
        "| spend | USD |",
        "| --- | ---: |",
        f"| useful work (the kept output of each item and stage, paid once) | {_money(r.useful_cost_usd)} |",
        f"| re-paid (the same output paid again: crash, retry, re-materialization) | {_money(r.repaid_usd)} |",
        "| wasted (invalid or refused replies, dead-lettered and unprocessed items, discarded outputs) "
        f"| {_money(r.wasted_usd)} |",
        f"| quality checks (the sampled_quality judge) | {_money(r.quality_checks_usd)} |",
        f"| **total billed** | **{_money(r.total_cost_usd)}** |",
    ]
    if r.unsettled_requests:
        lines += [
            "",
            f"{r.unsettled_requests:,} requests were in flight when a process died and never settled: the "
            f"provider may have billed up to {_money(r.unsettled_max_usd)} more (not in the total).",
        ]
    return lines


def priced_at_zero_lines(r: CompletionReport) -> list[str]:
    """Why part of the bill is $0: stages whose model has no price row, run under `allow_unpriced: true`."""
    if not r.priced_at_zero:
        return []
    return [
        "",
        "**Priced at $0 (`allow_unpriced`)**: every figure above counts $0 for",
        "",
        *[f"- {p.describe()}." for p in r.priced_at_zero],
        "",
        "Give their provider profile a `prices` row (or a `price_file`) to have them costed.",
    ]


_MAX_PARTITIONS_LISTED = 5


def quality_gates_lines(r: CompletionReport) -> list[str]:
    """Per quality gate, the dataset's chunks by their latest evaluation: passed, warned (a WARN gate failed:
    nothing stopped), failed (an ERROR gate failed: the chunk's later stages were stopped, its rows quarantined),
    not evaluated; then the sampled accuracy the gates measured. From the instance's check evaluations."""
    checks: dict[str, Any] = r.checks.get("checks", {}) if r.checks else {}
    if not checks:
        return ["The pipeline has no quality gates."]
    lines = [
        "| gate | blocking | passed | warned | failed | not evaluated | chunks not passing |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, c in checks.items():
        failed = int(c.get("failed_errors", 0))
        warned = int(c.get("failed", 0)) - failed
        listed = c.get("failed_partitions", [])
        shown = ", ".join(f"`{p}`" for p in listed[:_MAX_PARTITIONS_LISTED])
        if len(listed) > _MAX_PARTITIONS_LISTED:
            shown += f" and {len(listed) - _MAX_PARTITIONS_LISTED} more"
        lines.append(
            f"| {name} | {'yes' if c.get('blocking') else 'no'} | {c.get('passed', 0):,} | {warned:,} | "
            f"{failed:,} | {c.get('not_evaluated', 0):,} | {shown or '-'} |"
        )
    sampled = r.checks.get("sampled_accuracy", {})
    if sampled.get("accuracy") is None:
        lines += ["", "- Sampled accuracy: not scored (no sampled_quality gate scored an item)."]
    else:
        low, high = sampled.get("wilson_95_low"), sampled.get("wilson_95_high")
        interval = f", 95% interval {low:.3f}-{high:.3f}" if low is not None and high is not None else ""
        lines += [
            "",
            f"- Sampled accuracy {sampled['accuracy']:.3f}: {sampled['correct']:,} of {sampled['scored']:,} sampled "
            f"items right over {sampled['partitions']} chunks{interval} (the sampled_quality gates' samples).",
        ]
    if r.accuracy is not None:
        lines.append(f"- Accuracy over every succeeded item with a gold label: {r.accuracy:.3f}.")
    return lines


def render_markdown(done: DatasetCompletion) -> str:
    """The report as Markdown, for the materialization's metadata and the `.md` file beside the JSON."""
    r = done.report
    top = done.top_items
    lines = [
        f"# Dataset `{r.dataset_id}`: completion report",
        "",
        f"**{r.succeeded:,} of {r.total_items:,} items succeeded, {r.failed:,} failed** "
        f"({r.dead_lettered:,} dead-lettered, {r.quarantined:,} quarantined, {r.not_processed:,} not processed). "
        f"Success rate {done.success_rate:.1%}, threshold {done.success_threshold:.0%}: "
        f"**{'met' if done.threshold_met else 'NOT met'}**.",
        "",
        f"- Total billed {_money(r.total_cost_usd)} ({_money(r.cost_per_item_usd)} per item): useful "
        f"{_money(r.useful_cost_usd)}, re-paid {_money(r.repaid_usd)}, wasted {_money(r.wasted_usd)}, quality "
        f"checks {_money(r.quality_checks_usd)}; cached-token savings {_money(r.cache_savings_usd)}",
        f"- Tokens: {r.input_tokens:,} input ({r.cached_input_tokens:,} cached), {r.output_tokens:,} output",
        f"- Chunks: {r.partitions_total} ({', '.join(f'{k} {v}' for k, v in sorted(done.chunk_states.items()))}); "
        f"runs launched {done.runs_launched}; request retries {r.retried}",
        f"- Wall-clock time {r.wall_clock_s:,.1f} s",
        *_estimate_lines(r),
        f"- Failed items: `{r.failed_items_uri}`"
        if r.failed_items_uri
        else "- Failed items: none (no dead letters)",
        "",
        "## Where every row went",
        "",
        *rows_table(r, done.final_stage),
        "",
        "## Where every dollar went",
        "",
        *cost_table(r),
        *priced_at_zero_lines(r),
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
        "## Quality gates",
        "",
        *quality_gates_lines(r),
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
    lines += ["", f"Cost ledger total {_money(done.ledger_cost_usd)} (one row per billed attempt)."]
    return "\n".join(lines) + "\n"


def write_completion(
    done: DatasetCompletion, home: Path, shared_uri: str | None = None, s3: Any = None
) -> Path | str:
    """Write `<home>/reports/<id>/completion_report.json` and `.md` atomically; returns the JSON path. With
    `shared_uri` (the shared payloads' `_reports` prefix on S3, PipelineSettings.reports_uri) the same two files
    go there too, and that copy is the report's URI: every machine reads it."""
    folder = home / "reports" / done.report.dataset_id
    path = folder / "completion_report.json"
    shared = join_uri(shared_uri, done.report.dataset_id) if shared_uri else None
    done.report_uri = join_uri(shared, "completion_report.json") if shared else str(path)
    report_json = json.dumps(done.to_json(), indent=2, sort_keys=True, default=str).encode()
    markdown = render_markdown(done).encode()
    write_bytes_atomic(path, report_json)
    write_bytes_atomic(folder / "completion_report.md", markdown)
    if shared is None:
        return path
    write_object(join_uri(shared, "completion_report.json"), report_json, s3)
    write_object(join_uri(shared, "completion_report.md"), markdown, s3)
    return done.report_uri


def clean_up_chunks(home: Path, dataset_id: str, states: dict[str, ChunkStatus]) -> tuple[int, int]:
    """Remove the checkpoints and output temp files of succeeded chunks; keep failed ones'.

    Returns (checkpoints removed, checkpoints kept): folders, and with the shared backend its (chunk, stage)
    checkpoints too."""
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
    url = state_url()
    if (
        url is not None
    ):  # the shared backend's checkpoints (resources/checkpoints_pg.py), batch journals and marks
        done, left = remove_checkpoints(url, dataset_id, succeeded)
        removed, kept = removed + done, kept + left
        for kind in (SharedBatchJournal.KIND, CANCEL_KIND):
            docs = SharedDocuments(url, kind)
            for key in docs.list_keys():
                owner, partition, _ = key.split("/", 2)
                if owner == dataset_id and partition in succeeded:
                    docs.delete(key)
    return removed, kept


def report_metadata(done: DatasetCompletion, path: Path | str, removed: int, kept: int) -> dict[str, Any]:
    """The completion report's materialization metadata: the Markdown, the webhook summary, the numbers (USD to
    6 decimals, per item 8, seconds 2; the JSON file keeps every digit)."""
    r = done.report
    return {
        "report_uri": dg.MetadataValue.path(str(path)),
        "report": dg.MetadataValue.md(render_markdown(done)),
        "summary": dg.MetadataValue.json(done.summary()),
        "total_items": dg.MetadataValue.int(r.total_items),
        "succeeded": dg.MetadataValue.int(r.succeeded),
        "failed": dg.MetadataValue.int(r.failed),
        "dead_lettered": dg.MetadataValue.int(r.dead_lettered),
        "quarantined": dg.MetadataValue.int(r.quarantined),
        "not_processed": dg.MetadataValue.int(r.not_processed),
        "total_cost_usd": usd(r.total_cost_usd),
        "useful_cost_usd": usd(r.useful_cost_usd),
        "repaid_usd": usd(r.repaid_usd),
        "wasted_usd": usd(r.wasted_usd),
        "quality_checks_usd": usd(r.quality_checks_usd),
        "unsettled_max_usd": usd(r.unsettled_max_usd),
        "cost_per_item_usd": usd_per_item(r.cost_per_item_usd),
        "success_rate": dg.MetadataValue.float(round(done.success_rate, 4)),
        "threshold_met": dg.MetadataValue.bool(done.threshold_met),
        "wall_clock_s": seconds(r.wall_clock_s),
        **(
            {
                "estimated_cost_usd": usd(r.estimated_cost_usd),
                "estimated_wall_clock_s": seconds(r.estimated_wall_clock_s or 0.0),
            }
            if r.estimated_cost_usd is not None
            else {}
        ),
        "checkpoints_removed": dg.MetadataValue.int(removed),
        "checkpoints_kept": dg.MetadataValue.int(kept),
    }


def stage_prices(resources: Any, layout: PipelineLayout) -> dict[str, ModelPrice]:
    """stage -> the price row its LLM resource prices requests with (`LLMResource.price()`, the one lookup); a
    stage whose price cannot be read is left out (its resource refused to send anything, so nothing was billed)."""
    prices: dict[str, ModelPrice] = {}
    for stage in layout.stages:
        try:
            prices[stage] = getattr(resources, layout.llm_key(stage)).price()
        except ValueError:  # no price row and no allow_unpriced, or an unreadable price file
            continue
    return prices


def completion_asset(
    layout: PipelineLayout,
    partitions_def: dg.DynamicPartitionsDefinition,
    *,
    group_name: str,
    owners: list[str] | None,
    min_success_rate: float,
) -> dg.AssetsDefinition:
    """The completion report of `layout`'s pipeline (key `layout.completion_key`), one partition per dataset;
    `min_success_rate` is the share of items that must succeed for `threshold_met` (the spec's `completion`)."""
    llm_key = layout.llm_keys[0]
    # Every stage's LLM resource: the price row each one uses says which stages were priced at zero.
    resource_keys = {"settings", "s3", *layout.llm_keys}

    @dg.asset(
        key=layout.completion_key,
        ins={"ledger": dg.AssetIn(key=layout.ledger_key)},
        partitions_def=partitions_def,
        group_name=group_name,
        kinds={"json"},
        owners=owners,
        required_resource_keys=resource_keys,
        description=(
            "Materialized once per dataset (partition = dataset id) when every chunk succeeded or failed for "
            "good: the completion report (JSON + Markdown in metadata): every input row as succeeded, "
            "dead-lettered, quarantined or not processed, with why; the provider's bill as useful, re-paid, "
            "wasted and quality checks (and which stages were priced at $0 by `allow_unpriced`); the quality "
            "gates' outcomes per chunk and the sampled accuracy; whether the success threshold was met. Metadata: "
            "`total_cost_usd` and the other `*_usd` (USD to 6 decimals, the dataset's whole bill), "
            "`cost_per_item_usd`, `wall_clock_s` (seconds), row counts. Depend on this asset to run when a nightly "
            "dataset is done."
        ),
    )
    def _completion(context: dg.AssetExecutionContext, ledger: pd.DataFrame) -> dg.MaterializeResult:
        settings: PipelineSettings = context.resources.settings
        home = settings.home_path()
        dataset = load_dataset(context.partition_key, home)
        states = chunk_states(context.instance, dataset.partition_keys, layout)
        # Every LLM resource writes the same spend ledger (one state folder); the first stage's finds it.
        events = getattr(context.resources, llm_key).spend_ledger().rows(dataset.dataset_id)
        done = build_dataset_completion(
            context.instance,
            dataset,
            states,
            home,
            ledger,
            min_success_rate,
            context.resources.s3,
            ledger_rows=events,
            layout=layout,
            prices=stage_prices(context.resources, layout),
            dead_letters_uri=settings.dead_letters_uri(),
        )
        path = write_completion(done, home, settings.reports_uri(), context.resources.s3)
        removed, kept = clean_up_chunks(home, dataset.dataset_id, states)
        context.log.info(f"{dataset.dataset_id} complete: {done.report.headline()}; report {path}")
        return dg.MaterializeResult(metadata=report_metadata(done, path, removed, kept))

    return _completion
