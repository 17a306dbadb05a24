"""The stage assets, each partitioned by chunk: items -> classified -> enriched.

`classified` runs the cheap model on every valid item; `enriched` runs the stronger model only on the items the
routing rule selects (the cascade), and carries the others through unchanged, marked `routed=False`.
Every materialization records the chunk's tokens, dollars and item counts as numeric metadata (the UI's
per-partition plots) and links the chunk's dead letters.

In batch mode (`PipelineSettings.classify_mode` / `enrich_mode`) a stage run that leaves items at the provider
yields only an `AssetObservation` (`batch_status` submitted / in_progress) and no output: the partition is not
materialized and downstream stages do not run until `batch_poll_sensor` requests the collecting run.
"""

import json
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd

from io_managers.parquet_files import is_s3_uri
from io_managers.s3_config import S3_ENDPOINT_ENV, S3_ON_ENV
from llm_assets.datasets import load_dataset, read_chunk
from llm_assets.partitions import chunk_partitions, parse_chunk_key
from llm_assets.prompts import classify_prompt, enrich_prompt, load_few_shot, load_taxonomy
from llm_assets.routing import select_for_enrichment
from llm_assets.run_liveness import mark_run_worker
from llm_assets.settings import PipelineSettings
from llm_assets.stages import USAGE_COLUMNS, BatchWait, StageOutcome, run_batch_stage, run_stage
from llm_assets.validation import validate_chunk
from resources.dead_letters import DeadLetter, DeadLetterStore
from resources.llm import LLMResource
from resources.llm.errors import JobFatalError
from resources.llm.tokens import count_tokens

OWNERS = ["team:data-platform"]
GROUP = "chunkwise"
# Transient chunk failures (outage, rate-limit storm) are retried with backoff; JobFatalError opts out.
CHUNK_RETRY = dg.RetryPolicy(
    max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

_KEY_COLUMNS = [
    dg.TableColumn("idempotency_key", "string", description="dataset|item|stage|prompt version|model"),
    dg.TableColumn("dataset_id", "string"),
    dg.TableColumn("item_id", "string"),
    dg.TableColumn("stage", "string"),
    dg.TableColumn("prompt_version", "string"),
    dg.TableColumn("model", "string"),
    dg.TableColumn("team", "string", description="the consumer billed for this item"),
]
_USAGE_COLUMNS = [
    dg.TableColumn("cost_usd", "float", description="USD, all attempts of this item"),
    dg.TableColumn("input_tokens", "int"),
    dg.TableColumn("cached_input_tokens", "int"),
    dg.TableColumn("cache_write_tokens", "int"),
    dg.TableColumn("output_tokens", "int"),
    dg.TableColumn("cache_savings_usd", "float", description="USD saved by prompt caching"),
    dg.TableColumn("attempts", "int"),
    dg.TableColumn("latency_s", "float"),
]


_ENRICHED_COLUMNS = [
    "idempotency_key", "dataset_id", "item_id", "stage", "prompt_version", "model", "team",
    "label", "confidence", "routed", "summary", "entities", "urgency",
    "cost_usd", "input_tokens", "cached_input_tokens", "output_tokens", "cache_write_tokens",
    "cache_savings_usd", "attempts", "latency_s",
]  # fmt: skip


def _dead_letter_store(settings: PipelineSettings) -> DeadLetterStore:
    return DeadLetterStore(str(settings.home_path() / "dead_letters"))


def write_dead_letters(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    dataset_id: str,
    stage: str,
    rows: list[DeadLetter],
) -> dict:
    store = _dead_letter_store(settings)
    store.write_partition(dataset_id, context.partition_key, stage, rows)
    return {
        "dead_letters": dg.MetadataValue.int(len(rows)),
        "dead_letters_uri": dg.MetadataValue.path(
            store.uri_for(dataset_id, context.partition_key, stage=stage)
        ),
    }


@dg.asset(
    partitions_def=chunk_partitions,
    group_name=GROUP,
    kinds={"pandas", "parquet"},
    owners=OWNERS,
    description=(
        "The chunk's input rows, validated: rows with no id, a repeated id, or empty/non-text `text` become "
        "dead letters (`invalid_input`); the length policy truncates or rejects over-long items before any "
        "LLM call."
    ),
    metadata={
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn("item_id", "string"),
                dg.TableColumn("text", "string", description="after the length policy"),
                dg.TableColumn("team", "string"),
                dg.TableColumn("gold_label", "string", description="the input's `label`, when it has one"),
                dg.TableColumn("input_tokens", "int", description="estimated tokens of `text`"),
                dg.TableColumn("truncated", "bool"),
                dg.TableColumn("extra_json", "string", description="passthrough columns"),
            ]
        )
    },
)
def items(
    context: dg.AssetExecutionContext, settings: PipelineSettings, s3: dg.ResourceParam[Any]
) -> dg.MaterializeResult:
    mark_run_worker(context)
    dataset_id, chunk_index = parse_chunk_key(context.partition_key)
    dataset = load_dataset(dataset_id, settings.home_path())
    if is_s3_uri(dataset.uri) and s3 is None:
        raise JobFatalError(
            "config",
            f"dataset {dataset_id} is read from {dataset.uri}, but this code location has no S3 resource: set "
            f"{S3_ENDPOINT_ENV} (an S3-compatible server) or {S3_ON_ENV}=1 (AWS) where Dagster runs, then re-run the chunk",
        )
    raw = read_chunk(dataset, chunk_index, s3=s3)
    checked = validate_chunk(
        raw,
        chunk_index=chunk_index,
        max_input_tokens=settings.max_input_tokens,
        length_policy=settings.length_policy,
        count_tokens=count_tokens,
        duplicate_rows=dataset.duplicate_rows,
    )
    dead = items_dead_letters(context, dataset_id, checked)
    metadata = {
        "items_total": dg.MetadataValue.int(len(raw)),
        "items_valid": dg.MetadataValue.int(len(checked.valid)),
        "items_invalid": dg.MetadataValue.int(len(checked.rejected)),
        "items_truncated": dg.MetadataValue.int(checked.truncated),
        "length_policy": dg.MetadataValue.text(
            f"{settings.length_policy} above {settings.max_input_tokens} tokens"
        ),
        **write_dead_letters(context, settings, dataset_id, "items", dead),
    }
    return dg.MaterializeResult(value=checked.valid, metadata=metadata)


