"""outputs_valid and cost_per_item of BANKING77's spec gates (llm_assets/pipeline_checks.py) on hand-made stage
outputs: rows the LLM resource would never let through (it validates every reply) must still be caught if
anything upstream changes, e.g. a taxonomy edit.
No `from __future__ import annotations`: Dagster reads the annotations of the stand-in assets."""

import json
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from io_managers.chunk_parquet import ChunkParquetIOManager
from llm_assets.failure_class import FailureClass, run_failure_class
from llm_assets.pipeline_assets import chunks_partitions_name
from llm_assets.pipeline_checks import checks_step_name, pipeline_checks
from llm_assets.settings import PipelineSettings
from tests.spec_pipelines import layout_of, test_spec

KEY = "tiny-0a1b2c3d__c00000"
CLASSIFIED = dg.AssetKey(["banking77", "classified"])
ENRICHED = dg.AssetKey(["banking77", "enriched"])


@pytest.fixture(autouse=True)
def _no_provider(monkeypatch):
    """The spec's provider profile needs its variables to load; no check run here calls a model (port 9:
    discard)."""
    monkeypatch.setenv("CHUNKWISE_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", "unused")


def _classified_row(item: str, label: str, confidence: float) -> dict:
    return {
        "idempotency_key": f"tiny-0a1b2c3d|{item}|classified|v1|m", "dataset_id": "tiny-0a1b2c3d", "item_id": item,
        "stage": "classified", "prompt_version": "v1", "model": "m", "team": "t", "routed": True, "label": label,
        "confidence": confidence, "cost_usd": 0.001, "input_tokens": 100, "cached_input_tokens": 0,
        "output_tokens": 10, "attempts": 1, "latency_s": 0.1,
    }  # fmt: skip


def _run_checks(
    check_keys: list[dg.AssetCheckKey],
    frame: pd.DataFrame,
    tmp_path,
    items: pd.DataFrame | None = None,
    gates: dict[str, Any] | None = None,
):
    """Materialize stand-ins for the checked stage asset holding `frame` and for `banking77/items` holding
    `items` (default: the frame's items, with a text), then run only `check_keys` of the stage's checks step
    (BANKING77's gates, `gates` merged into the checked stage's), for one chunk. Returns the run's result, its
    failure class and its log messages."""
    (asset_key,) = {key.asset_key for key in check_keys}
    stage = asset_key.path[-1]
    spec = test_spec(stages={stage: {"gates": gates or {}}})
    layout = layout_of(spec)
    partitions = dg.DynamicPartitionsDefinition(name=chunks_partitions_name(spec))
    home = tmp_path / "home"
    checks, check_resources = pipeline_checks(spec, partitions, home=home)
    if items is None:
        items = pd.DataFrame(
            {"item_id": frame["item_id"].drop_duplicates(), "text": "My card has not arrived."}
        )

    @dg.asset(key=asset_key, partitions_def=partitions)
    def stage_output() -> pd.DataFrame:
        return frame

    @dg.asset(key=layout.key("items"), partitions_def=partitions)
    def items_stand_in() -> pd.DataFrame:
        return items

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(partitions.name, [KEY])
        result = dg.materialize(
            [stage_output, items_stand_in, *checks],
            selection=dg.AssetSelection.assets(asset_key, layout.key("items")).without_checks()
            | dg.AssetSelection.checks(*check_keys),
            instance=instance,
            partition_key=KEY,
            raise_on_error=False,
            resources={
                "io_manager": ChunkParquetIOManager(base_uri=str(tmp_path / "outputs")),
                "settings": PipelineSettings(home=str(home)),
                "s3": dg.ResourceDefinition.none_resource(),
                **check_resources,  # the judge's LLM resource; never called here
            },
        )
        logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
        return result, run_failure_class(instance, result.run_id), logged


def _run_check(check_key: dg.AssetCheckKey, frame: pd.DataFrame, tmp_path, **gates):
    """Run the one check `check_key` on `frame`: its evaluation and the run's failure class."""
    result, failure, _ = _run_checks([check_key], frame, tmp_path, gates=gates)
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.asset_check_key == check_key
    return evaluation, failure


def test_a_check_that_raises_does_not_stop_the_other_checks_of_its_step_and_fails_the_step(tmp_path):
    # Items without a `text` column make sampled_quality raise (KeyError); the other four still report.
    frame = pd.DataFrame([_classified_row("a", "card_arrival", 0.9)])
    names = ["outputs_valid", "success_rate", "sampled_quality", "label_drift", "cost_per_item"]
    result, _, logged = _run_checks(
        [dg.AssetCheckKey(CLASSIFIED, n) for n in names],
        frame,
        tmp_path,
        items=pd.DataFrame({"item_id": ["a"]}),
    )
    evaluated = {e.check_name for e in result.get_asset_check_evaluations()}
    assert evaluated == set(names) - {"sampled_quality"}
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    spec = test_spec()
    assert (
        failure.step_key == checks_step_name(spec, spec.stage("classified")) == "banking77__classified_checks"
    )
    assert "KeyError" in str(failure.step_failure_data.error)
    assert any("check banking77/classified:sampled_quality raised KeyError: 'text'" in m for m in logged)


