"""A pipeline spec as Dagster assets: `<pipeline>/items`, then one asset per stage, each partitioned by chunk.

This is the generic stage factory of issue 12 (llm_assets/spec.py describes the spec). For a spec it builds
- its own dynamic partitions, `<pipeline>__chunks` (one per chunk of each registered dataset);
- `<pipeline>/items`: the chunk's rows, validated, the text joined from the configured columns, the length
  policy applied;
- `<pipeline>/<stage>` for each stage, in order: the stage's route is evaluated on the rows that reached it
  (earlier stages' outputs as `stage.field`, input columns by role and by name), its user template is rendered
  per routed row, the model runs through `run_stage` / `run_batch_stage` (checkpointed, resumable, every attempt
  in the spend ledger), and the rows not routed are carried through marked `routed=False`. The stage's
  `version()` is the asset's `code_version`, so Dagster marks partitions made by an older spec unsynced; its
  `prompt_version()` is in every idempotency key, so outputs of two versions never mix; each materialization's
  data version is a digest of its answers, so a chunk re-made with other answers marks the same chunk's later
  stages unsynced (and one re-made with the same answers does not);
- the sensor `<pipeline>__refresh_stale`, off by default: when on, it re-runs unsynced stage partitions;
- one LLM resource per stage (`<pipeline>__<stage>__llm`) from its provider profile and the pipeline budgets;
- the job `<pipeline>__chunk_job` that materializes a chunk through every stage;
- the job `<pipeline>__estimate_job` that estimates a registered dataset's cost and time (llm_assets/estimate.py).

- the stages' quality gates (llm_assets/pipeline_checks.py), run in the chunk job;
- per dataset (partitions `<pipeline>__datasets`): `<pipeline>/cost_ledger` and `<pipeline>/completion_report`,
  materialized by `<pipeline>__completion_job` once every chunk is terminal (the completion sensor asks).
"""

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from io_managers.chunk_parquet import ChunkParquetIOManager
from io_managers.parquet_files import is_s3_uri
from io_managers.s3_config import S3_ENDPOINT_ENV, S3_ON_ENV
from llm_assets.chunk_status import PROVIDER_TAG
from llm_assets.completion import completion_asset
from llm_assets.cost_ledger import cost_ledger_asset
from llm_assets.datasets import DatasetSpec, RegisteredDataset, load_dataset, load_team_rules, read_chunk
from llm_assets.layout import PipelineLayout
from llm_assets.materializations import (
    STAGE_METADATA_KEYS,
    TOTAL_COST_DESCRIPTION,
    chunk_total_cost,
    dead_letters_metadata,
)
from llm_assets.partitions import parse_chunk_key
from llm_assets.prompts import StagePrompt
from llm_assets.run_liveness import mark_run_worker
from llm_assets.settings import PipelineSettings, payloads_uri_for
from llm_assets.spec import PipelineSpec, StageSpec
from llm_assets.spec_template import render
from llm_assets.stages import KEY_COLUMNS, USAGE_COLUMNS, BatchWait, StageOutcome, run_batch_stage, run_stage
from llm_assets.validation import validate_chunk
from resources.dead_letters import DeadLetter, DeadLetterStore
from resources.llm import LLMResource
from resources.llm.errors import JobFatalError
from resources.llm.tokens import count_tokens

ROUTED = "routed"
PIPELINE_TAG = "chunkwise/pipeline"


@dataclass(frozen=True)
class SpecStagePrompt(StagePrompt):
    """A stage prompt whose version is the spec's `prompt_version()` (it covers a custom user template)."""

    spec_version: str = ""

    @property
    def version(self) -> str:  # type: ignore[override]
        return self.spec_version


def chunks_partitions_name(spec: PipelineSpec) -> str:
    return f"{spec.name}__chunks"


def asset_key(spec: PipelineSpec, name: str) -> dg.AssetKey:
    """`<pipeline>/<name>`: `items` or a stage name."""
    return dg.AssetKey([spec.name, name])


