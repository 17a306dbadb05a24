"""The completion report of a dataset: where every input row went, and where every dollar went.

The pipeline's stages and asset keys come from its layout (llm_assets/layout.py); below, "the last stage" is
BANKING77's `enriched` and reviews' `reply_draft`.

**Rows.** `item_buckets` puts every row of the input file in exactly one bucket, with a reason:
- `succeeded`: the item is in the last stage's output of a chunk whose last stage is materialized and that no
  blocking gate stopped (carried-through rows a stage did not route count: they reached the end);
- `quarantined` (by gate): the chunk's latest evaluation of a blocking check failed with ERROR severity
  (`checks_section(...)["blocked_by"]`, the first such gate in stage order). Its valid rows
  are the stored output of the gated stage (the IO manager wrote it before the check ran): kept on disk, never
  deleted, fed to nothing downstream until a re-run or a person clears the gate;
- `dead_lettered` (by error class): an input row rejected before any LLM call (stage `items`, counted per row:
  a row repeating an id is a row of its own), or an item that failed for good at an LLM stage (counted once, at
  the first stage it failed; never when its output is kept);
- `not_processed` (by why): the other rows of a chunk that did not finish: its state from
  llm_assets/chunk_status.py (`not_started`, `gave_up`, `canceled`, `needs_human`, `retry_pending`,
  `in_flight`, `incomplete`) or `batch_at_provider` (a batch-mode chunk whose batch is still running).
The buckets add up to the input's row count; `item_buckets` raises if they do not (that is a bug, not bad data).

**Money.** Every USD and token figure is a sum over the dataset's `billed` rows in the spend ledger
(resources/llm/spend_ledger.py), so it equals the provider's bill after crashes, retries, budget halts,
re-materializations and backfills. `spend_kinds` gives each billed attempt one kind:
- `quality_checks`: stage `judge` (the sampled_quality gate's judge model);
- `useful`: per idempotency key, the last `ok` reply, when the key's output is kept (the item succeeded or is
  quarantined, and the key is in the kept output: same prompt version and model);
- `repaid`: the earlier `ok` replies of such a key: the same output paid again after a crash, a retry or a
  re-materialization;
- `wasted`: everything else billed: replies that failed their schema, refusals and filtered replies, every
  attempt of dead-lettered and not-processed items (until a re-run keeps their output), `ok` replies of keys
  whose output was discarded (an older prompt version or model).
`total_cost_usd == useful_cost_usd + repaid_usd + wasted_usd + quality_checks_usd`. Attempts sent and never
settled (in flight when a process was killed) are `unsettled_requests`: the provider may have billed up to
`unsettled_max_usd` more, which no total includes.

**Priced at zero.** A stage whose model has no price row runs only when its provider profile sets
`allow_unpriced: true` (a local model), and then every figure above counts it at $0. `priced_at_zero` says
which stage and model that was, and how many requests and tokens it was billed for, so a $0 total is never
read as "free because nothing ran".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pandas as pd

from llm_assets.checks import checks_section
from llm_assets.chunk_status import ChunkState, ChunkStatus, chunk_states
from llm_assets.datasets import RegisteredDataset
from llm_assets.judge import JUDGE_STAGE
from llm_assets.layout import PipelineLayout
from llm_assets.materializations import latest_materialization, load_stage_output
from resources.dead_letters import DeadLetterStore
from resources.llm.prices import ALLOW_UNPRICED_SOURCE, ModelPrice
from resources.llm.spend_ledger import BILLED, OK, attempt_summary

NO_TEAM = "(no team)"
QUALITY_CHECKS = "(quality checks)"
"""`cost_by_team` line of the judge's spend (no team is billed for a quality gate)."""

USEFUL, REPAID, WASTED, QUALITY = "useful", "repaid", "wasted", "quality_checks"
SPEND_KINDS = (USEFUL, REPAID, WASTED, QUALITY)
BUCKETS = ("succeeded", "dead_lettered", "quarantined", "not_processed")
BATCH_AT_PROVIDER = "batch_at_provider"

NO_CHECKS: dict[str, Any] = {
    "checks": {},
    "sampled_accuracy": {"accuracy": None, "correct": 0, "scored": 0, "partitions": 0},
    "judge_cost_usd": 0.0,
    "blocked_partitions": [],
    "blocked_by": {},
}
"""The checks section of a pipeline that has no quality gates."""