def test_a_label_outside_the_taxonomy_fails_outputs_valid_and_marks_a_quality_gate_failure(tmp_path):
    frame = pd.DataFrame(
        [
            _classified_row("a", "card_arrival", 0.9),
            _classified_row("b", "not_a_label", 0.8),
            _classified_row("c", "card_linking", 1.7),
            _classified_row("c", "card_linking", 0.5),
        ]
    )
    evaluation, failure = _run_check(dg.AssetCheckKey(CLASSIFIED, "outputs_valid"), frame, tmp_path)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert meta["rows_checked"] == 4 and meta["rows_invalid"] == 2
    problems = {(p["item_id"], p["problem"]) for p in meta["problems"]}
    assert ("b", "$.label: 'not_a_label' is not one of the allowed values") in problems
    assert ("c", "$.confidence: above maximum 1") in problems
    assert ("c", "item appears more than once") in problems
    assert meta["failure_class"] == "quality_gate"
    assert failure == FailureClass.QUALITY_GATE


def test_valid_rows_pass_outputs_valid(tmp_path):
    frame = pd.DataFrame(
        [_classified_row("a", "card_arrival", 0.9), _classified_row("b", "card_linking", 0.0)]
    )
    evaluation, failure = _run_check(dg.AssetCheckKey(CLASSIFIED, "outputs_valid"), frame, tmp_path)
    assert evaluation.passed and failure is None


def _enriched_row(
    item: str, routed: bool, urgency: str | None, entities: str | None, tokens: int = 100
) -> dict:
    """A row as the spec's `enriched` writes it: routed rows with the model's fields, the others carried
    through with empty fields and zero usage."""
    row = _classified_row(item, "card_arrival", 0.4)
    for field in ("label", "confidence"):
        row.pop(field)
    row.update(stage="enriched", routed=routed, urgency=urgency, entities=entities, input_tokens=tokens,
               summary="Card not arrived." if routed else None)  # fmt: skip
    if not routed:
        row.update(model="", prompt_version="", cost_usd=0.0, output_tokens=0, attempts=0, latency_s=0.0)
    return row


def test_enriched_rows_are_checked_against_the_enrichment_schema(tmp_path):
    frame = pd.DataFrame(
        [
            _enriched_row("a", True, "high", json.dumps(["card"])),
            _enriched_row("b", True, "urgent", json.dumps(["card"])),
            _enriched_row("c", True, "low", "not json"),
            _enriched_row("d", False, None, None),
        ]
    )
    evaluation, _ = _run_check(dg.AssetCheckKey(ENRICHED, "outputs_valid"), frame, tmp_path)
    problems = {(p["item_id"], p["problem"]) for p in evaluation.metadata["problems"].value}
    assert problems == {
        ("b", "$.urgency: 'urgent' is not one of the allowed values"),
        ("c", "$.entities: not a JSON list"),
    }
    assert evaluation.metadata["rows_not_routed"].value == 1  # `d` was carried through, not judged


@pytest.mark.parametrize(
    ("ceiling", "tokens_of_the_big_item", "passed"),
    [(0.01, 100, True), (0.0001, 100, False), (0.01, 5000, False)],
)
def test_cost_per_item_warns_on_the_ceiling_and_on_a_few_items_eating_the_tokens(
    tmp_path, ceiling, tokens_of_the_big_item, passed
):
    rows = [_enriched_row(f"i{n}", True, "low", "[]") for n in range(19)]
    rows.append(_enriched_row("big", True, "low", "[]", tokens=tokens_of_the_big_item))
    rows.append(_enriched_row("skipped", False, None, None, tokens=0))
    evaluation, failure = _run_check(
        dg.AssetCheckKey(ENRICHED, "cost_per_item"),
        pd.DataFrame(rows),
        tmp_path,
        cost_per_item={"max_usd": ceiling},
    )
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert evaluation.passed is passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert failure is None  # a warning never fails the run
    assert meta["cost_per_item_usd"] == pytest.approx(0.001)
    if tokens_of_the_big_item > 1000:
        assert meta["top_decile_item_ids"][0] == "big" and meta["top_decile_token_share"] > 0.3
