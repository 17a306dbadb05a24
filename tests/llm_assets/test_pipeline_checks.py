"""The quality gates of a spec pipeline run on every chunk of every stage, and block like the built-in ones (#12)."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from io_managers.parquet_files import read_parquet
from llm_assets.failure_class import FAILED_GATES_TAG, FailureClass, run_failure_class
from llm_assets.materializations import latest_materialization
from llm_assets.pipeline_assets import (
    asset_key,
    pipeline_definitions,
    register,
    stage_values,
)
from llm_assets.pipeline_checks import judge_resource_key
from llm_assets.spec import PipelineSpec, load_pipeline
from llm_assets.spec_template import render
from resources.llm.resource import spend_ledger_for

pytestmark = pytest.mark.slow

REVIEWS = Path(__file__).resolve().parents[2] / "pipelines" / "reviews.yaml"
JOB = "reviews__chunk_job"  # chunk_job_name(spec): the pipeline's job runs its assets and their checks
_FILE_FIELDS = ("demo_data", "team_from_label", "taxonomy", "few_shot", "price_file")


@pytest.fixture
def sim(spec_sim):
    return spec_sim


def _variant(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> PipelineSpec:
    """reviews.yaml edited by `edit`, written to tmp_path with its file paths made absolute, and loaded."""
    doc = yaml.safe_load(REVIEWS.read_text())

    def absolute(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _FILE_FIELDS and isinstance(value, str):
                    node[key] = str((REVIEWS.parent / value).resolve())
                else:
                    absolute(value)
        elif isinstance(node, list):
            for value in node:
                absolute(value)

    absolute(doc)
    edit(doc)
    path = tmp_path / "reviews.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_pipeline(path)


def _gates(doc: dict[str, Any], stage: str) -> dict[str, Any]:
    return next(s for s in doc["stages"] if s["name"] == stage).setdefault("gates", {})


def _defs(spec: PipelineSpec, home: Path) -> dg.Definitions:
    """The pipeline's definitions: its assets with their checks, and the chunk job running both."""
    return pipeline_definitions(spec, home=home)


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, key: str) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(JOB).execute_in_process(
        instance=instance, partition_key=key, raise_on_error=False
    )


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}