NOT_PROCESSED_WHY = {
    ChunkState.NOT_STARTED.value: "the chunk never ran",
    ChunkState.IN_FLIGHT.value: "a run of the chunk is queued or running",
    ChunkState.RETRY_PENDING.value: "retryable failure; the backfill sensor re-runs it",
    ChunkState.NEEDS_HUMAN.value: "job-fatal halt (key, quota, budget, config): needs a person",
    ChunkState.INCOMPLETE.value: "the latest run ended without materializing the last stage",
    ChunkState.GAVE_UP.value: "gave up after every retry",
    ChunkState.CANCELED.value: "a person canceled its run",
    ChunkState.FAILED_QUALITY_GATE.value: "its run failed a gate whose latest evaluation has since passed",
    BATCH_AT_PROVIDER: "its provider batch has not ended yet",
}
"""What each `not_processed_by_reason` key means (for people: the Markdown and the console)."""


# ---------------------------------------------------------------------------------------------- rows


@dataclass
class ItemBuckets:
    """Every input row in one bucket (counts of rows), with why; plus what the spend accounting needs."""

    total_items: int
    succeeded: int = 0
    dead_lettered: int = 0
    quarantined: int = 0
    not_processed: int = 0
    dead_lettered_by_reason: dict[str, int] = field(default_factory=dict)
    """error class -> rows (`invalid_input`, `refusal`, `schema_invalid`, ...)."""
    dead_lettered_by_stage: dict[str, int] = field(default_factory=dict)
    """`items` (invalid inputs, never sent), then each stage."""
    quarantined_by_gate: dict[str, int] = field(default_factory=dict)
    """`<asset>:<check>` -> rows."""
    not_processed_by_reason: dict[str, int] = field(default_factory=dict)
    """chunk state (NOT_PROCESSED_WHY) -> rows."""
    kept_keys: set[str] = field(default_factory=set)
    """Idempotency keys whose output is kept (succeeded and quarantined items)."""
    dead_letter_rows: int = 0
    """Rows in the dataset's dead-letter files (every stage, counted or not): 0 means there is no file."""
    succeeded_classified: list[pd.DataFrame] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in BUCKETS}


def _chunk_rows(dataset: RegisteredDataset, chunk_index: int) -> int:
    return min(dataset.chunk_size, dataset.total_rows - chunk_index * dataset.chunk_size)


def _batch_pending(instance: dg.DagsterInstance, partition: str, layout: PipelineLayout) -> bool:
    """A stage's latest observation says its batch is at the provider, and no materialization came after it."""
    for stage in layout.stages:
        observed = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=layout.key(stage), asset_partitions=[partition]), limit=1
        ).records
        if not observed:
            continue
        status = observed[0].asset_observation.metadata.get("batch_status")
        recorded = latest_materialization(instance, layout.key(stage), partition)
        newer = recorded is None or observed[0].timestamp > recorded.timestamp
        if status is not None and status.value in ("submitted", "in_progress") and newer:
            return True
    return False


