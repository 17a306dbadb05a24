"""The quality gates on real chunks: BANKING77's spec against the simulator, a real Dagster instance, a real
webhook."""

import csv
import hashlib
import random
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from pipeline_support import evaluation, numbers, write_dataset

from llm_assets.checks import checks_section
from llm_assets.failure_class import FAILED_GATES_TAG, FailureClass, run_failure_class
from llm_assets.spec import PipelineSpec
from tests.spec_pipelines import layout_of, point_at, register_file, run_chunk, spec_defs, test_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sensors"))
from webhook_receiver import WebhookReceiver  # noqa: E402

from sensors.alerts import WEBHOOK_ENV, check_alert_sensor  # noqa: E402

pytestmark = pytest.mark.slow

BANKING = Path(__file__).resolve().parents[2] / "data" / "banking77" / "test.csv"
JUDGE_MODEL = "gpt-6.2-sol"  # the shipped spec's judge


@pytest.fixture
def sim(start_sim, monkeypatch):
    sim = start_sim({"seed": 5})
    point_at(sim, monkeypatch)
    return sim


def _banking_rows(seed: int, n: int, categories: set[str] | None = None) -> list[dict]:
    with BANKING.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if categories is None or r["category"] in categories]
    return random.Random(seed).sample(rows, n)


def _write(path: Path, rows: list[dict], with_labels: bool = True) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "team", "label"] if with_labels else ["id", "text", "team"])
        for i, row in enumerate(rows):
            w.writerow([f"item-{i:04d}", row["text"], "support", row["category"]][: 4 if with_labels else 3])


def _spec(**gates: dict[str, Any]) -> PipelineSpec:
    """BANKING77 with every item enriched and `gates` merged into the shipped gates of `classified`."""
    return test_spec(stages={"classified": {"gates": gates}, "enriched": {"route": "all"}})


def test_sampled_gate_passes_clean_chunk_and_blocks_a_degraded_one_with_exactly_one_alert(
    sim, tmp_path, monkeypatch
):
    _write(tmp_path / "tiny.csv", _banking_rows(1, 120))
    home = tmp_path / "home"
    spec = _spec(sampled_quality={"sample_size": 40, "min_accuracy": 0.2, "severity": "ERROR"})
    layout = layout_of(spec)
    defs = spec_defs(spec, home)
    hook = WebhookReceiver()
    monkeypatch.setenv(WEBHOOK_ENV, hook.url)
    try:
        with dg.instance_for_test() as instance:
            dataset = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=60)
            clean, degraded = dataset.partition_keys

            ok = run_chunk(defs, spec, instance, clean)
            assert ok.success
            quality = numbers(evaluation(ok, layout, "classified", "sampled_quality"))
            assert evaluation(ok, layout, "classified", "sampled_quality").passed
            assert (
                quality["sample_size"] == 40
                and quality["scored_by_gold"] == 40
                and quality["scorer"] == "gold"
            )
            assert (
                quality["accuracy_lower_bound"]
                >= 0.2
                > 0.0
                < quality["accuracy_lower_bound"]
                < quality["sample_accuracy"]
            )
            assert all(
                e.passed
                for e in ok.get_asset_check_evaluations()
                if e.severity == dg.AssetCheckSeverity.ERROR
            )

            sim.set_faults(degrade_rate=0.95)
            bad = run_chunk(defs, spec, instance, degraded, raise_on_error=False)
            assert not bad.success
            failed = evaluation(bad, layout, "classified", "sampled_quality")
            assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
            assert numbers(failed)["accuracy_lower_bound"] < 0.2
            assert instance.get_materialized_partitions(layout.key("classified")) == {clean, degraded}
            assert instance.get_materialized_partitions(layout.key("enriched")) == {clean}  # blocked
            run = instance.get_run_by_id(bad.run_id)
            assert run.tags[FAILED_GATES_TAG] == "banking77/classified:sampled_quality"
            assert run_failure_class(instance, bad.run_id) == FailureClass.QUALITY_GATE
            assert run_failure_class(instance, ok.run_id) is None

            cursor = None
            for _ in range(2):
                cursor = check_alert_sensor.evaluate_tick(
                    dg.build_sensor_context(instance=instance, cursor=cursor)
                ).cursor
            section = checks_section(instance, dataset, layout)
    finally:
        hook.stop()

    assert [(a["asset"], a["check"], a["partition"]) for a in hook.received] == [
        ("banking77/classified", "sampled_quality", degraded)
    ]
    assert section["checks"]["banking77/classified:sampled_quality"] == {
        "blocking": True, "passed": 1, "failed": 1, "failed_errors": 1, "not_evaluated": 0,
        "failed_partitions": [degraded],
    }  # fmt: skip
    assert section["checks"]["banking77/enriched:outputs_valid"]["not_evaluated"] == 1
    assert section["sampled_accuracy"]["scored"] == 80
    assert section["blocked_partitions"] == [degraded]
    # its rows are quarantined by it
    assert section["blocked_by"] == {degraded: "banking77/classified:sampled_quality"}