def llm_resource_key(spec: PipelineSpec, stage: StageSpec) -> str:
    return f"{spec.name}__{stage.name}__llm"


def chunk_job_name(spec: PipelineSpec) -> str:
    return f"{spec.name}__chunk_job"


def completion_job_name(spec: PipelineSpec) -> str:
    return f"{spec.name}__completion_job"


def datasets_partitions_name(spec: PipelineSpec) -> str:
    return f"{spec.name}__datasets"


def spec_layout(spec: PipelineSpec) -> PipelineLayout:
    """Where the pipeline's pieces are (stages, keys, partitions, jobs, LLM resources), for chunk states, the
    completion report and the sensors."""
    providers = {spec.profile(stage).provider: None for stage in spec.stages}
    return PipelineLayout(
        name=spec.name,
        stages=tuple(s.name for s in spec.stages),
        label_field=_gold_field(spec),
        chunks_partitions=chunks_partitions_name(spec),
        datasets_partitions=datasets_partitions_name(spec),
        chunk_job=chunk_job_name(spec),
        completion_job=completion_job_name(spec),
        llm_keys=tuple(llm_resource_key(spec, stage) for stage in spec.stages),
        providers=tuple(providers),
        check_specs=tuple(_gate_specs(spec)),
        alert_webhook_env=spec.notifications.alert_webhook_env,
        completion_webhook_env=spec.notifications.completion_webhook_env,
        backfill=tuple(spec.backfill.model_dump().items()),
    )


def _gate_specs(spec: PipelineSpec) -> list[dg.AssetCheckSpec]:
    from llm_assets.pipeline_checks import gate_specs  # it builds on this module's helpers

    return gate_specs(spec, dg.DynamicPartitionsDefinition(name=chunks_partitions_name(spec)))


def _gold_field(spec: PipelineSpec) -> str | None:
    """The first stage's field scored against the gold column (its sampled_quality gate), if it has one."""
    first = spec.stages[0]
    quality = first.gates.sampled_quality if first.gates else None
    return quality.field if quality is not None and quality.gold_column else None


def stage_prompt(stage: StageSpec) -> SpecStagePrompt:
    """What is sent for this stage: the filled system prompt and the resolved schema."""
    return SpecStagePrompt(
        stage=stage.name,
        system_prompt=stage.filled_system_prompt(),
        schema=stage.resolved_schema(),
        schema_name=stage.effective_schema_name(),
        spec_version=stage.prompt_version(),
    )


def dataset_spec(spec: PipelineSpec, uri: str, chunk_size: int | None = None) -> DatasetSpec:
    """How this pipeline reads a dataset file: its column mapping, ids, team rule, chunk size."""
    columns = spec.input.columns
    column_map: dict[str, str] = {}
    if columns.team:
        column_map[columns.team] = "team"
    if columns.label:
        column_map[columns.label] = "label"
    text_columns: tuple[str, ...] = ()
    if len(columns.text) == 1:
        if columns.text[0] != "text":
            column_map[columns.text[0]] = "text"
    else:
        text_columns = tuple(columns.text)
    stem = Path(uri).stem if not uri.startswith("s3://") else uri.rstrip("/").rsplit("/", 1)[-1].split(".")[0]
    return DatasetSpec(
        uri=uri,
        name=f"{spec.name.replace('_', '-')}-{stem}",
        chunk_size=chunk_size or spec.input.chunk_size,
        column_map=column_map,
        id_column=columns.id,
        team_from_label=load_team_rules(Path(spec.input.team_from_label))
        if spec.input.team_from_label and not columns.team
        else None,
        text_columns=text_columns,
        text_separator=columns.text_separator,
        pipeline=spec.name,
    )