def item_buckets(
    instance: dg.DagsterInstance,
    dataset: RegisteredDataset,
    dead_letters: DeadLetterStore,
    *,
    states: dict[str, ChunkStatus] | None = None,
    blocked_by: dict[str, str] | None = None,
    s3: Any = None,
    layout: PipelineLayout,
) -> ItemBuckets:
    """Where every row of `dataset` is (see the module docstring). `states` (chunk_states) and `blocked_by`
    (checks_section) are read from the instance when not given. Raises RuntimeError if the buckets of a chunk
    do not add up to its rows."""
    stages = layout.stages
    states = states if states is not None else chunk_states(instance, dataset.partition_keys, layout)
    if blocked_by is None:
        blocked_by = checks_section(instance, dataset, layout)["blocked_by"]
    materialized = instance.get_materialized_partitions(layout.final_key)
    dead_all = dead_letters.query(dataset.dataset_id)
    dead_by_chunk = {k: f for k, f in dead_all.groupby("partition_key")} if len(dead_all) else {}
    out = ItemBuckets(total_items=dataset.total_rows, dead_letter_rows=len(dead_all))
    reasons: Counter = Counter()
    by_stage: Counter = Counter()
    gates: Counter = Counter()
    waiting: Counter = Counter()
    for index, partition in enumerate(dataset.partition_keys):
        rows = _chunk_rows(dataset, index)
        gate = blocked_by.get(partition)
        kept_stages: tuple[str, ...] = ()
        if gate is not None:
            gated_key = gate.split(":", 1)[0]  # `<asset key>:<check>`, e.g. `banking77/enriched:success_rate`
            gated = [i for i, s in enumerate(stages) if layout.key(s).to_user_string() == gated_key]
            kept_stages = stages[: gated[0] + 1] if gated else stages[:1]
        elif partition in materialized:
            kept_stages = stages
        outputs = {s: load_stage_output(instance, layout.key(s), partition, s3) for s in kept_stages}
        kept_ids = set(outputs[kept_stages[-1]]["item_id"].astype(str)) if kept_stages else set()
        for frame in outputs.values():
            keys = frame.loc[frame["item_id"].astype(str).isin(kept_ids), "idempotency_key"]
            out.kept_keys.update(keys.astype(str))

        # Dead letters of the stages this chunk's rows went through (a gated chunk stopped at its gated stage).
        dead = dead_by_chunk.get(partition, dead_all.iloc[0:0])
        through = ("items", *kept_stages) if kept_stages else ("items", *stages)
        dead = dead[dead["stage"].isin(through)]
        invalid = dead[dead["stage"] == "items"]  # one per input row, ids may repeat
        failed = dead[dead["stage"] != "items"].copy()
        failed["_order"] = failed["stage"].map({s: i for i, s in enumerate(stages)})
        failed = failed.sort_values("_order", kind="stable").drop_duplicates("item_id")
        failed = failed[~failed["item_id"].astype(str).isin(kept_ids)]
        counted = pd.concat([invalid, failed])
        reasons.update(counted["error_class"].astype(str))
        by_stage.update(counted["stage"].astype(str))
        accounted = len(kept_ids) + len(counted)
        rest = rows - accounted
        if rest < 0 or (kept_stages and rest != 0):
            raise RuntimeError(
                f"chunk {partition} has {rows} input rows but {len(kept_ids)} kept output rows + {len(counted)} "
                f"dead letters = {accounted}: its outputs and dead letters disagree (a bug in Chunkwise, or files "
                "changed by hand). Re-materialize the chunk, then build the report again."
            )
        out.dead_lettered += len(counted)
        if gate is not None:
            out.quarantined += len(kept_ids)
            gates[gate] += len(kept_ids)
        elif kept_stages:
            out.succeeded += len(kept_ids)
            out.succeeded_classified.append(outputs[stages[0]])
        elif rest:
            status = states.get(partition)
            why = status.state.value if status is not None else ChunkState.NOT_STARTED.value
            if why == ChunkState.INCOMPLETE.value and _batch_pending(instance, partition, layout):
                why = BATCH_AT_PROVIDER
            out.not_processed += rest
            waiting[why] += rest
    out.dead_lettered_by_reason = dict(reasons.most_common())
    out.dead_lettered_by_stage = {s: by_stage[s] for s in ("items", *stages) if by_stage[s]}
    out.quarantined_by_gate = dict(gates.most_common())
    out.not_processed_by_reason = dict(waiting.most_common())
    if sum(out.as_dict().values()) != out.total_items:
        raise RuntimeError(
            f"dataset {dataset.dataset_id}: buckets {out.as_dict()} add up to {sum(out.as_dict().values())}, "
            f"not to its {out.total_items} rows (a bug in Chunkwise's report)"
        )
    return out


# ---------------------------------------------------------------------------------------------- money


def item_of_key(key: str, dataset_id: str) -> str:
    """The item id inside an idempotency key `<dataset>|<item>|<stage>|<prompt version>|<model>`."""
    rest = key[len(dataset_id) + 1 :] if key.startswith(f"{dataset_id}|") else key
    return rest.rsplit("|", 3)[0]


def spend_kinds(billed: pd.DataFrame, kept_keys: set[str]) -> pd.Series:
    """The kind (`useful`, `repaid`, `wasted`, `quality_checks`) of each billed ledger row (module docstring)."""
    kinds = pd.Series(WASTED, index=billed.index, dtype=object)
    judge = billed["stage"] == JUDGE_STAGE
    ok = billed[~judge & (billed["outcome"] == OK) & billed["idempotency_key"].isin(kept_keys)]
    last = ok["seq"] == ok.groupby("idempotency_key")["seq"].transform("max")
    kinds.loc[ok.index[last.to_numpy()]] = USEFUL
    kinds.loc[ok.index[~last.to_numpy()]] = REPAID
    kinds.loc[judge] = QUALITY
    return kinds


