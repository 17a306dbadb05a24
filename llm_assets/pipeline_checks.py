"""Quality gates of a spec pipeline: the asset checks on every chunk of each `<pipeline>/<stage>` (issue 12).

`pipeline_checks(spec, partitions)` turns each stage's `gates` (llm_assets/spec.py `GatesSpec`) into one
`multi_asset_check` step per stage: the stage's output is loaded once per step, and the step can subset (one gate
can be run alone for a chunk). What each gate decides is computed by the same functions as the BANKING77 gates
(`*_outcome` in llm_assets/checks.py); this module only reads a spec stage's chunk for them.

| gate            | over                         | fails when                                                      |
| --------------- | ---------------------------- | --------------------------------------------------------------- |
| outputs_valid   | routed rows                  | a row's fields break `stage.resolved_schema()`                  |
| success_rate    | items routed to the stage    | rows produced / items routed < `min`                            |
| sampled_quality | a seeded sample of routed    | Wilson lower bound of accuracy (gold column, else judge) < min  |
| label_drift     | routed rows' `field`         | permutation chi-square vs recent chunks of the dataset, p < max |
| cost_per_item   | routed rows                  | USD per routed item > `max_usd`, or top 10% take too many tokens|

A gate of severity ERROR is blocking: when it fails, the chunk's later stages are not materialized in that run
and the run is tagged `chunkwise/failure_class=quality_gate` (`<pipeline>/<stage>:<check>` in
`chunkwise/failed_gates`), so the backfill sensor never re-runs it. A judge's calls go through their own LLM
resource (`<pipeline>__<stage>__judge_llm`, returned with the checks) under the pipeline's budgets, and land in
the spend ledger with stage `judge`.

A run of the checks with nothing to check (no chunk partition: what the UI's "Execute all" launches; or a chunk
whose stage was never materialized) evaluates nothing, logs why and succeeds: Dagster records the checks as
skipped, so no chunk's last result is covered by "Execution failed" (`skip_checks`, docs/quality_gates.md).
"""

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from llm_assets.checks import (
    GateOutcome,
    as_python,
    check_result,
    cost_per_item_outcome,
    evaluate_selected,
    key_errors,
    label_drift_outcome,
    outputs_valid_outcome,
    recent_label_counts,
    sampled_quality_outcome,
    schema_row_errors,
    success_rate_outcome,
    tokens_by_item,
)
from llm_assets.judge import JUDGE_STAGE, judge_items
from llm_assets.materializations import latest_materialization, load_stage_output
from llm_assets.partitions import parse_chunk_key
from llm_assets.pipeline_assets import ROUTED, SpecStagePrompt, asset_key, build_llm_resource, stage_values
from llm_assets.quality_stats import sample_item_ids
from llm_assets.settings import PipelineSettings, chunkwise_home
from llm_assets.spec import PipelineSpec, Severity, StageSpec
from llm_assets.spec_template import render
from resources.dead_letters import DeadLetterStore
from resources.llm import LLMResource

OUTPUTS_VALID = "outputs_valid"
SUCCESS_RATE = "success_rate"
SAMPLED_QUALITY = "sampled_quality"
LABEL_DRIFT = "label_drift"
COST_PER_ITEM = "cost_per_item"


def judge_resource_key(spec: PipelineSpec, stage: StageSpec) -> str:
    return f"{spec.name}__{stage.name}__judge_llm"


def checks_step_name(spec: PipelineSpec, stage: StageSpec) -> str:
    return f"{spec.name}__{stage.name}_checks"


def pipeline_checks(
    spec: PipelineSpec, partitions: dg.DynamicPartitionsDefinition, *, home: Path | None = None
) -> tuple[list[dg.AssetChecksDefinition], dict[str, Any]]:
    """The quality gates of every stage of `spec` (one check step per stage that has any), partitioned like
    its assets by `partitions`, and the extra resources they need: a judge LLM resource per stage whose
    sampled_quality has a judge, keyed `judge_resource_key(spec, stage)`.

    The steps also need the resources `pipeline_definitions` provides: `settings` (the dead letters' home) and
    `s3` (None for local outputs). `home` is where a judge profile's inline price rows are written (the same
    file the stages' resources use); default `$CHUNKWISE_HOME`."""
    checks: list[dg.AssetChecksDefinition] = []
    resources: dict[str, Any] = {}
    for stage in spec.stages:
        step = _stage_checks(spec, stage, partitions)
        if step is None:
            continue
        checks.append(step)
        quality = stage.gates.sampled_quality
        if quality is not None and quality.judge is not None:
            resources[judge_resource_key(spec, stage)] = judge_llm_resource(
                spec, stage, home or chunkwise_home()
            )
    return checks, resources