def register(
    spec: PipelineSpec,
    uri: str,
    instance: dg.DagsterInstance,
    home: Path,
    s3: Any = None,
    chunk_size: int | None = None,
) -> RegisteredDataset:
    """Register `uri` as a dataset of this pipeline: its chunks become `<pipeline>__chunks` partitions."""
    from llm_assets.datasets import register_dataset

    return register_dataset(
        dataset_spec(spec, uri, chunk_size),
        instance,
        home,
        s3=s3,
        partitions_name=chunks_partitions_name(spec),
    )


def build_llm_resource(spec: PipelineSpec, stage: StageSpec, home: Path) -> LLMResource:
    """The stage's LLM resource: its provider profile, model and output cap, and the pipeline's budgets."""
    profile = spec.profile(stage)
    budgets = spec.budgets
    price_file = profile.price_file
    if profile.prices:
        price_file = str(_write_price_rows(spec, stage.provider, profile, home))
    return LLMResource(
        provider=profile.provider,
        dialect=profile.dialect,
        base_url=profile.base_url,
        api_key=dg.EnvVar(profile.api_key_env),
        model=stage.model,
        max_output_tokens=stage.effective_max_output_tokens(),
        timeout_s=profile.timeout_s,
        min_timeout_s=profile.min_timeout_s,
        max_timeouts_per_item=profile.max_timeouts_per_item,
        max_concurrency=profile.max_concurrency,
        server_slots=profile.server_slots,
        context_tokens=profile.context_tokens,
        max_attempts=profile.max_attempts,
        structured_output=profile.structured_output,
        requests_per_minute=profile.requests_per_minute,
        tokens_per_minute=profile.tokens_per_minute,
        input_tokens_per_minute=profile.input_tokens_per_minute,
        output_tokens_per_minute=profile.output_tokens_per_minute,
        rate_limit_burst_s=profile.rate_limit_burst_s,
        circuit_breaker_failures=profile.circuit_breaker_failures,
        circuit_breaker_rate_limited_s=profile.circuit_breaker_rate_limited_s,
        budget_run_usd=budgets.run_usd,
        budget_dataset_usd=budgets.dataset_usd,
        budget_day_usd=budgets.day_usd,
        budget_run_tokens=budgets.run_tokens,
        budget_dataset_tokens=budgets.dataset_tokens,
        budget_day_tokens=budgets.day_tokens,
        price_table_path=price_file,
        allow_unpriced_model=profile.allow_unpriced,
    )


def _write_price_rows(spec: PipelineSpec, name: str, profile: Any, home: Path) -> Path:
    """A profile's inline price rows as a price file the LLM resource reads (rewritten only when they change)."""
    rows = [
        {
            **row.model_dump(exclude_none=True),
            "provider": row.provider or profile.provider,
        }
        for row in profile.prices
    ]
    if profile.price_file:
        base = json.loads(Path(profile.price_file).read_text())
        rows = [*base.get("models", []), *rows]
    path = home / "prices" / f"{spec.name}__{name}.json"
    text = json.dumps({"models": rows}, indent=2, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------ items

ITEMS_TABLE_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("item_id", "string", description="`input.columns.id`, or `r<row number>`"),
        dg.TableColumn(
            "text", "string", description="`input.columns.text` (joined), after the length policy"
        ),
        dg.TableColumn("team", "string", description="`input.columns.team`, or from `input.team_from_label`"),
        dg.TableColumn("gold_label", "string", description="`input.columns.label`, when the file has it"),
        dg.TableColumn("input_tokens", "int", description="estimated tokens of `text`"),
        dg.TableColumn("truncated", "bool"),
        dg.TableColumn("extra_json", "string", description="the passthrough columns, as JSON"),
    ]
)