def test_the_same_partition_run_twice_samples_the_same_items(sim, tmp_path):
    _write(tmp_path / "tiny.csv", _banking_rows(2, 50))
    home = tmp_path / "home"
    spec = _spec(sampled_quality={"sample_size": 20})
    layout = layout_of(spec)
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        (key,) = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=50).partition_keys
        samples = []
        for _ in range(2):
            result = run_chunk(defs, spec, instance, key)
            samples.append(
                numbers(evaluation(result, layout, "classified", "sampled_quality"))["sampled_item_ids"]
            )
    assert samples[0] == samples[1] and len(samples[0]) == 20


def test_label_drift_warns_on_a_different_mix_and_not_on_the_same_mix(sim, tmp_path):
    with BANKING.open(newline="") as f:
        categories = sorted({r["category"] for r in csv.DictReader(f)})
    mix_a, mix_b = set(categories[:12]), set(categories[40:52])
    rows = _banking_rows(3, 160, mix_a) + _banking_rows(4, 80, mix_b)
    _write(tmp_path / "tiny.csv", rows)
    home = tmp_path / "home"
    spec = _spec(label_drift={"min_reference_items": 60})
    layout = layout_of(spec)
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=80)
        first, same, different = dataset.partition_keys
        drift = {}
        for key in (first, same, different):
            result = run_chunk(defs, spec, instance, key)
            assert result.success  # a WARN never blocks
            drift[key] = evaluation(result, layout, "classified", "label_drift")
    assert drift[first].passed and "no baseline yet" in drift[first].description
    assert drift[same].passed and numbers(drift[same])["p_value"] >= 0.001
    assert not drift[different].passed and drift[different].severity == dg.AssetCheckSeverity.WARN
    assert numbers(drift[different])["p_value"] < 0.001
    assert numbers(drift[different])["reference_partitions"] == [first, same]
    # Its two reference chunks have one mix: a stable baseline, so the difference is drift.
    assert numbers(drift[different])["baseline_stable"] is True
    assert numbers(drift[different])["reference_agreement_p_value"] >= 0.001
    # One reference chunk is not a baseline yet: it cannot show that chunks agree.
    assert (
        numbers(drift[same])["baseline_stable"] is False
        and "no stable baseline yet" in drift[same].description
    )


