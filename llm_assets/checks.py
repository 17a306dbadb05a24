"""Quality gates: what each gate decides for one chunk, and what the report reads back.

A pipeline's gates are declared per stage in its spec and built as partition-aware asset checks by
llm_assets/pipeline_checks.py (docs/quality_gates.md):

| gate             | fails when                                                                              |
| ---------------- | --------------------------------------------------------------------------------------- |
| outputs_valid    | a row breaks the stage's output schema (taxonomy included), or keys are missing/repeated |
| success_rate     | output rows / items routed to the stage < `min` (invalid inputs are reported apart)     |
| sampled_quality  | the Wilson lower bound of a seeded sample's accuracy (gold column or judge) < `min_accuracy` |
| label_drift      | permutation chi-square of the chunk's field mix vs recent chunks: p < `max_p_value`     |
| cost_per_item    | USD per item > `max_usd`, or the top 10% of items take more than their token share     |

A gate of severity ERROR is blocking: its failure stops the chunk's later stages in the same run and tags the
run `chunkwise/failure_class=quality_gate` (llm_assets/failure_class.py) so the backfill sensor never retries
it; the chunk's rows are quarantined, not discarded (llm_assets/report.py).

Each gate's decision is a pure function of frames and thresholds (`outputs_valid_outcome`,
`success_rate_outcome`, `sampled_quality_outcome`, `label_drift_outcome`, `cost_per_item_outcome`, returning a
`GateOutcome`); `checks_section` and `blocked_partitions` read the latest evaluations of a pipeline's gates.
"""

import json
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from llm_assets.datasets import RegisteredDataset
from llm_assets.failure_class import mark_quality_gate_failure
from llm_assets.layout import PipelineLayout
from llm_assets.materializations import latest_materialization, usd, usd_per_item
from llm_assets.quality_stats import label_drift, reference_agreement, top_decile_share, wilson_interval
from resources.llm.structured import validate

# Partitioned checks (`partitions_def=` on AssetCheckSpec) are a preview feature in dagster 1.13; we rely on it knowingly.
warnings.filterwarnings(
    "ignore", message=".*partitions_def on an AssetCheckSpec.*", category=dg.PreviewWarning
)

DRIFT_HISTORY_LIMIT = 500  # drift evaluations scanned for a dataset's recent chunks
_MAX_EXAMPLES = 10  # offending rows/items listed in metadata


# ---------------------------------------------------------------------------------------------- helpers


def _latest_metadata(instance: dg.DagsterInstance, asset: dg.AssetKey, partition: str) -> dict[str, Any]:
    """Metadata values of the latest materialization of `asset` for `partition` ({} when none)."""
    recorded = latest_materialization(instance, asset, partition)
    return {} if recorded is None else recorded.metadata


@dataclass(frozen=True)
class GateOutcome:
    """What one gate decided for one chunk, computed from frames and settings alone (no Dagster context):
    the `*_outcome` functions below are the one implementation behind every pipeline's gates
    (llm_assets/pipeline_checks.py)."""

    passed: bool
    description: str
    """The sentence a person reads in the UI and in alerts: what happened and what to do."""
    metadata: dict[str, Any]
    """Typed metadata values; the numeric ones are plotted per partition in the UI."""


def check_result(
    context: dg.AssetCheckExecutionContext,
    asset: dg.AssetKey,
    check_name: str,
    outcome: GateOutcome,
    *,
    severity: dg.AssetCheckSeverity,
    blocking: bool,
) -> dg.AssetCheckResult:
    """The check result; a blocking ERROR failure also tags the run as a quality-gate failure
    (`<asset>:<check>` in `chunkwise/failed_gates`)."""
    metadata = outcome.metadata
    if not outcome.passed and blocking and severity == dg.AssetCheckSeverity.ERROR:
        mark_quality_gate_failure(
            context.instance, context.run.run_id, f"{asset.to_user_string()}:{check_name}"
        )
        metadata = {**metadata, "failure_class": dg.MetadataValue.text("quality_gate")}
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=check_name,
        passed=outcome.passed,
        severity=severity,
        description=outcome.description,
        metadata=metadata,
    )