def _items_asset(spec: PipelineSpec, partitions: dg.DynamicPartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key=asset_key(spec, "items"),
        partitions_def=partitions,
        group_name=spec.name,
        kinds={"pandas", "parquet"},
        owners=spec.owners or None,
        description=(
            f"The chunk's input rows of pipeline `{spec.name}`, validated: rows with no id, a repeated id or an "
            "empty text become dead letters (`invalid_input`); the length policy applies before any call."
        ),
        metadata={"dagster/column_schema": ITEMS_TABLE_SCHEMA},
    )
    def _items(
        context: dg.AssetExecutionContext, settings: PipelineSettings, s3: dg.ResourceParam[Any]
    ) -> dg.MaterializeResult:
        mark_run_worker(context)
        if not context.has_partition_key:
            raise dg.Failure(
                description="this run has no chunk partition: launch it for a chunk (pick its partition)",
                allow_retries=False,
            )
        dataset_id, chunk_index = parse_chunk_key(context.partition_key)
        dataset = load_dataset(dataset_id, settings.home_path())
        if is_s3_uri(dataset.uri) and s3 is None:  # a deployment setting: re-running cannot fix it
            raise JobFatalError(
                "config",
                f"dataset {dataset_id} is read from {dataset.uri}, but this code location has no S3 resource: set "
                f"{S3_ENDPOINT_ENV} (an S3-compatible server) or {S3_ON_ENV}=1 (AWS) where Dagster runs, then "
                "re-run the chunk",
            )
        raw = read_chunk(dataset, chunk_index, s3=s3)
        checked = validate_chunk(
            raw,
            chunk_index=chunk_index,
            max_input_tokens=spec.length_policy.max_input_tokens,
            length_policy=spec.length_policy.action,
            count_tokens=count_tokens,
            duplicate_rows=dataset.duplicate_rows,
        )
        metadata = {
            "items_total": dg.MetadataValue.int(len(raw)),
            "items_valid": dg.MetadataValue.int(len(checked.valid)),
            "items_invalid": dg.MetadataValue.int(len(checked.rejected)),
            "items_truncated": dg.MetadataValue.int(checked.truncated),
            "length_policy": dg.MetadataValue.text(
                f"{spec.length_policy.action} above {spec.length_policy.max_input_tokens} tokens"
            ),
            **write_dead_letters(
                context, settings, dataset_id, "items", items_dead_letters(context, dataset_id, checked), s3
            ),
        }
        return dg.MaterializeResult(
            value=checked.valid, metadata=metadata, data_version=rows_data_version(checked.valid)
        )

    return _items


def write_dead_letters(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    dataset_id: str,
    stage: str,
    rows: list[DeadLetter],
    s3: Any,
) -> dict[str, Any]:
    """Store the chunk's dead letters of `stage` (replacing an earlier run's) where `settings` says (the home, or
    the shared payloads on S3 through `s3`); as metadata their count and, when there are any, a preview table and
    the file (llm_assets/materializations.py `dead_letters_metadata`)."""
    store = DeadLetterStore(settings.dead_letters_uri(), s3=s3)
    uri = store.write_partition(dataset_id, context.partition_key, stage, rows)
    return dead_letters_metadata(rows, uri)


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


# ------------------------------------------------------------------------------------------------ stages


def input_values(spec: PipelineSpec, items: pd.DataFrame) -> pd.DataFrame:
    """One row per item (index item_id): input columns by role (`id`, `text`, `team`, `label`) and by their
    own names (passthrough and the mapped columns), as prompts and routes name them."""
    columns = spec.input.columns
    frame = pd.DataFrame(
        {
            "id": items["item_id"].astype(str).to_numpy(),
            "text": items["text"].to_numpy(),
            "team": items["team"].to_numpy() if "team" in items else None,
            "label": items["gold_label"].to_numpy() if "gold_label" in items else None,
        },
        index=items["item_id"].astype(str).to_numpy(),
    )
    for role, name in (("id", columns.id), ("team", columns.team), ("label", columns.label)):
        if name and name not in frame.columns:
            frame[name] = frame[role]
    if "extra_json" in items:
        extra = pd.DataFrame(
            [json.loads(v) if isinstance(v, str) and v else {} for v in items["extra_json"]],
            index=frame.index,
        )
        for name in extra.columns:
            if name not in frame.columns:
                frame[name] = extra[name]
    return frame