def judge_llm_resource(spec: PipelineSpec, stage: StageSpec, home: Path) -> LLMResource:
    """The judge's LLM resource: its provider profile, model and output cap, and the pipeline's budgets."""
    judge = stage.gates.sampled_quality.judge if stage.gates.sampled_quality else None
    if judge is None:
        raise ValueError(f"stage {stage.name!r} of pipeline {spec.name!r} has no sampled_quality judge")
    profile = spec.providers[judge.provider]
    # The judge as a stage of its own profile and model: one way to build an LLM resource from a spec.
    as_stage = stage.model_copy(
        update={
            "provider": judge.provider,
            "model": judge.model,
            "max_output_tokens": profile.max_output_tokens,
        }
    )
    return build_llm_resource(spec, as_stage, home)


def judge_prompt(stage: StageSpec) -> SpecStagePrompt:
    """The judge's system prompt (the filled rubric) and schema (the scored field under its answer name), as
    the loader resolved them. Its version also covers the user template: a changed template is a new question,
    never answered from an old verdict."""
    quality = stage.gates.sampled_quality
    resolved = stage.resolved
    if quality is None or quality.judge is None or resolved.judge_system_prompt is None:
        raise ValueError(f"stage {stage.name!r} has no judge; load its spec with load_pipeline")
    if resolved.judge_schema is None:
        raise ValueError(f"stage {stage.name!r}: the judge's field {quality.field!r} is not an output field")
    body = json.dumps(
        [resolved.judge_system_prompt, resolved.judge_schema, quality.judge.user_template], sort_keys=True
    )
    return SpecStagePrompt(
        stage=JUDGE_STAGE,
        system_prompt=resolved.judge_system_prompt,
        schema=resolved.judge_schema,
        schema_name=f"{stage.name}_judgement"[:64],
        spec_version=f"{JUDGE_STAGE}-{hashlib.sha256(body.encode()).hexdigest()[:10]}",
    )


def skip_checks(context: dg.AssetCheckExecutionContext, why: str) -> None:
    """Log, as a warning, that the run's selected checks were not evaluated because `why`, and what to do; the
    caller then yields no result.

    A check step that yields nothing succeeds, and Dagster resolves its planned evaluations to SKIPPED ("the run
    finished, didn't fail, but the check didn't execute"): each chunk's latest result, the asset's check statuses
    per partition and its health stay as they were. Failing the step instead would resolve them to
    EXECUTION_FAILED, shown as "Execution failed" on every check of the asset (issue 13)."""
    checks = ", ".join(sorted(key.to_user_string() for key in context.selected_asset_check_keys))
    context.log.warning(
        f"Nothing checked: {why}. The quality gates ({checks}) are recorded as skipped; every chunk keeps its last "
        "result. To check a chunk, materialize it (in the UI: Materialize on the asset, then pick the chunk's "
        "partition): its gates run with it."
    )


# ------------------------------------------------------------------------------------------------ wiring


def _severity(severity: Severity) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity(severity)