def _uri(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> str:
    recorded = latest_materialization(instance, key, partition)
    assert recorded is not None
    return str(recorded.metadata["uri"])


def _numbers(evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    return {k: v.value for k, v in evaluation.metadata.items()}


def _expected_checks(spec: PipelineSpec) -> set[tuple[str, str]]:
    expected = set()
    for stage in spec.stages:
        gates = stage.gates
        for name, on in (
            ("outputs_valid", gates.outputs_valid.enabled),
            ("success_rate", gates.success_rate.enabled),
            ("sampled_quality", gates.sampled_quality is not None),
            ("label_drift", gates.label_drift is not None),
            ("cost_per_item", gates.cost_per_item.enabled),
        ):
            if on:
                expected.add((stage.name, name))
    return expected


def test_every_gate_of_every_stage_evaluates_per_chunk_and_passes_on_an_honest_model(sim, tmp_path):
    # reviews.yaml's sampled_quality min_accuracy (0.2) is above what the simulator's lexical stand-in reaches on
    # data/reviews (20-item lower bounds 0.034, 0.164, 0.202 on chunks 0-2), so it is lowered here only.
    spec = _variant(
        tmp_path, lambda doc: _gates(doc, "sentiment")["sampled_quality"].update(min_accuracy=0.02)
    )
    home = tmp_path / "home"
    defs = _defs(spec, home)
    expected = _expected_checks(spec)
    assert len(expected) == 11  # 5 gates on sentiment, 3 on aspects, 3 on reply_draft
    with dg.instance_for_test() as instance:
        chunks = register(spec, spec.input.demo_data, instance, home).partition_keys[:3]
        evaluations = {}
        for key in chunks:
            result = _run(defs, instance, key)
            assert result.success, key
            evaluations[key] = _evaluations(result)
            assert set(evaluations[key]) == expected, key
            failed = {name: e.description for name, e in evaluations[key].items() if not e.passed}
            assert failed == {}, key

    first, _, third = chunks
    sentiment = {k: _numbers(evaluations[k][("sentiment", "sampled_quality")]) for k in chunks}
    assert all(n["scorer"] == "gold" and n["sample_size"] == 20 for n in sentiment.values())
    assert all(0 < n["accuracy_lower_bound"] <= n["sample_accuracy"] for n in sentiment.values())
    # Drift needs a baseline: none for the first chunk, the two earlier chunks for the third.
    assert "no baseline yet" in evaluations[first][("sentiment", "label_drift")].description
    drift = _numbers(evaluations[third][("sentiment", "label_drift")])
    assert drift["reference_partitions"] == sorted(chunks[:2]) and drift["p_value"] >= 0.001
    # Only routed rows are judged: reply_draft checks fewer rows than reached it, and is billed for those only.
    draft = _numbers(evaluations[first][("reply_draft", "outputs_valid")])
    assert draft["rows_checked"] > 0 and draft["rows_not_routed"] > 0
    cost = _numbers(evaluations[first][("reply_draft", "cost_per_item")])
    assert cost["items_sent"] == draft["rows_checked"] and cost["cost_per_item_usd"] > 0


def test_a_failed_error_gate_stops_the_chunks_later_stages_as_a_quality_gate_failure(sim, tmp_path):
    spec = _variant(tmp_path, lambda doc: _gates(doc, "sentiment").update(success_rate={"min": 1.0}))
    assert spec.stage("sentiment").gates.success_rate.severity == "ERROR"
    home = tmp_path / "home"
    defs = _defs(spec, home)
    sim.set_faults(refusal=0.3)
    with dg.instance_for_test() as instance:
        key = register(spec, spec.input.demo_data, instance, home).partition_keys[0]
        result = _run(defs, instance, key)
        assert not result.success
        materialized = {e.asset_key for e in result.get_asset_materialization_events()}
        assert materialized == {asset_key(spec, "items"), asset_key(spec, "sentiment")}
        assert run_failure_class(instance, result.run_id) == FailureClass.QUALITY_GATE
        assert (
            instance.get_run_by_id(result.run_id).tags[FAILED_GATES_TAG] == "reviews/sentiment:success_rate"
        )

    rate = _evaluations(result)[("sentiment", "success_rate")]
    numbers = _numbers(rate)
    assert not rate.passed and rate.severity == dg.AssetCheckSeverity.ERROR
    assert numbers["items_failed"] > 0 and numbers["threshold"] == 1.0
    assert numbers["items_succeeded"] + numbers["items_failed"] == numbers["items_attempted"]
    assert set(numbers["failed_by_error_class"]) == {"refusal"}
    assert numbers["failed_by_stage"] == {"sentiment": numbers["items_failed"]}
    # Later stages never ran, so neither did their checks.
    assert {stage for stage, _ in _evaluations(result)} == {"sentiment"}


def _answerable_reviews(path: Path, n: int) -> None:
    """n reviews whose bodies are the sentiment prompt's few-shot examples, gold label included: the simulator's
    nearest-example stand-in answers them right, so only a degraded model gets them wrong."""
    with (REVIEWS.parent / "../data/reviews/few_shot.csv").open(newline="") as f:
        examples = list(csv.DictReader(f))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["review_id", "product", "product_line", "title", "body", "rating", "customer_tier", "sentiment"]
        )
        for i in range(n):
            example = examples[i % len(examples)]
            w.writerow([f"RV-{9000 + i}", "Aria ANC headphones", "audio", "Review", example["text"], 3, "standard",
                        example["label"]])  # fmt: skip


def test_sampled_quality_scores_the_seeded_sample_against_the_gold_column_and_fails_degraded_answers(
    sim, tmp_path
):
    spec = load_pipeline(REVIEWS)  # the shipped gate: gold column `label`, 20 items, min 0.2, WARN
    gate = spec.stage("sentiment").gates.sampled_quality
    assert gate is not None and gate.gold_column == "label" and gate.severity == "WARN"
    _answerable_reviews(tmp_path / "answerable.csv", 90)  # chunks of 40, 40 and 10 items
    home = tmp_path / "home"
    defs = _defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register(spec, str(tmp_path / "answerable.csv"), instance, home)
        clean, degraded, small = dataset.partition_keys
        runs = {key: _run(defs, instance, key) for key in (clean, small)}
        sim.set_faults(degrade_rate=1.0)
        runs[degraded] = _run(defs, instance, degraded)
        rerun = _run(defs, instance, clean)  # every answer comes from the checkpoint: the same sample

    for key, result in runs.items():
        assert result.success, key  # severity WARN never blocks
    quality = {key: _evaluations(result)[("sentiment", "sampled_quality")] for key, result in runs.items()}
    numbers = {key: _numbers(evaluation) for key, evaluation in quality.items()}
    for key in runs:
        routed = numbers[key]["items_routed"]
        assert numbers[key]["sample_size"] == min(gate.sample_size, routed) == numbers[key]["scored_by_gold"]
        assert numbers[key]["scorer"] == "gold" and numbers[key]["cost_usd"] == 0
    assert numbers[small]["sample_size"] < gate.sample_size  # a short last chunk: every routed item scored
    assert quality[clean].passed
    assert not quality[degraded].passed and quality[degraded].severity == dg.AssetCheckSeverity.WARN
    assert (
        numbers[degraded]["accuracy_lower_bound"]
        < gate.min_accuracy
        <= numbers[clean]["accuracy_lower_bound"]
    )
    assert numbers[degraded]["wrong_examples"] and "sentiment" in numbers[degraded]["wrong_examples"][0]
    again = _numbers(_evaluations(rerun)[("sentiment", "sampled_quality")])
    assert again["sampled_item_ids"] == numbers[clean]["sampled_item_ids"]


def test_a_judge_scores_the_sample_without_gold_and_its_spend_is_in_the_ledger_as_judge(sim, tmp_path):
    judge_model = "gpt-6.2-sol"

    def judged(doc: dict[str, Any]) -> None:
        _gates(doc, "sentiment")["sampled_quality"] = {
            "field": "sentiment",
            "gold_column": None,
            "sample_size": 10,
            "min_accuracy": 0.0,
            "judge": {
                "provider": "openai_sim",
                "model": judge_model,
                "rubric": "You check the sentiment of customer reviews. Answer with one label:\n{taxonomy}",
                "user_template": "Review of {product}:\n{text}",
                "answer_field": "correct_sentiment",
            },
        }

    spec = _variant(tmp_path, judged)
    home = tmp_path / "home"
    defs = _defs(spec, home)
    assert judge_resource_key(spec, spec.stage("sentiment")) in defs.resources
    with dg.instance_for_test() as instance:
        dataset = register(spec, spec.input.demo_data, instance, home)
        key = dataset.partition_keys[0]
        result = _run(defs, instance, key)
        assert result.success
        ledger = spend_ledger_for(instance.storage_directory()).rows(dataset.dataset_id)
        values = stage_values(spec, read_parquet(_uri(instance, asset_key(spec, "items"), key)), {})

    numbers = _numbers(_evaluations(result)[("sentiment", "sampled_quality")])
    assert (
        numbers["scorer"] == "judge" and numbers["scored_by_judge"] == 10 and numbers["scored_by_gold"] == 0
    )
    billed = ledger[(ledger["event"] == "billed") & (ledger["stage"] == "judge")]
    assert len(billed) == 10
    assert set(billed["model"]) == {judge_model} and set(billed["partition_key"]) == {key}
    assert numbers["cost_usd"] > 0 and billed["cost_usd"].sum() == pytest.approx(
        numbers["cost_usd"], abs=1e-6
    )
    # The judge was sent its own user template, rendered for each sampled item, and nothing else.
    template = spec.stage("sentiment").gates.sampled_quality.judge.user_template
    sent = {
        hashlib.sha256(render(template, values.loc[i].to_dict()).encode()).hexdigest()
        for i in numbers["sampled_item_ids"]
    }
    assert sent <= {r["user_sha256"] for r in sim.requests() if r["model"] == judge_model}


def test_a_check_run_alone_without_a_chunk_or_before_its_chunk_is_skipped_saying_what_to_do(sim, tmp_path):
    spec = load_pipeline(REVIEWS)
    home = tmp_path / "home"
    sentiment = asset_key(spec, "sentiment")
    alone = dg.define_asset_job("checks_alone", selection=dg.AssetSelection.checks_for_assets(sentiment))
    defs = dg.Definitions.merge(_defs(spec, home), dg.Definitions(jobs=[alone]))
    with dg.instance_for_test() as instance:
        key = register(spec, spec.input.demo_data, instance, home).partition_keys[0]
        unpartitioned = defs.resolve_job_def("checks_alone").execute_in_process(
            instance=instance, raise_on_error=False
        )
        too_early = defs.resolve_job_def("checks_alone").execute_in_process(
            instance=instance, tags={"dagster/partition": key}, raise_on_error=False
        )
        logged = {
            run.run_id: [e.user_message for e in instance.all_logs(run.run_id)]
            for run in (unpartitioned, too_early)
        }
    # Nothing to check is no failure: no result, so Dagster records the checks as skipped, not "Execution failed".
    for run in (unpartitioned, too_early):
        assert run.success and run.get_asset_check_evaluations() == []
    (why,) = [m for m in logged[unpartitioned.run_id] if m.startswith("Nothing checked")]
    assert "no chunk partition" in why and "reviews/sentiment:success_rate" in why
    (why,) = [m for m in logged[too_early.run_id] if m.startswith("Nothing checked")]
    assert f"reviews/sentiment was never materialized for chunk {key}" in why