def stage_values(spec: PipelineSpec, items: pd.DataFrame, earlier: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """`input_values` plus every earlier stage's output fields as `stage.field` (empty where the stage did not
    process the item)."""
    frame = input_values(spec, items)
    for name, output in earlier.items():
        fields = spec.stage(name).output_fields()
        by_item = output.set_index(output["item_id"].astype(str))
        for field in fields:
            if field in by_item.columns:
                frame[f"{name}.{field}"] = by_item[field].reindex(frame.index)
            else:
                frame[f"{name}.{field}"] = None
    return frame


def _stage_asset(
    spec: PipelineSpec, index: int, partitions: dg.DynamicPartitionsDefinition
) -> dg.AssetsDefinition:
    stage = spec.stages[index]
    earlier = [s.name for s in spec.stages[:index]]
    previous = earlier[-1] if earlier else None
    llm_key = llm_resource_key(spec, stage)
    ins = {"items": dg.AssetIn(key=asset_key(spec, "items"))}
    ins.update({name: dg.AssetIn(key=asset_key(spec, name)) for name in earlier})
    prompt = stage_prompt(stage)
    route = stage.route_condition()
    last = index == len(spec.stages) - 1
    description = stage.description or f"Stage `{stage.name}` of pipeline `{spec.name}` ({stage.model})."
    description += f"\n\n{STAGE_METADATA_KEYS}" + (f" {TOTAL_COST_DESCRIPTION}" if last else "")

    @dg.asset(
        key=asset_key(spec, stage.name),
        ins=ins,
        partitions_def=partitions,
        group_name=spec.name,
        kinds={spec.profile(stage).provider, "pandas", "parquet"},
        owners=spec.owners or None,
        description=description,
        code_version=stage.version(),
        automation_condition=refresh_stale_condition(),  # inert until `<pipeline>__refresh_stale` is turned on
        retry_policy=spec.retry.retry_policy(),
        required_resource_keys={llm_key, "settings", "s3"},
        output_required=False,  # batch mode: a run that only submits a provider batch materializes nothing
        metadata={
            "model": stage.model,
            "route": stage.route,
            "prompt_version": stage.prompt_version(),
            "dagster/column_schema": stage_table_schema(stage),
        },
    )
    def _stage(context: dg.AssetExecutionContext, **inputs: pd.DataFrame) -> Iterator[Any]:
        mark_run_worker(context)
        settings: PipelineSettings = context.resources.settings
        llm: LLMResource = getattr(context.resources, llm_key)
        dataset_id, _ = parse_chunk_key(context.partition_key)
        items = inputs["items"]
        reached = items if previous is None else _reached(items, inputs[previous])
        values = stage_values(spec, reached, {name: inputs[name] for name in earlier})
        chosen = route.evaluate(values) if len(values) else pd.Series(dtype=bool)
        routed_ids = set(values.index[chosen.to_numpy(dtype=bool)]) if len(values) else set()
        to_send = reached[reached["item_id"].astype(str).isin(routed_ids)].copy()
        if len(to_send):
            rows = values.to_dict("index")  # once, not a `.loc` lookup per item (2% of a run's CPU)
            to_send["text"] = [
                render(stage.user_template, rows[str(item_id)]) for item_id in to_send["item_id"]
            ]
        common = {
            "llm": llm,
            "prompt": prompt,
            "items": to_send,
            "dataset_id": dataset_id,
            "home": settings.home_path(),
            "checkpoint_every": settings.checkpoint_every,
        }
        outcome: StageOutcome | BatchWait
        if stage.mode == "batch":
            outcome = run_batch_stage(context, **common)
        else:
            outcome = run_stage(
                context,
                checkpointing=settings.checkpointing,
                normalize=dict(stage.normalize) or None,
                **common,
            )
        if isinstance(outcome, BatchWait):
            context.log.info(outcome.message())
            yield dg.AssetObservation(
                asset_key=context.asset_key, partition=context.partition_key, metadata=outcome.metadata()
            )
            return
        frame = _carry_through(stage, dataset_id, reached, outcome.rows, routed_ids)
        metadata = {
            **outcome.metadata,
            **write_dead_letters(
                context, settings, dataset_id, stage.name, outcome.dead_letters, context.resources.s3
            ),
            "items_routed": dg.MetadataValue.int(len(to_send)),
            "route": dg.MetadataValue.text(stage.route),
        }
        if last:  # one series per chunk partition: its spend over every stage
            earlier_keys = [asset_key(spec, name) for name in earlier]
            metadata.update(
                chunk_total_cost(context.instance, earlier_keys, context.partition_key, outcome.cost_usd)
            )
        yield dg.MaterializeResult(
            value=frame, metadata=metadata, data_version=rows_data_version(frame, answer_columns(stage))
        )

    return _stage


_JSON_TYPES = {"string": "string", "number": "float", "integer": "int", "boolean": "bool"}
_KEY_DESCRIPTIONS = {
    "idempotency_key": "dataset|item|stage|prompt version|model",
    "team": "the team billed for this item",
    "prompt_version": "empty on rows not routed to the stage",
}
_USAGE_DESCRIPTIONS = {
    "cost_usd": "USD, every attempt of this item at this stage",
    "cache_savings_usd": "USD saved by prompt caching",
}


def stage_table_schema(stage: StageSpec) -> dg.TableSchema:
    """The stage table's columns for the UI: keys, `routed`, the output schema's top-level fields (arrays and
    objects as JSON text), the gold label when the input has one, and the usage columns."""
    properties = stage.resolved_schema().get("properties", {})
    fields = []
    for name in stage.output_fields():
        kind = properties.get(name, {}).get("type")
        kind = kind[0] if isinstance(kind, list) and kind else kind
        column_type = _JSON_TYPES.get(kind, "json") if isinstance(kind, str) else "json"
        fields.append(
            dg.TableColumn(name, column_type, description=properties.get(name, {}).get("description"))
        )
    return dg.TableSchema(
        columns=[
            *[dg.TableColumn(c, "string", description=_KEY_DESCRIPTIONS.get(c)) for c in KEY_COLUMNS],
            dg.TableColumn(ROUTED, "bool", description=f"False: not selected by the route `{stage.route}`"),
            *fields,
            dg.TableColumn("gold_label", "string", description="the input's gold label, when it has one"),
            *[
                dg.TableColumn(
                    c,
                    "float" if c.endswith(("_usd", "_s")) else "int",
                    description=_USAGE_DESCRIPTIONS.get(c),
                )
                for c in USAGE_COLUMNS
            ],
        ]
    )


def _reached(items: pd.DataFrame, previous_output: pd.DataFrame) -> pd.DataFrame:
    """The items the previous stage kept (processed or carried through), in input order."""
    kept = set(previous_output["item_id"].astype(str))
    return items[items["item_id"].astype(str).isin(kept)]


def _carry_through(
    stage: StageSpec, dataset_id: str, reached: pd.DataFrame, rows: pd.DataFrame, routed_ids: set[str]
) -> pd.DataFrame:
    """One row per item that reached the stage, minus the routed ones it dead-lettered: routed rows with the
    model's fields, the others marked `routed=False` with empty fields and zero usage."""
    fields = stage.output_fields()
    done = rows.assign(**{ROUTED: True})
    for field in fields:  # arrays and objects as JSON text: one Parquet type per column whatever the reply
        if field in done.columns:
            done[field] = done[field].map(_as_cell)
    not_routed = reached[~reached["item_id"].astype(str).isin(routed_ids)]
    passthrough = pd.DataFrame(
        {
            "idempotency_key": [f"{stage.name}|{i}|not-routed" for i in not_routed["item_id"].astype(str)],
            "dataset_id": dataset_id,
            "item_id": not_routed["item_id"].astype(str).to_numpy(),
            "stage": stage.name,
            "prompt_version": "",
            "model": "",
            "team": not_routed["team"].to_numpy() if "team" in not_routed else None,
            ROUTED: False,
            **{field: None for field in fields},
            **{column: 0 for column in USAGE_COLUMNS},
        }
    )
    frame = (
        pd.concat([f for f in (done, passthrough) if len(f)], ignore_index=True)
        if len(done) or len(passthrough)
        else done
    )
    if "gold_label" in reached.columns:  # the input's gold answer beside the model's, for accuracy downstream
        gold = reached.set_index(reached["item_id"].astype(str))["gold_label"]
        frame["gold_label"] = frame["item_id"].astype(str).map(gold)
    return frame.reset_index(drop=True)


def _as_cell(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=isinstance(value, dict))
    return value


# ------------------------------------------------------------------------------------------------ staleness
# A chunk's stage partition is stale (the UI's "Unsynced" on the partition) when the stage's code version
# (`StageSpec.version`) changed since it was made, or when an input partition of the same chunk got a different
# data version after it read it. Data versions are digests of the rows, so re-making a partition with the same
# rows leaves later stages fresh (docs/partitions.md, "Staleness").


def rows_data_version(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> dg.DataVersion:
    """A chunk output's data version: a digest of its rows (`columns` of them, default all), in item order."""
    chosen = sorted(c for c in (columns if columns is not None else frame.columns) if c in frame.columns)
    rows = frame[chosen]
    if "item_id" in chosen:  # the order replies arrived in is not part of the data
        rows = rows.assign(item_id=rows["item_id"].astype(str)).sort_values("item_id", kind="stable")
    text = rows.to_json(orient="split", index=False, double_precision=15)
    return dg.DataVersion(hashlib.sha256(text.encode()).hexdigest()[:16])


def answer_columns(stage: StageSpec) -> list[str]:
    """What a later stage reads of this one: which items it kept, whether each was routed, and its answers.
    Not usage, latency or the prompt version: a re-run with the same answers changes nothing downstream."""
    return ["item_id", ROUTED, *stage.output_fields()]


def refresh_stale_condition() -> dg.AutomationCondition:
    """Re-run a stage's chunk partition that went stale: its stage's code version changed, or an input partition of
    the chunk (items or an earlier stage) got a new data version from a run that did not also run this stage.
    Never a missing partition (the sensors start chunks), never while the chunk or one of its inputs is running or
    an input is missing. Evaluated only while the pipeline's `<pipeline>__refresh_stale` sensor is on."""
    input_changed = (
        dg.AutomationCondition.data_version_changed() & ~dg.AutomationCondition.executed_with_root_target()
    ).with_label("new data version from another run")
    return (
        (
            dg.AutomationCondition.code_version_changed()
            | dg.AutomationCondition.any_deps_match(input_changed)
        ).since_last_handled()
        & ~dg.AutomationCondition.missing()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("refresh_stale")


def refresh_stale_sensor_name(spec: PipelineSpec) -> str:
    return f"{spec.name}__refresh_stale"


def refresh_stale_sensor(spec: PipelineSpec) -> dg.AutomationConditionSensorDefinition:
    """The switch for `refresh_stale_condition` on the pipeline's stages: off by default, because every re-run
    calls the model again and costs money. One run per chunk, tagged like a chunk run (pipeline, provider)."""
    from sensors.chunk_runs import LAUNCHED_BY_TAG, layout_providers  # the one way chunk runs are tagged

    return dg.AutomationConditionSensorDefinition(
        refresh_stale_sensor_name(spec),
        target=dg.AssetSelection.assets(*[asset_key(spec, stage.name) for stage in spec.stages]),
        default_status=dg.DefaultSensorStatus.STOPPED,
        emit_backfills=False,  # one run per chunk partition, queued under the per-provider limits
        run_tags={
            PIPELINE_TAG: spec.name,
            PROVIDER_TAG: layout_providers(spec_layout(spec))[0],
            LAUNCHED_BY_TAG: "refresh_stale",
        },
        description=(
            f"Off by default. When on, re-runs each `{spec.name}` stage partition that went stale (the UI's "
            "Unsynced): after its prompt, model or other code version changed, or after an earlier stage's "
            "partition of the same chunk was re-made with different answers. Every re-run calls the model again "
            "and is paid; the pipeline's budgets still apply. Chunks never run are left to the other sensors."
        ),
    )


# ------------------------------------------------------------------------------------------------ wiring


def pipeline_definitions(
    spec: PipelineSpec, *, home: Path, outputs_uri: str | None = None, s3: Any = None
) -> dg.Definitions:
    """The pipeline's assets and quality gates (llm_assets/pipeline_checks.py), per-stage LLM and judge
    resources, IO manager and chunk job (local outputs unless `s3`)."""
    partitions = dg.DynamicPartitionsDefinition(name=chunks_partitions_name(spec))
    assets = [_items_asset(spec, partitions)] + [
        _stage_asset(spec, i, partitions) for i in range(len(spec.stages))
    ]
    from llm_assets.pipeline_checks import pipeline_checks  # it builds on this module's helpers

    checks, check_resources = pipeline_checks(spec, partitions, home=home)
    outputs = outputs_uri or str(home / "outputs")
    keys = [a.key for a in assets]
    job = dg.define_asset_job(
        chunk_job_name(spec),
        selection=dg.AssetSelection.assets(*keys) | dg.AssetSelection.checks_for_assets(*keys),
        partitions_def=partitions,
        tags={PIPELINE_TAG: spec.name},
        # One process per run, not per step: a chunk's steps run one after another anyway, and parallelism
        # comes from many chunk runs at once (the run queue); bench/pipeline_overhead.py measured 11 s of fixed
        # cost per run with a process per step against 1 s in process.
        executor_def=dg.in_process_executor,
        description=f"One chunk of `{spec.name}` through items -> {' -> '.join(s.name for s in spec.stages)}, "
        "with their quality gates. The sensors launch it, one run per chunk partition.",
    )
    layout = spec_layout(spec)
    datasets = dg.DynamicPartitionsDefinition(name=datasets_partitions_name(spec))
    owners = spec.owners or None
    report_assets = [
        cost_ledger_asset(layout, datasets, group_name=spec.name, owners=owners),
        completion_asset(
            layout,
            datasets,
            group_name=spec.name,
            owners=owners,
            min_success_rate=spec.completion.min_success_rate,
        ),
    ]
    completion_job = dg.define_asset_job(
        completion_job_name(spec),
        selection=dg.AssetSelection.assets(layout.ledger_key, layout.completion_key),
        partitions_def=datasets,
        tags={PIPELINE_TAG: spec.name},
        description=f"A finished `{spec.name}` dataset's cost ledger and completion report (partition = "
        "dataset id). The completion sensor requests it once per dataset.",
    )
    resources: dict[str, Any] = {
        "settings": PipelineSettings(home=str(home), payloads_uri=payloads_uri_for(outputs)),
        "io_manager": ChunkParquetIOManager(base_uri=outputs, s3=s3),
        "s3": s3 if s3 is not None else dg.ResourceDefinition.none_resource("no S3: local files only"),
        **{llm_resource_key(spec, stage): build_llm_resource(spec, stage, home) for stage in spec.stages},
        **check_resources,
    }
    from llm_assets.estimate import build_estimate_job  # it builds on this module's helpers

    return dg.Definitions(
        assets=[*assets, *report_assets],
        asset_checks=checks,
        jobs=[job, completion_job, build_estimate_job(spec)],
        sensors=[refresh_stale_sensor(spec)],
        resources=resources,
    )