def items_dead_letters(context: dg.AssetExecutionContext, dataset_id: str, checked: Any) -> list[DeadLetter]:
    """A dead letter (stage `items`, no attempt) for every row validation rejected."""
    now = pd.Timestamp.now(tz="UTC").isoformat()
    return [
        DeadLetter(
            dataset_id=dataset_id,
            partition_key=context.partition_key,
            item_id=r.item_id,
            stage="items",
            error_class=r.error_class,
            error_message=r.error_message,
            attempts=0,
            first_attempt_at=now,
            last_attempt_at=now,
            model="",
            run_id=context.run_id,
            input_text=r.text,
            input_json=r.row_json,
        )
        for r in checked.rejected
    ]


def _run_llm_stage(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mode: str,
    **stage: object,
) -> StageOutcome | BatchWait:
    """The stage online (run_stage) or through the provider's Batch API (run_batch_stage)."""
    common = {"home": settings.home_path(), "checkpoint_every": settings.checkpoint_every, **stage}
    if mode == "batch":
        return run_batch_stage(context, **common)
    return run_stage(context, checkpointing=settings.checkpointing, **common)


def _batch_observation(context: dg.AssetExecutionContext, wait: BatchWait) -> dg.AssetObservation:
    context.log.info(wait.message())
    return dg.AssetObservation(
        asset_key=context.asset_key, partition=context.partition_key, metadata=wait.metadata()
    )


def _stage_result(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    dataset_id: str,
    outcome: StageOutcome,
    frame: pd.DataFrame,
    extra: dict | None = None,
) -> dg.MaterializeResult:
    metadata = {
        **outcome.metadata,
        **write_dead_letters(
            context, settings, dataset_id, context.assets_def.key.path[-1], outcome.dead_letters
        ),
        **(extra or {}),
    }
    return dg.MaterializeResult(value=frame, metadata=metadata)