def test_label_drift_does_not_warn_on_every_chunk_of_an_input_sorted_by_label(sim, tmp_path):
    with BANKING.open(newline="") as f:
        categories = sorted({r["category"] for r in csv.DictReader(f)})
    # Like BANKING77's own file: each chunk holds the next few intents, so every chunk's mix is new.
    rows = [row for g in range(4) for row in _banking_rows(10 + g, 50, set(categories[g * 8 : g * 8 + 8]))]
    _write(tmp_path / "sorted.csv", rows)
    home = tmp_path / "home"
    spec = _spec(label_drift={"min_reference_items": 40})
    layout = layout_of(spec)
    defs = spec_defs(spec, home)
    selection = [layout.key("items"), layout.key("classified")]
    with dg.instance_for_test() as instance:
        keys = register_file(spec, tmp_path / "sorted.csv", instance, home, chunk_size=50).partition_keys
        drift = [
            evaluation(run_chunk(defs, spec, instance, key, asset_selection=selection), layout, "classified",
                       "label_drift")
            for key in keys
        ]  # fmt: skip
    assert all(d.passed for d in drift)
    # Against the recent chunks every later chunk "drifts" (what the gate used to warn on) ...
    assert all(numbers(d)["p_value"] < 0.001 for d in drift[1:])
    # ... but those chunks differ from each other as much: no stable baseline, so no verdict.
    assert [numbers(d).get("baseline_stable") for d in drift] == [None, False, False, False]
    assert all(numbers(d)["reference_agreement_p_value"] < 0.001 for d in drift[2:])
    assert all("no stable baseline: the" in d.description for d in drift[2:])


def test_without_gold_labels_the_judge_scores_the_sample_and_its_cost_is_the_chunks(sim, tmp_path):
    rows = _banking_rows(5, 30)
    _write(tmp_path / "tiny.csv", rows, with_labels=False)
    home = tmp_path / "home"
    spec = _spec(sampled_quality={"sample_size": 10})
    judge = spec.stage("classified").gates.sampled_quality.judge
    assert judge is not None and judge.model == JUDGE_MODEL and judge.user_template == "Message: {text}"
    layout = layout_of(spec)
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        (key,) = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=30).partition_keys
        result = run_chunk(defs, spec, instance, key)
    quality = numbers(evaluation(result, layout, "classified", "sampled_quality"))
    assert (
        quality["scorer"] == "judge" and quality["scored_by_judge"] == 10 and quality["scored_by_gold"] == 0
    )
    # The judge's requests, found in the simulator's billing ledger by their user text (the spec's template).
    judge_texts = {hashlib.sha256(f"Message: {r['text']}".encode()).hexdigest() for r in rows}
    billed = [r for r in sim.requests() if r["user_sha256"] in judge_texts]
    assert len(billed) == 10 and {r["model"] for r in billed} == {JUDGE_MODEL}
    assert quality["cost_usd"] == pytest.approx(sum(r["billed_usd"] for r in billed), abs=1e-6)
    assert quality["cost_usd"] > 0


def test_success_rate_below_threshold_blocks_enriched_and_says_where_the_failures_are(sim, tmp_path):
    write_dataset(tmp_path / "tiny.csv", 40, poison_every=10)  # 4 of 40 items are refused by the provider
    home = tmp_path / "home"
    spec = _spec(sampled_quality={"judge": None})
    layout = layout_of(spec)
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        (key,) = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=40).partition_keys
        result = run_chunk(defs, spec, instance, key, raise_on_error=False)
        assert not result.success
        assert instance.get_materialized_partitions(layout.key("enriched")) == set()
        assert run_failure_class(instance, result.run_id) == FailureClass.QUALITY_GATE
    rate = evaluation(result, layout, "classified", "success_rate")
    meta = numbers(rate)
    assert not rate.passed and rate.severity == dg.AssetCheckSeverity.ERROR
    assert (meta["items_attempted"], meta["items_succeeded"], meta["items_failed"]) == (40, 36, 4)
    assert meta["success_rate"] == pytest.approx(0.9) and meta["threshold"] == 0.95
    assert meta["items_invalid_input"] == 0
    assert meta["failed_by_error_class"] == {"invalid_prompt": 4}
    assert meta["failed_by_stage"] == {"classified": 4}
    assert meta["dead_letters_uri"].endswith(f"dataset={key.split('__')[0]}")
    unpassed = evaluation(result, layout, "classified", "sampled_quality")
    assert unpassed.passed and numbers(unpassed)["scorer"] == "none"  # no gold label, judge off: not scored