def spend_rows(ledger_rows: pd.DataFrame, dataset_id: str, kept_keys: set[str]) -> pd.DataFrame:
    """The billed rows of `ledger_rows` (SpendLedger.rows) with `item_id`, the billed `team` label (judge rows
    `(quality checks)`, no team `(no team)`), the UTC `day` of the bill and its `kind`."""
    billed = ledger_rows[ledger_rows["event"] == BILLED].copy()
    billed["item_id"] = [item_of_key(str(k), dataset_id) for k in billed["idempotency_key"]]
    team = billed["team"].fillna("").astype(str).replace("", NO_TEAM)
    billed["team"] = team.where(billed["stage"] != JUDGE_STAGE, QUALITY_CHECKS)
    billed["day"] = [datetime.fromtimestamp(float(t), UTC).date().isoformat() for t in billed["at"]]
    billed["kind"] = spend_kinds(billed, kept_keys)
    return billed


def sum_by(rows: pd.DataFrame, by: str, column: str = "cost_usd") -> dict[str, float]:
    """`column` summed per value of `by`, largest first."""
    if rows.empty:
        return {}
    sums = rows.groupby(by)[column].sum().sort_values(ascending=False)
    return {str(k): float(v) for k, v in sums.items()}


@dataclass(frozen=True)
class PricedAtZero:
    """A stage (or the quality gates' judge, stage `judge`) whose model had no price row and was priced at $0
    because its provider profile sets `allow_unpriced: true`. Counts are of its billed requests and tokens."""

    stage: str
    provider: str
    model: str
    requests_billed: int
    input_tokens: int
    output_tokens: int
    price_source: str = ALLOW_UNPRICED_SOURCE

    def describe(self) -> str:
        """One line for people: which stage and model, and why it cost $0."""
        return (
            f"stage `{self.stage}` (model `{self.model}`, provider {self.provider}): no price row, and its "
            f"provider profile sets `allow_unpriced: true`, so its {self.requests_billed:,} billed requests "
            f"({self.input_tokens:,} input + {self.output_tokens:,} output tokens) count $0"
        )


def zero_priced_stages(prices: Mapping[str, ModelPrice], spend: pd.DataFrame) -> list[PricedAtZero]:
    """The stages whose price row (`prices`: stage -> the row its LLM resource priced requests with) is the zero
    row of `allow_unpriced`, with what `spend` (spend_rows) billed them for. The judge's rows are listed too
    (stage `judge`) when its provider and model are one of those and it was billed $0 (the layout has no judge
    resource to ask, so the same unpriced model billed nothing is taken as the same zero price)."""
    zero = {stage: price for stage, price in prices.items() if price.source == ALLOW_UNPRICED_SOURCE}
    found: list[PricedAtZero] = []

    def entry(stage: str, provider: str, model: str, rows: pd.DataFrame) -> PricedAtZero:
        return PricedAtZero(
            stage=stage,
            provider=provider,
            model=model,
            requests_billed=len(rows),
            input_tokens=int(rows["input_tokens"].sum()) if len(rows) else 0,
            output_tokens=int(rows["output_tokens"].sum()) if len(rows) else 0,
        )

    for stage, price in zero.items():
        found.append(entry(stage, price.provider, price.model, spend[spend["stage"] == stage]))
    unpriced_models = {(p.provider, p.model) for p in zero.values()}
    judge = spend[spend["stage"] == JUDGE_STAGE]
    if len(judge):
        for (provider, model), rows in judge.groupby(["provider", "model"]):
            if (str(provider), str(model)) in unpriced_models and float(rows["cost_usd"].sum()) == 0.0:
                found.append(entry(JUDGE_STAGE, str(provider), str(model), rows))
    return found


# ---------------------------------------------------------------------------------------------- the report