@dg.asset(
    partitions_def=chunk_partitions,
    group_name=GROUP,
    kinds={"openai", "pandas", "parquet"},
    owners=OWNERS,
    retry_policy=CHUNK_RETRY,
    output_required=False,  # batch mode: a run that only submits a provider batch materializes nothing
    description=(
        "Every valid item of the chunk labelled by the cheap model from the fixed taxonomy, with a confidence. "
        "Structured output, validated; items that fail for good are dead letters. Checkpointed per item. "
        "`classify_mode: batch` sends the chunk through the provider's Batch API (half price)."
    ),
    metadata={
        "dagster/column_schema": dg.TableSchema(
            columns=[
                *_KEY_COLUMNS,
                dg.TableColumn("label", "string", description="one of the taxonomy's labels"),
                dg.TableColumn("confidence", "float", description="0..1, as the model reports it"),
                dg.TableColumn("gold_label", "string", description="the input's label, for quality gates"),
                *_USAGE_COLUMNS,
            ]
        )
    },
)
def classified(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    classifier_llm: LLMResource,
    items: pd.DataFrame,
) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
    mark_run_worker(context)
    dataset_id, _ = parse_chunk_key(context.partition_key)
    taxonomy = load_taxonomy(settings.taxonomy_path)
    prompt = classify_prompt(taxonomy, load_few_shot(settings.few_shot_path, taxonomy))
    outcome = _run_llm_stage(
        context,
        settings,
        settings.classify_mode,
        llm=classifier_llm,
        prompt=prompt,
        items=items,
        dataset_id=dataset_id,
    )
    if isinstance(outcome, BatchWait):
        yield _batch_observation(context, outcome)
        return
    frame = outcome.rows
    frame["gold_label"] = frame["item_id"].map(items.set_index("item_id")["gold_label"])
    yield _stage_result(context, settings, dataset_id, outcome, frame)


@dg.asset(
    partitions_def=chunk_partitions,
    group_name=GROUP,
    kinds={"openai", "pandas", "parquet"},
    owners=OWNERS,
    retry_policy=CHUNK_RETRY,
    output_required=False,  # batch mode: a run that only submits a provider batch materializes nothing
    description=(
        "The classified items, with a summary, extracted entities and urgency from the stronger model for the "
        "items the routing rule selects (`routed=True`); the others are carried through unchanged. "
        "`enrich_mode: batch` sends the routed items through the provider's Batch API (half price)."
    ),
    metadata={
        "dagster/column_schema": dg.TableSchema(
            columns=[
                *_KEY_COLUMNS,
                dg.TableColumn("label", "string"),
                dg.TableColumn("confidence", "float"),
                dg.TableColumn(
                    "routed", "bool", description="True when the stronger model enriched this item"
                ),
                dg.TableColumn("summary", "string"),
                dg.TableColumn("entities", "string", description="JSON list"),
                dg.TableColumn("urgency", "string"),
                *_USAGE_COLUMNS,
            ]
        )
    },
)
def enriched(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    enricher_llm: LLMResource,
    items: pd.DataFrame,
    classified: pd.DataFrame,
) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
    mark_run_worker(context)
    dataset_id, _ = parse_chunk_key(context.partition_key)
    routed_ids = select_for_enrichment(classified, settings)
    to_enrich = items[items["item_id"].isin(routed_ids)]
    outcome = _run_llm_stage(
        context,
        settings,
        settings.enrich_mode,
        llm=enricher_llm,
        prompt=enrich_prompt(),
        items=to_enrich,
        dataset_id=dataset_id,
    )
    if isinstance(outcome, BatchWait):
        yield _batch_observation(context, outcome)
        return
    frame = _carry_through(classified, outcome.rows, set(routed_ids))
    extra = {
        "items_routed": dg.MetadataValue.int(len(to_enrich)),
        "route": dg.MetadataValue.text(settings.route),
    }
    yield _stage_result(context, settings, dataset_id, outcome, frame, extra)


def _carry_through(
    classified: pd.DataFrame, enriched_rows: pd.DataFrame, routed_ids: set[str]
) -> pd.DataFrame:
    """One row per classified item, minus the routed items the enrich stage dead-lettered.

    Routed and enriched: the enrich stage's row (its idempotency key, model and usage) plus the label.
    Not routed: the classified label carried through, `routed=False`, no enrichment, zero enrichment cost.
    """
    keep = ["item_id", "label", "confidence"]
    not_routed = classified[~classified["item_id"].isin(routed_ids)]
    passthrough = not_routed[
        ["idempotency_key", "dataset_id", "item_id", "team", "label", "confidence"]
    ].assign(
        stage="enriched", prompt_version="", model="", routed=False, summary=None, entities=None, urgency=None
    )
    passthrough["idempotency_key"] = passthrough["idempotency_key"].map(lambda k: f"{k}|not-routed")
    for column in USAGE_COLUMNS:
        passthrough[column] = 0
    if enriched_rows.empty:
        frame = passthrough.reset_index(drop=True)
    else:
        done = enriched_rows.merge(classified[keep], on="item_id", how="left").assign(routed=True)
        done["entities"] = done["entities"].map(lambda v: json.dumps(list(v)) if v is not None else None)
        frame = pd.concat([done, passthrough], ignore_index=True)
    return frame[[c for c in _ENRICHED_COLUMNS if c in frame.columns]]