def as_python(value: Any) -> Any:
    """numpy scalars and arrays -> Python values, NaN -> None (the schema validator checks Python types)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


# ---------------------------------------------------------------------------------------------- outputs_valid


def _declared_types(node: Any) -> set[str]:
    kind = node.get("type") if isinstance(node, dict) else None
    return {kind} if isinstance(kind, str) else set(kind or [])


def schema_row_errors(
    frame: pd.DataFrame, schema: dict[str, Any], fields: Sequence[str]
) -> list[tuple[str, str]]:
    """(item_id, problem) for every row of `frame` whose `fields` do not validate against `schema`.

    Arrays and objects are stored as JSON text (one Parquet type per column whatever the reply), so a text cell
    of a field whose schema does not allow a string is parsed back first. An empty cell of a field the schema
    does not require is left out (Parquet cannot tell an omitted property from a null)."""
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))
    errors: list[tuple[str, str]] = []
    for row in frame.to_dict("records"):
        item_id = str(row["item_id"])
        value: dict[str, Any] = {}
        unreadable = False
        for field in fields:
            cell = as_python(row.get(field))
            kinds = _declared_types(properties.get(field))
            if isinstance(cell, str) and "string" not in kinds:
                try:
                    cell = json.loads(cell)
                except json.JSONDecodeError:
                    kind = "list" if "array" in kinds else "object" if "object" in kinds else "value"
                    errors.append((item_id, f"$.{field}: not a JSON {kind}"))
                    unreadable = True
                    continue
            if cell is None and field not in required:
                continue
            value[field] = cell
        if not unreadable:
            errors += [(item_id, problem) for problem in validate(value, schema)]
    return errors


def key_errors(frame: pd.DataFrame, dataset_id: str) -> list[tuple[str, str]]:
    """(item_id, problem) for missing keys, repeated items and rows of another dataset."""
    errors = []
    for column in ("idempotency_key", "item_id", "dataset_id"):
        for item_id in frame.loc[frame[column].isna(), "item_id"]:
            errors.append((str(item_id), f"{column} is missing"))
    for item_id in frame.loc[frame["item_id"].duplicated(), "item_id"]:
        errors.append((str(item_id), "item appears more than once"))
    for item_id in frame.loc[frame["dataset_id"].notna() & (frame["dataset_id"] != dataset_id), "item_id"]:
        errors.append((str(item_id), f"dataset_id is not {dataset_id}"))
    return errors


def outputs_valid_outcome(rows_checked: int, errors: list[tuple[str, str]]) -> GateOutcome:
    """outputs_valid over `rows_checked` rows with these (item_id, problem) errors: passes when there are none."""
    bad_items = sorted({item for item, _ in errors})
    passed = not errors
    description = (
        f"all {rows_checked} rows valid"
        if passed
        else f"{len(bad_items)} of {rows_checked} rows invalid; first: {errors[0][0]}: {errors[0][1]}. "
        "Look at the prompt/schema version and the model; fix, then re-materialize the chunk."
    )
    return GateOutcome(
        passed,
        description,
        {
            "rows_checked": dg.MetadataValue.int(rows_checked),
            "rows_invalid": dg.MetadataValue.int(len(bad_items)),
            "problems": dg.MetadataValue.json(
                [{"item_id": i, "problem": p} for i, p in errors[:_MAX_EXAMPLES]]
            ),
        },
    )


# ---------------------------------------------------------------------------------------------- success_rate


def success_rate_outcome(
    *,
    attempted: int,
    succeeded: int,
    threshold: float,
    failures: pd.DataFrame,
    invalid_inputs: int,
    invalid_letters: pd.DataFrame,
    dead_letters_uri: str,
) -> GateOutcome:
    """success_rate: `succeeded` of `attempted` items sent to the model (1.0 when none was sent) against
    `threshold`. `failures` are the dead letters of the model stages counted as failed, `invalid_letters` those
    of inputs rejected before any call (`invalid_inputs` of them: reported, not counted)."""
    failed = max(0, attempted - succeeded)
    rate = succeeded / attempted if attempted else 1.0
    by_stage = {str(k): int(v) for k, v in failures["stage"].value_counts().items()}
    by_class = {str(k): int(v) for k, v in failures["error_class"].value_counts().items()}
    passed = rate >= threshold
    description = (
        f"{succeeded:,} of {attempted:,} items sent to the model succeeded ({rate:.1%}), {failed:,} failed; "
        f"threshold {threshold:.1%}."
    )
    if invalid_inputs:
        description += f" Not counted: {invalid_inputs:,} invalid inputs, dead-lettered before any LLM call."
    if not passed:
        description += (
            f" Failures by class: {by_class or 'none recorded'}. Read the dead letters at "
            f"{dead_letters_uri}; fix the cause (prompt, inputs, provider), then re-materialize."
        )
    return GateOutcome(
        passed,
        description,
        {
            "success_rate": dg.MetadataValue.float(rate),
            "threshold": dg.MetadataValue.float(threshold),
            "items_attempted": dg.MetadataValue.int(attempted),
            "items_succeeded": dg.MetadataValue.int(succeeded),
            "items_failed": dg.MetadataValue.int(failed),
            "items_invalid_input": dg.MetadataValue.int(invalid_inputs),
            "invalid_input_by_error_class": dg.MetadataValue.json(
                {str(k): int(v) for k, v in invalid_letters["error_class"].value_counts().items()}
            ),
            "failed_by_stage": dg.MetadataValue.json(by_stage),
            "failed_by_error_class": dg.MetadataValue.json(by_class),
            "failed_item_ids": dg.MetadataValue.json(sorted(failures["item_id"].astype(str))[:_MAX_EXAMPLES]),
            # The folder exists only when some item of the chunk was dead-lettered.
            **(
                {"dead_letters_uri": dg.MetadataValue.path(dead_letters_uri)}
                if len(failures) or len(invalid_letters)
                else {}
            ),
        },
    )


# ---------------------------------------------------------------------------------------------- sampled_quality


def _agrees(answer: Any, reference: Any) -> bool:
    """The model's answer equals the reference (a gold cell read from a file, or the judge's answer as text)."""
    a, b = as_python(answer), as_python(reference)
    return a == b or (a is not None and b is not None and str(a) == str(b))


def sampled_quality_outcome(
    sample: list[str],
    answers: Mapping[str, Any],
    gold: Mapping[str, Any],
    judged: Mapping[str, Any],
    *,
    field: str,
    threshold: float,
    confidence: float,
    not_scored: str,
    judge_failed: int = 0,
    judge_cost_usd: float = 0.0,
) -> GateOutcome:
    """sampled_quality: the sampled items' `answers` (item_id -> the model's `field`) scored against `gold`
    (item_id -> gold answer) or else `judged` (item_id -> the judge's answer). Passes when the one-sided
    `confidence` Wilson lower bound of the accuracy reaches `threshold`, or when nothing was scored (then the
    description is `not_scored`: what to set to gate quality)."""
    expected = {**gold, **judged}
    scored = [i for i in sample if i in expected]
    correct = {i for i in scored if _agrees(answers.get(i), expected[i])}
    n, k = len(scored), len(correct)
    low, high = wilson_interval(k, n, NormalDist().inv_cdf(confidence))
    scorer = "+".join(name for name, used in (("gold", gold), ("judge", judged)) if used) or "none"
    if n == 0:
        passed = True
        description = not_scored
    else:
        passed = low >= threshold
        description = (
            f"sample accuracy {k}/{n} = {k / n:.3f} ({scorer}); {confidence:.0%} lower bound "
            f"{low:.3f} {'>=' if passed else '<'} threshold {threshold:.3f}."
        )
        if not passed:
            description += (
                " The model's labels disagree with the reference on this chunk: read `wrong_examples`, compare "
                "the prompt version and model with a good chunk; re-running alone will not change the answers."
            )
    wrong = [
        {"item_id": i, field: str(as_python(answers.get(i))), "expected": str(as_python(expected[i]))}
        for i in scored
        if i not in correct
    ]
    return GateOutcome(
        passed,
        description,
        {
            "sample_accuracy": dg.MetadataValue.float(k / n if n else 0.0),
            "accuracy_lower_bound": dg.MetadataValue.float(low),
            "accuracy_upper_bound": dg.MetadataValue.float(high),
            "threshold": dg.MetadataValue.float(threshold),
            "sample_size": dg.MetadataValue.int(n),
            "sample_correct": dg.MetadataValue.int(k),
            "scored_by_gold": dg.MetadataValue.int(len([i for i in scored if i in gold])),
            "scored_by_judge": dg.MetadataValue.int(len([i for i in scored if i in judged])),
            "judge_failed": dg.MetadataValue.int(judge_failed),
            "cost_usd": usd(judge_cost_usd),
            "scorer": dg.MetadataValue.text(scorer),
            "sampled_item_ids": dg.MetadataValue.json(sample),
            "wrong_examples": dg.MetadataValue.json(wrong[:_MAX_EXAMPLES]),
        },
    )


# ---------------------------------------------------------------------------------------------- label_drift


def recent_label_counts(
    instance: dg.DagsterInstance,
    dataset_id: str,
    partition: str,
    chunks: int,
    check: dg.AssetCheckKey,
) -> dict[str, dict[str, int]]:
    """Label counts recorded by the latest evaluations of the drift `check` on up to `chunks` other chunks of the
    dataset, most recent first (each chunk's own evaluation stores its counts, so no other chunk's file is read)."""
    history = instance.event_log_storage.get_asset_check_execution_history(check, limit=DRIFT_HISTORY_LIMIT)
    prefix = f"{dataset_id}__c"
    found: dict[str, dict[str, int]] = {}
    for record in history:
        key = record.partition
        if not key or not key.startswith(prefix) or key == partition or key in found:
            continue
        evaluation = (
            record.event.dagster_event.event_specific_data
            if record.event and record.event.dagster_event
            else None
        )
        counts = getattr(evaluation, "metadata", {}).get("label_counts") if evaluation is not None else None
        if counts is None:
            continue
        found[key] = {str(k): int(v) for k, v in counts.value.items()}
        if len(found) >= chunks:
            break
    return found


def label_drift_outcome(
    counts: Mapping[str, int],
    recent: Mapping[str, Mapping[str, int]],
    *,
    max_p_value: float,
    min_reference_items: int,
    seed: str,
) -> GateOutcome:
    """label_drift: the chunk's label `counts` against the pooled counts of `recent` chunks (partition ->
    counts); passes with 'no baseline yet' below `min_reference_items` reference items, and with 'no stable
    baseline' unless at least 2 reference chunks agree with each other (chunks of an input sorted or grouped by
    label differ by construction, so every chunk would "drift" from them: BANKING77's file warned on 12 of 13).
    `seed`: the partition key, so a re-run gives the same p-values. `label_counts` in the metadata is what later
    chunks pool."""
    reference: Counter = Counter()
    for chunk_counts in recent.values():
        reference.update(chunk_counts)
    metadata: dict[str, Any] = {
        "label_counts": dg.MetadataValue.json(dict(counts)),
        "reference_chunks": dg.MetadataValue.int(len(recent)),
        "reference_items": dg.MetadataValue.int(sum(reference.values())),
        "reference_partitions": dg.MetadataValue.json(sorted(recent)),
        "max_p_value": dg.MetadataValue.float(max_p_value),
    }
    if sum(reference.values()) < min_reference_items or not counts:
        return GateOutcome(
            True,
            f"no baseline yet: {sum(reference.values())} reference items from {len(recent)} earlier chunks "
            f"(need {min_reference_items})",
            metadata,
        )
    drift = label_drift(counts, dict(reference), seed=seed)
    passed = drift.p_value >= max_p_value
    shifts = [
        {"label": lab, "chunk_share": round(p, 4), "reference_share": round(q, 4)}
        for lab, p, q in drift.top_shifts
    ]
    description = (
        f"label mix vs {len(recent)} recent chunks: chi2={drift.chi2:.1f} over {drift.labels} labels, "
        f"permutation p={drift.p_value:.2g} "
        f"({'ok' if passed else 'drift'}); PSI={drift.psi:.3f}."
    )
    if not passed:
        description += f" Largest shift: {shifts[0]['label']} {shifts[0]['reference_share']:.1%} -> {shifts[0]['chunk_share']:.1%}."
    agreement = reference_agreement(recent, seed=seed) if len(recent) >= 2 else None
    if agreement is None:
        passed, description = (
            True,
            (
                f"no stable baseline yet: 1 reference chunk, and a baseline needs 2 whose label mixes agree; not judged "
                f"(p={drift.p_value:.2g} against it)."
            ),
        )
    elif agreement < max_p_value:
        passed, description = (
            True,
            (
                f"no stable baseline: the {len(recent)} reference chunks' label mixes differ from each other too "
                f"(p={agreement:.2g} < {max_p_value:g}), as in an input sorted or grouped by label, so this chunk's "
                f"difference from them (p={drift.p_value:.2g}) is not reported as drift. Shuffle the input to make the "
                "gate meaningful."
            ),
        )
    metadata["baseline_stable"] = dg.MetadataValue.bool(agreement is not None and agreement >= max_p_value)
    if agreement is not None:
        metadata["reference_agreement_p_value"] = dg.MetadataValue.float(agreement)
    metadata.update(
        {
            "p_value": dg.MetadataValue.float(drift.p_value),
            "chi2": dg.MetadataValue.float(drift.chi2),
            "labels": dg.MetadataValue.int(drift.labels),
            "permutations": dg.MetadataValue.int(drift.permutations),
            "psi": dg.MetadataValue.float(drift.psi),
            "top_shifts": dg.MetadataValue.json(shifts),
        }
    )
    return GateOutcome(passed, description, metadata)


# ---------------------------------------------------------------------------------------------- cost_per_item


def tokens_by_item(billed: pd.DataFrame) -> dict[str, int]:
    """item_id -> input + output tokens of the rows the model was paid for."""
    if billed.empty:
        return {}
    totals = billed["input_tokens"] + billed["output_tokens"]
    return {str(i): int(t) for i, t in zip(billed["item_id"], totals, strict=True)}


def cost_per_item_outcome(
    cost_usd: float,
    items_sent: int,
    tokens: Mapping[str, int],
    *,
    ceiling_usd: float | None,
    max_top_decile_token_share: float,
) -> GateOutcome:
    """cost_per_item: `cost_usd` over `items_sent` against `ceiling_usd` (None: no ceiling), and the share of
    `tokens` (item_id -> tokens) taken by the largest 10% of items against `max_top_decile_token_share`."""
    per_item = cost_usd / items_sent if items_sent else 0.0
    share, top_ids = top_decile_share(tokens)
    too_dear = ceiling_usd is not None and per_item > ceiling_usd
    too_skewed = share > max_top_decile_token_share
    reasons = []
    if too_dear:
        reasons.append(f"${per_item:.6f} per item is above the ceiling ${ceiling_usd:.6f}")
    if too_skewed:
        reasons.append(
            f"the largest 10% of items take {share:.0%} of the tokens (limit "
            f"{max_top_decile_token_share:.0%}): filter or truncate them"
        )
    description = (
        "; ".join(reasons)
        if reasons
        else f"${per_item:.6f} per item; the largest 10% of items take {share:.0%} of the tokens"
    )
    return GateOutcome(
        not (too_dear or too_skewed),
        description,
        {
            "cost_per_item_usd": usd_per_item(per_item),
            "ceiling_usd": usd_per_item(ceiling_usd if ceiling_usd is not None else 0.0),
            "cost_usd": usd(cost_usd),
            "items_sent": dg.MetadataValue.int(items_sent),
            "top_decile_token_share": dg.MetadataValue.float(share),
            "max_top_decile_token_share": dg.MetadataValue.float(max_top_decile_token_share),
            "top_decile_item_ids": dg.MetadataValue.json(top_ids[:_MAX_EXAMPLES]),
        },
    )


# ---------------------------------------------------------------------------------------------- the checks
#
# One step per checked stage, not one per check: each step costs a run ~90 ms of events and input loads, and
# eight single-check steps were more than half of a chunk run's orchestration overhead (docs/benchmarks.md).
# The steps can subset, so one check can still be run alone for a chunk (Dagster 1.13's UI runs no partitioned
# check on its own; docs/quality_gates.md).


def evaluate_selected(
    context: dg.AssetCheckExecutionContext,
    asset: dg.AssetKey,
    evaluators: dict[str, Callable[[], dg.AssetCheckResult]],
) -> Iterator[dg.AssetCheckResult]:
    """Run the selected checks of `asset` in order. One that raises does not stop the others: each result is
    yielded, every error is logged with its check's name, then the first error fails the step."""
    selected = context.selected_asset_check_keys
    errors: list[tuple[str, Exception]] = []
    for name, evaluate in evaluators.items():
        if dg.AssetCheckKey(asset, name) not in selected:
            continue
        try:
            result = evaluate()
        except Exception as error:  # re-raised below, after the other checks have had their say
            context.log.error(f"check {asset.to_user_string()}:{name} raised {type(error).__name__}: {error}")
            errors.append((name, error))
            continue
        yield result
    if errors:
        raise errors[0][1]