def _check_specs(
    spec: PipelineSpec, stage: StageSpec, partitions: dg.DynamicPartitionsDefinition
) -> list[dg.AssetCheckSpec]:
    gates = stage.gates
    key = asset_key(spec, stage.name)
    specs: list[dg.AssetCheckSpec] = []

    def add(name: str, severity: Severity, description: str, **kwargs: Any) -> None:
        blocking = severity == "ERROR"
        effect = "blocks the chunk's later stages" if blocking else "warns, never blocks"
        with warnings.catch_warnings():  # partitioned checks are a preview feature, relied on knowingly
            warnings.filterwarnings("ignore", category=dg.PreviewWarning)
            specs.append(
                dg.AssetCheckSpec(
                    name,
                    asset=key,
                    blocking=blocking,
                    description=f"{description} Severity {severity}: a failure {effect}.",
                    partitions_def=partitions,
                    **kwargs,
                )
            )

    if gates.outputs_valid.enabled:
        add(
            OUTPUTS_VALID,
            gates.outputs_valid.severity,
            f"Every row `{stage.name}` produced for a routed item validates against the stage's output schema "
            "(taxonomy included; arrays and objects read back from their JSON text); keys are present and "
            "unique. Rows not routed to the stage are skipped. Metadata lists the offending items.",
        )
    if gates.success_rate.enabled:
        add(
            SUCCESS_RATE,
            gates.success_rate.severity,
            f"Rows `{stage.name}` produced / items routed to it is at least {gates.success_rate.min:.0%}. Items "
            "dead-lettered at this stage count as failed; invalid inputs never reach a stage and are reported "
            "apart. Metadata says how many failed and why, and where their dead letters are.",
        )
    quality = gates.sampled_quality
    if quality is not None:
        scorer = f"the input's gold `{quality.gold_column}`" if quality.gold_column else "no gold column"
        if quality.judge is not None:
            scorer += f", else the judge `{quality.judge.model}`"
        add(
            SAMPLED_QUALITY,
            quality.severity,
            f"A sample of up to {quality.sample_size} routed items (seeded by the partition key, so a re-run "
            f"scores the same items) has its `{quality.field}` scored against {scorer}. Passes when the "
            f"{quality.confidence:.0%} Wilson lower bound of the sample accuracy reaches "
            f"{quality.min_accuracy:.2f}. The judge's cost is `cost_usd` (spend ledger stage `judge`).",
            additional_deps=[asset_key(spec, "items")],
        )
    drift = gates.label_drift
    if drift is not None:
        add(
            LABEL_DRIFT,
            drift.severity,
            f"The chunk's mix of `{drift.field}` against the pooled mix of the dataset's "
            f"{drift.reference_chunks} most recently checked chunks: permutation test of the chi-square "
            f"statistic, fails when p < {drift.max_p_value:g} (passes below {drift.min_reference_items} "
            "reference items: no baseline yet). PSI is reported too.",
        )
    if gates.cost_per_item.enabled:
        cost = gates.cost_per_item
        ceiling = f"${cost.max_usd:g}" if cost.max_usd is not None else "no ceiling"
        add(
            COST_PER_ITEM,
            cost.severity,
            f"USD per item routed to `{stage.name}` against {ceiling}, and the share of the chunk's tokens "
            f"taken by its largest 10% of items against {cost.max_top_decile_token_share:.0%}: the listed "
            "items are the inputs to filter or truncate (see `length_policy`).",
        )
    return specs


def gate_specs(spec: PipelineSpec, partitions: dg.DynamicPartitionsDefinition) -> list[dg.AssetCheckSpec]:
    """Every stage's quality gates, in stage order."""
    return [check for stage in spec.stages for check in _check_specs(spec, stage, partitions)]