@dataclass
class CompletionReport:
    """One dataset's outcome. Counts are input rows, money USD, tokens tokens, time seconds."""

    dataset_id: str
    total_items: int
    succeeded: int
    failed: int
    """total_items - succeeded: dead_lettered + quarantined + not_processed."""
    dead_lettered: int
    quarantined: int
    not_processed: int
    retried: int
    wall_clock_s: float
    total_cost_usd: float
    """Everything billed for this dataset (the spend ledger): what the provider charges."""
    useful_cost_usd: float
    repaid_usd: float
    wasted_usd: float
    quality_checks_usd: float
    cost_per_item_usd: float
    failed_items_uri: str | None
    """The dataset's dead-letter folder; None when it has no dead letters (there is nothing to open)."""
    partitions_total: int
    partitions_materialized: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cache_savings_usd: float
    requests_billed: int = 0
    unsettled_requests: int = 0
    """Attempts sent and never settled (in flight when a process died): maybe billed, not in any total."""
    unsettled_max_usd: float = 0.0
    """The most the unsettled attempts can have cost (their worst-case reservations)."""
    buckets: dict[str, int] = field(default_factory=dict)
    """succeeded / dead_lettered / quarantined / not_processed: they add up to total_items."""
    dead_lettered_by_reason: dict[str, int] = field(default_factory=dict)
    dead_lettered_by_stage: dict[str, int] = field(default_factory=dict)
    quarantined_by_gate: dict[str, int] = field(default_factory=dict)
    not_processed_by_reason: dict[str, int] = field(default_factory=dict)
    cost_by_kind: dict[str, float] = field(default_factory=dict)
    cost_by_stage: dict[str, float] = field(default_factory=dict)
    cost_by_model: dict[str, float] = field(default_factory=dict)
    cost_by_mode: dict[str, float] = field(default_factory=dict)
    """`online` or `batch` (provider Batch API, half price): where the money went."""
    cost_by_team: dict[str, float] = field(default_factory=dict)
    """The team billed for each attempt; `(quality checks)` for the judge, `(no team)` for items without one."""
    dead_letters_by_class: dict[str, int] = field(default_factory=dict)
    """Same as dead_lettered_by_reason (kept for readers of earlier reports)."""
    top_decile_token_share: float = 0.0
    accuracy: float | None = None
    """Every succeeded item with a gold label, scored (free: the labels are in the input)."""
    sampled_accuracy: float | None = None
    """Pooled over the chunks' `sampled_quality` gate samples (what the gates decided on)."""
    sample_size: int = 0
    blocked_partitions: list[str] = field(default_factory=list)
    """Chunks a blocking quality gate stopped: their rows are quarantined (kept, feeding nothing)."""
    checks: dict[str, Any] = field(default_factory=dict)
    """Per check: partitions passed / failed; the sampled accuracy; the judge's spend; blocked_by."""
    priced_at_zero: list[PricedAtZero] = field(default_factory=list)
    """Stages priced at $0 because their model has no price row and their profile sets `allow_unpriced`."""
    estimated_cost_usd: float | None = None
    """The dataset's estimate (llm_assets/estimate.py, each stage in its mode) when one was made; None if not."""
    estimated_cost_usd_low: float | None = None
    estimated_cost_usd_high: float | None = None
    """The estimate's 95% interval from sampling (its route rates and per-item spread), in the stages' modes."""
    estimated_wall_clock_s: float | None = None
    estimate_sample_cost_usd: float | None = None
    """What the estimate's sample cost (spend ledger scope `estimate-<dataset id>`, not in `total_cost_usd`)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> str:
        line = (
            f"{self.succeeded:,} of {self.total_items:,} items succeeded, {self.failed:,} failed "
            f"({self.dead_lettered:,} dead-lettered, {self.quarantined:,} quarantined, "
            f"{self.not_processed:,} not processed); "
            f"${self.total_cost_usd:.4f} (${self.cost_per_item_usd:.6f} per item)"
        )
        if self.priced_at_zero:
            zero = ", ".join(f"{p.stage} ({p.model})" for p in self.priced_at_zero)
            line += f"; priced at $0 by allow_unpriced (no price row): {zero}"
        return line


def build_completion_report(
    instance: dg.DagsterInstance,
    dataset: RegisteredDataset,
    dead_letters: DeadLetterStore,
    wall_clock_s: float,
    s3: Any = None,
    *,
    ledger_rows: pd.DataFrame,
    states: dict[str, ChunkStatus] | None = None,
    layout: PipelineLayout,
    checks: dict[str, Any] | None = None,
    prices: Mapping[str, ModelPrice] | None = None,
) -> CompletionReport:
    """The report of `dataset`. `ledger_rows`: the dataset's spend ledger (`SpendLedger.rows(dataset_id)`),
    every event of every attempt; `states`: chunk_states (read when not given); `layout`: the pipeline's
    stages and asset keys; `checks`: its checks section (default: `checks_section` of the layout's gates);
    `prices`: stage -> the price row its LLM resource uses (`LLMResource.price()`), for `priced_at_zero`."""
    checks = checks if checks is not None else checks_section(instance, dataset, layout)
    buckets = item_buckets(
        instance, dataset, dead_letters, states=states, blocked_by=checks["blocked_by"], s3=s3, layout=layout
    )
    spend = spend_rows(ledger_rows, dataset.dataset_id, buckets.kept_keys)
    by_kind = {kind: 0.0 for kind in SPEND_KINDS} | sum_by(spend, "kind")
    attempts = attempt_summary(ledger_rows)
    total_cost = float(spend["cost_usd"].sum())

    retried = 0
    for partition in dataset.partition_keys:
        for stage in layout.stages:
            recorded = latest_materialization(instance, layout.key(stage), partition)
            if recorded is not None:
                retried += int(recorded.metadata.get("retries", 0) or 0)

    items = spend[spend["stage"] != JUDGE_STAGE]
    per_item_tokens = (items["input_tokens"] + items["output_tokens"]).groupby(items["item_id"]).sum()
    top_share = 0.0
    if len(per_item_tokens) and per_item_tokens.sum() > 0:
        top_n = max(1, len(per_item_tokens) // 10)
        top_share = float(per_item_tokens.nlargest(top_n).sum() / per_item_tokens.sum())

    classified = (
        pd.concat(buckets.succeeded_classified, ignore_index=True)
        if buckets.succeeded_classified
        else pd.DataFrame()
    )
    field = layout.label_field
    usable = len(classified) and field and {field, "gold_label"} <= set(classified.columns)
    labelled = classified[classified["gold_label"].notna()] if usable else classified.iloc[0:0]
    accuracy = float((labelled[field] == labelled["gold_label"]).mean()) if len(labelled) else None
    sampled = checks["sampled_accuracy"]
    materialized = instance.get_materialized_partitions(layout.final_key)
    return CompletionReport(
        dataset_id=dataset.dataset_id,
        total_items=dataset.total_rows,
        succeeded=buckets.succeeded,
        failed=dataset.total_rows - buckets.succeeded,
        dead_lettered=buckets.dead_lettered,
        quarantined=buckets.quarantined,
        not_processed=buckets.not_processed,
        retried=retried,
        wall_clock_s=round(wall_clock_s, 3),
        total_cost_usd=total_cost,
        useful_cost_usd=by_kind[USEFUL],
        repaid_usd=by_kind[REPAID],
        wasted_usd=by_kind[WASTED],
        quality_checks_usd=by_kind[QUALITY],
        cost_per_item_usd=total_cost / dataset.total_rows if dataset.total_rows else 0.0,
        failed_items_uri=dead_letters.uri_for(dataset.dataset_id) if buckets.dead_letter_rows else None,
        partitions_total=len(dataset.partition_keys),
        partitions_materialized=len(set(dataset.partition_keys) & materialized),
        input_tokens=int(spend["input_tokens"].sum()),
        cached_input_tokens=int(spend["cached_input_tokens"].sum()),
        output_tokens=int(spend["output_tokens"].sum()),
        cache_savings_usd=float(spend["cache_savings_usd"].sum()),
        requests_billed=len(spend),
        unsettled_requests=int(attempts["unsettled_requests"]),
        unsettled_max_usd=float(attempts["unsettled_max_usd"]),
        buckets=buckets.as_dict(),
        dead_lettered_by_reason=buckets.dead_lettered_by_reason,
        dead_lettered_by_stage=buckets.dead_lettered_by_stage,
        quarantined_by_gate=buckets.quarantined_by_gate,
        not_processed_by_reason=buckets.not_processed_by_reason,
        cost_by_kind=by_kind,
        cost_by_stage=sum_by(spend, "stage"),
        cost_by_model=sum_by(spend, "model"),
        cost_by_mode=sum_by(spend, "mode"),
        cost_by_team=sum_by(spend, "team"),
        dead_letters_by_class=buckets.dead_lettered_by_reason,
        top_decile_token_share=top_share,
        accuracy=accuracy,
        sampled_accuracy=sampled["accuracy"],
        sample_size=int(sampled["scored"]),
        blocked_partitions=sorted(checks["blocked_by"]),
        checks=checks,
        priced_at_zero=zero_priced_stages(prices or {}, spend),
    )