# ---------------------------------------------------------------------------------------------- reporting


def _latest_evaluations(
    instance: dg.DagsterInstance, partitions: list[str], specs: list[dg.AssetCheckSpec]
) -> dict[tuple[dg.AssetCheckKey, str], dg.AssetCheckEvaluation]:
    """The latest evaluation of every check in `specs` for each of `partitions` (absent when never evaluated)."""
    wanted = set(partitions)
    latest: dict[tuple[dg.AssetCheckKey, str], dg.AssetCheckEvaluation] = {}
    for key in [spec.key for spec in specs]:
        cursor = None
        while True:
            page = instance.event_log_storage.get_asset_check_execution_history(key, limit=500, cursor=cursor)
            for record in page:
                event = record.event.dagster_event if record.event else None
                evaluation = event.event_specific_data if event else None
                if record.partition in wanted and isinstance(evaluation, dg.AssetCheckEvaluation):
                    latest.setdefault((key, record.partition), evaluation)  # history is newest first
            if len(page) < 500:
                break
            cursor = page[-1].id
    return latest


def _blocked_by(
    latest: dict[tuple[dg.AssetCheckKey, str], dg.AssetCheckEvaluation], specs: list[dg.AssetCheckSpec]
) -> dict[str, str]:
    """partition -> the first blocking check (in pipeline order: an earlier stage's before a later one's) whose
    latest evaluation failed with ERROR severity, as `<asset>:<check>`."""
    blocked: dict[str, str] = {}
    for spec in specs:
        for (key, partition), evaluation in latest.items():
            if (
                key == spec.key
                and not evaluation.passed
                and evaluation.blocking
                and evaluation.severity == dg.AssetCheckSeverity.ERROR
            ):
                blocked.setdefault(partition, key.to_user_string())
    return dict(sorted(blocked.items()))