def _stage_checks(
    spec: PipelineSpec, stage: StageSpec, partitions: dg.DynamicPartitionsDefinition
) -> dg.AssetChecksDefinition | None:
    specs = _check_specs(spec, stage, partitions)
    if not specs:
        return None
    key = asset_key(spec, stage.name)
    quality = stage.gates.sampled_quality
    resource_keys = {"settings", "s3"}
    if quality is not None and quality.judge is not None:
        resource_keys.add(judge_resource_key(spec, stage))

    @dg.multi_asset_check(
        name=checks_step_name(spec, stage),
        specs=specs,
        can_subset=True,
        required_resource_keys=resource_keys,
        description=f"The quality gates of `{key.to_user_string()}` for one chunk (see each check's description).",
    )
    def _checks(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        chunk = _StageChunk.load(context, spec, stage)
        if chunk is None:  # nothing to check, logged: no result, so the checks are skipped, not failed
            return
        evaluators: dict[str, Callable[[], dg.AssetCheckResult]] = {
            OUTPUTS_VALID: lambda: _outputs_valid(context, chunk),
            SUCCESS_RATE: lambda: _success_rate(context, chunk),
            SAMPLED_QUALITY: lambda: _sampled_quality(context, chunk),
            LABEL_DRIFT: lambda: _label_drift(context, chunk),
            COST_PER_ITEM: lambda: _cost_per_item(context, chunk),
        }
        yield from evaluate_selected(context, key, evaluators)

    return _checks


# ------------------------------------------------------------------------------------------------ the chunk


@dataclass(frozen=True)
class _StageChunk:
    """One chunk of one stage as its checks read it: the stage output (loaded once) and what was recorded."""

    spec: PipelineSpec
    stage: StageSpec
    asset: dg.AssetKey
    partition: str
    dataset_id: str
    output: pd.DataFrame
    """Every row of the items that reached the stage: routed ones with the model's fields, the others marked."""
    recorded: dict[str, Any]
    """The metadata of the stage's latest materialization of this chunk (items_routed, cost_usd, ...)."""

    @classmethod
    def load(
        cls, context: dg.AssetCheckExecutionContext, spec: PipelineSpec, stage: StageSpec
    ) -> "_StageChunk | None":
        """The chunk the run checks, or None when there is nothing to check (`skip_checks` logged why): the run
        has no chunk partition, or the chunk's stage was never materialized."""
        key = asset_key(spec, stage.name)
        if not context.has_partition_key:
            skip_checks(
                context,
                "this run has no chunk partition, and the gates check one chunk at a time (the Checks tab's "
                '"Execute all" launches such a run)',
            )
            return None
        partition = context.partition_key
        dataset_id, _ = parse_chunk_key(partition)
        recorded = latest_materialization(context.instance, key, partition)
        if recorded is None:
            skip_checks(context, f"{key.to_user_string()} was never materialized for chunk {partition}")
            return None
        output = load_stage_output(context.instance, key, partition, s3=context.resources.s3)
        return cls(spec, stage, key, partition, dataset_id, output, recorded.metadata)

    @property
    def routed(self) -> pd.DataFrame:
        if ROUTED not in self.output.columns:
            return self.output
        return self.output[self.output[ROUTED].fillna(False).astype(bool)]

    def result(
        self, context: dg.AssetCheckExecutionContext, check: str, outcome: GateOutcome, severity: Severity
    ) -> dg.AssetCheckResult:
        return check_result(
            context, self.asset, check, outcome, severity=_severity(severity), blocking=severity == "ERROR"
        )


def _dead_letters(
    context: dg.AssetCheckExecutionContext, chunk: _StageChunk
) -> tuple[DeadLetterStore, pd.DataFrame]:
    settings: PipelineSettings = context.resources.settings
    store = DeadLetterStore(settings.dead_letters_uri(), s3=context.resources.s3)
    return store, store.query(chunk.dataset_id, chunk.partition)


# ------------------------------------------------------------------------------------------------ the gates


def _with(outcome: GateOutcome, **metadata: Any) -> GateOutcome:
    """`outcome` with more metadata (what only a spec stage knows, e.g. how many rows were not routed)."""
    return replace(outcome, metadata={**outcome.metadata, **metadata})


def _outputs_valid(context: dg.AssetCheckExecutionContext, chunk: _StageChunk) -> dg.AssetCheckResult:
    routed = chunk.routed
    stage = chunk.stage
    errors = key_errors(routed, chunk.dataset_id) + schema_row_errors(
        routed, stage.resolved_schema(), stage.output_fields()
    )
    outcome = _with(
        outputs_valid_outcome(len(routed), errors),
        rows_not_routed=dg.MetadataValue.int(len(chunk.output) - len(routed)),
    )
    return chunk.result(context, OUTPUTS_VALID, outcome, stage.gates.outputs_valid.severity)


def _success_rate(context: dg.AssetCheckExecutionContext, chunk: _StageChunk) -> dg.AssetCheckResult:
    gate = chunk.stage.gates.success_rate
    store, dead = _dead_letters(context, chunk)
    failures = dead[dead["stage"] == chunk.stage.name]
    succeeded = len(chunk.routed)
    items = latest_materialization(context.instance, asset_key(chunk.spec, "items"), chunk.partition)
    outcome = success_rate_outcome(
        attempted=int(chunk.recorded.get("items_routed", succeeded + len(failures))),
        succeeded=succeeded,
        threshold=gate.min,
        failures=failures,
        invalid_inputs=int(items.metadata.get("items_invalid", 0)) if items else 0,
        invalid_letters=dead[dead["stage"] == "items"],
        dead_letters_uri=store.uri_for(chunk.dataset_id),
    )
    return chunk.result(context, SUCCESS_RATE, outcome, gate.severity)


def _sampled_quality(context: dg.AssetCheckExecutionContext, chunk: _StageChunk) -> dg.AssetCheckResult:
    gate = chunk.stage.gates.sampled_quality
    assert gate is not None  # the check exists only when the gate does
    routed = chunk.routed
    by_id = routed.set_index(routed["item_id"].astype(str))
    by_id = by_id[~by_id.index.duplicated()]  # a repeated item fails outputs_valid; score it once here
    sample = sample_item_ids(by_id.index, chunk.partition, gate.sample_size)
    answers = {i: by_id.at[i, gate.field] if gate.field in by_id.columns else None for i in sample}
    items = load_stage_output(
        context.instance, asset_key(chunk.spec, "items"), chunk.partition, s3=context.resources.s3
    )
    values = stage_values(chunk.spec, items, {})  # input columns by role and by name, index item_id
    gold: dict[str, Any] = {}
    if gate.gold_column is not None and gate.gold_column in values.columns:
        gold = {
            i: values.at[i, gate.gold_column]
            for i in sample
            if i in values.index and as_python(values.at[i, gate.gold_column]) is not None
        }
    judged: dict[str, str] = {}
    judge_cost, judge_failed = 0.0, 0
    unlabelled = [i for i in sample if i not in gold and i in values.index]
    if gate.judge is not None and unlabelled:
        llm: LLMResource = getattr(context.resources, judge_resource_key(chunk.spec, chunk.stage))
        verdicts = judge_items(
            llm,
            judge_prompt(chunk.stage),
            {i: render(gate.judge.user_template, values.loc[i].to_dict()) for i in unlabelled},
            dataset_id=chunk.dataset_id,
            run_id=context.run.run_id,
            partition_key=chunk.partition,
            log=context.log,
            answer_field=gate.judge.answer_field or gate.field,
            message_prefix="",  # the judge's user template is its whole message
        )
        judged, judge_cost, judge_failed = verdicts.labels, verdicts.cost_usd, verdicts.failed
    if not sample:
        not_scored = f"not scored: no item of this chunk was routed to `{chunk.stage.name}`."
    else:
        not_scored = (
            f"not scored: no sampled item has a gold `{gate.gold_column}` and there is no judge (or it failed on "
            "every item); set `gates.sampled_quality.gold_column` to a column of gold answers or add a `judge`."
        )
    outcome = sampled_quality_outcome(
        sample,
        answers,
        gold,
        judged,
        field=gate.field,
        threshold=gate.min_accuracy,
        confidence=gate.confidence,
        not_scored=not_scored,
        judge_failed=judge_failed,
        judge_cost_usd=judge_cost,
    )
    outcome = _with(outcome, items_routed=dg.MetadataValue.int(len(routed)))
    return chunk.result(context, SAMPLED_QUALITY, outcome, gate.severity)


def _label_drift(context: dg.AssetCheckExecutionContext, chunk: _StageChunk) -> dg.AssetCheckResult:
    gate = chunk.stage.gates.label_drift
    assert gate is not None  # the check exists only when the gate does
    routed = chunk.routed
    column = (
        routed[gate.field].map(as_python).dropna()
        if gate.field in routed.columns
        else pd.Series(dtype=object)
    )
    counts = {str(k): int(v) for k, v in column.value_counts().items()}
    recent = recent_label_counts(
        context.instance,
        chunk.dataset_id,
        chunk.partition,
        gate.reference_chunks,
        check=dg.AssetCheckKey(chunk.asset, LABEL_DRIFT),
    )
    outcome = label_drift_outcome(
        counts,
        recent,
        max_p_value=gate.max_p_value,
        min_reference_items=gate.min_reference_items,
        seed=chunk.partition,
    )
    return chunk.result(context, LABEL_DRIFT, outcome, gate.severity)


def _cost_per_item(context: dg.AssetCheckExecutionContext, chunk: _StageChunk) -> dg.AssetCheckResult:
    gate = chunk.stage.gates.cost_per_item
    routed = chunk.routed
    outcome = cost_per_item_outcome(
        float(chunk.recorded.get("cost_usd", routed["cost_usd"].sum() if len(routed) else 0.0)),
        int(chunk.recorded.get("items_routed", len(routed))),
        tokens_by_item(routed),
        ceiling_usd=gate.max_usd,
        max_top_decile_token_share=gate.max_top_decile_token_share,
    )
    return chunk.result(context, COST_PER_ITEM, outcome, gate.severity)