def pipeline_check_specs(layout: PipelineLayout) -> list[dg.AssetCheckSpec]:
    """The quality gates of `layout`'s pipeline, in stage order."""
    return list(layout.check_specs)


def blocked_partitions(
    instance: dg.DagsterInstance, partitions: list[str], layout: PipelineLayout
) -> list[str]:
    """The partitions whose latest evaluation of a blocking check failed with ERROR severity: their outputs are
    quarantined (kept on disk, counted apart, never counted as succeeded; a blocking failure on the last stage
    happens after it was materialized)."""
    specs = pipeline_check_specs(layout)
    return sorted(_blocked_by(_latest_evaluations(instance, partitions, specs), specs))


def checks_section(
    instance: dg.DagsterInstance, dataset: RegisteredDataset, layout: PipelineLayout
) -> dict[str, Any]:
    """The `checks` section of a dataset's completion report, over the quality gates of `layout`'s pipeline.

    Per check: partitions passed / failed / not evaluated, severity and blocking; the sampled accuracy pooled
    over the dataset's latest sampled_quality evaluations (every stage that has the gate; with its Wilson
    interval); the judge's spend as the checks recorded it (the report's `quality_checks_usd` is the spend
    ledger's); the partitions a blocking gate stopped (`blocked_partitions`) and, for each, the gate that
    stopped it (`blocked_by`: their rows are quarantined by that gate).
    """
    specs = pipeline_check_specs(layout)
    partition_keys = list(dataset.partition_keys)
    latest = _latest_evaluations(instance, partition_keys, specs)
    per_check: dict[str, dict[str, Any]] = {}
    for spec in specs:
        evaluations = [latest[(spec.key, p)] for p in partition_keys if (spec.key, p) in latest]
        failed = [e for e in evaluations if not e.passed]
        per_check[spec.key.to_user_string()] = {
            "blocking": spec.blocking,
            "passed": len(evaluations) - len(failed),
            "failed": len(failed),
            "failed_errors": sum(e.severity == dg.AssetCheckSeverity.ERROR for e in failed),
            "not_evaluated": len(partition_keys) - len(evaluations),
            "failed_partitions": sorted(e.partition for e in failed if e.partition),
        }
    sampled = [
        latest[(spec.key, p)]
        for spec in specs
        if spec.key.name == "sampled_quality"
        for p in partition_keys
        if (spec.key, p) in latest
    ]
    correct = sum(int(e.metadata["sample_correct"].value) for e in sampled if "sample_correct" in e.metadata)
    scored = sum(int(e.metadata["sample_size"].value) for e in sampled if "sample_size" in e.metadata)
    judge_cost = sum(float(e.metadata["cost_usd"].value) for e in sampled if "cost_usd" in e.metadata)
    low, high = wilson_interval(correct, scored)
    blocked_by = _blocked_by(latest, specs)
    return {
        "checks": per_check,
        "sampled_accuracy": {
            "accuracy": correct / scored if scored else None,
            "correct": correct,
            "scored": scored,
            "partitions": len(sampled),
            "wilson_95_low": low if scored else None,
            "wilson_95_high": high if scored else None,
        },
        "judge_cost_usd": judge_cost,
        "blocked_partitions": sorted(blocked_by),
        "blocked_by": blocked_by,
    }
