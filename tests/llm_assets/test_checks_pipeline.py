"""The quality gates on real chunks: the pipeline against the simulator, a real Dagster instance, a real webhook."""

import csv
import hashlib
import random
import sys
from pathlib import Path

import dagster as dg
import pytest
from pipeline_support import materialize_partition, pipeline_defs, register, write_dataset

from llm_assets.checks import checks_section
from llm_assets.failure_class import FAILED_GATES_TAG, FailureClass, run_failure_class

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sensors"))
from webhook_receiver import WebhookReceiver  # noqa: E402

from sensors.alerts import WEBHOOK_ENV, check_alert_sensor  # noqa: E402

pytestmark = pytest.mark.slow

BANKING = Path(__file__).resolve().parents[2] / "data" / "banking77" / "test.csv"
JUDGE_MODEL = "gpt-6.2-sol"


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


def _defs(sim, home: Path, **gates) -> dg.Definitions:
    return pipeline_defs(
        f"{sim.base_url}/v1",
        sim.api_key,
        home,
        settings={"route": "all"},
        quality_gates=gates,
        judge_model=JUDGE_MODEL,
    )


def _evaluation(result: dg.ExecuteInProcessResult, asset: str, check: str) -> dg.AssetCheckEvaluation:
    found = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_key == dg.AssetKey(asset) and e.check_name == check
    ]
    assert len(found) == 1, f"expected one {asset}:{check} evaluation, got {len(found)}"
    return found[0]


def _numbers(evaluation: dg.AssetCheckEvaluation) -> dict:
    return {k: v.value for k, v in evaluation.metadata.items()}


def test_sampled_gate_passes_clean_chunk_and_blocks_a_degraded_one_with_exactly_one_alert(
    start_sim, tmp_path, monkeypatch
):
    sim = start_sim({"seed": 5})
    _write(tmp_path / "tiny.csv", _banking_rows(1, 120))
    home = tmp_path / "home"
    defs = _defs(sim, home, sample_size=40, min_sampled_accuracy=0.2, sampled_quality_severity="ERROR")
    hook = WebhookReceiver()
    monkeypatch.setenv(WEBHOOK_ENV, hook.url)
    try:
        with dg.instance_for_test() as instance:
            dataset = register(tmp_path / "tiny.csv", instance, home, chunk_size=60)
            clean, degraded = dataset.partition_keys

            ok = materialize_partition(defs, instance, clean)
            assert ok.success
            quality = _numbers(_evaluation(ok, "classified", "sampled_quality"))
            assert _evaluation(ok, "classified", "sampled_quality").passed
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
            bad = materialize_partition(defs, instance, degraded, raise_on_error=False)
            assert not bad.success
            failed = _evaluation(bad, "classified", "sampled_quality")
            assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
            assert _numbers(failed)["accuracy_lower_bound"] < 0.2
            assert instance.get_materialized_partitions(dg.AssetKey("classified")) == {clean, degraded}
            assert instance.get_materialized_partitions(dg.AssetKey("enriched")) == {clean}  # blocked
            run = instance.get_run_by_id(bad.run_id)
            assert run.tags[FAILED_GATES_TAG] == "classified:sampled_quality"
            assert run_failure_class(instance, bad.run_id) == FailureClass.QUALITY_GATE
            assert run_failure_class(instance, ok.run_id) is None

            cursor = None
            for _ in range(2):
                cursor = check_alert_sensor.evaluate_tick(
                    dg.build_sensor_context(instance=instance, cursor=cursor)
                ).cursor
            section = checks_section(instance, dataset)
    finally:
        hook.stop()

    assert [(a["asset"], a["check"], a["partition"]) for a in hook.received] == [
        ("classified", "sampled_quality", degraded)
    ]
    assert section["checks"]["classified:sampled_quality"] == {
        "blocking": True, "passed": 1, "failed": 1, "failed_errors": 1, "not_evaluated": 0,
        "failed_partitions": [degraded],
    }  # fmt: skip
    assert section["checks"]["enriched:outputs_valid"]["not_evaluated"] == 1
    assert section["sampled_accuracy"]["scored"] == 80
    assert section["blocked_partitions"] == [degraded]
    assert section["blocked_by"] == {degraded: "classified:sampled_quality"}  # its rows are quarantined by it


def test_the_same_partition_run_twice_samples_the_same_items(start_sim, tmp_path):
    sim = start_sim({"seed": 5})
    _write(tmp_path / "tiny.csv", _banking_rows(2, 50))
    home = tmp_path / "home"
    defs = _defs(sim, home, sample_size=20)
    with dg.instance_for_test() as instance:
        (key,) = register(tmp_path / "tiny.csv", instance, home, chunk_size=50).partition_keys
        samples = []
        for _ in range(2):
            result = materialize_partition(defs, instance, key)
            samples.append(_numbers(_evaluation(result, "classified", "sampled_quality"))["sampled_item_ids"])
    assert samples[0] == samples[1] and len(samples[0]) == 20


def test_label_drift_warns_on_a_different_mix_and_not_on_the_same_mix(start_sim, tmp_path):
    sim = start_sim({"seed": 5})
    with BANKING.open(newline="") as f:
        categories = sorted({r["category"] for r in csv.DictReader(f)})
    mix_a, mix_b = set(categories[:12]), set(categories[40:52])
    rows = _banking_rows(3, 160, mix_a) + _banking_rows(4, 80, mix_b)
    _write(tmp_path / "tiny.csv", rows)
    home = tmp_path / "home"
    defs = _defs(sim, home, drift_min_reference_items=60)
    with dg.instance_for_test() as instance:
        first, same, different = register(tmp_path / "tiny.csv", instance, home, chunk_size=80).partition_keys
        drift = {}
        for key in (first, same, different):
            result = materialize_partition(defs, instance, key)
            assert result.success  # a WARN never blocks
            drift[key] = _evaluation(result, "classified", "label_drift")
    assert drift[first].passed and "no baseline yet" in drift[first].description
    assert drift[same].passed and _numbers(drift[same])["p_value"] >= 0.001
    assert not drift[different].passed and drift[different].severity == dg.AssetCheckSeverity.WARN
    assert _numbers(drift[different])["p_value"] < 0.001
    assert _numbers(drift[different])["reference_partitions"] == [first, same]


def test_without_gold_labels_the_judge_scores_the_sample_and_its_cost_is_the_chunks(start_sim, tmp_path):
    sim = start_sim({"seed": 5})
    rows = _banking_rows(5, 30)
    _write(tmp_path / "tiny.csv", rows, with_labels=False)
    home = tmp_path / "home"
    defs = _defs(sim, home, sample_size=10)
    with dg.instance_for_test() as instance:
        (key,) = register(tmp_path / "tiny.csv", instance, home, chunk_size=30).partition_keys
        result = materialize_partition(defs, instance, key)
    quality = _numbers(_evaluation(result, "classified", "sampled_quality"))
    assert (
        quality["scorer"] == "judge" and quality["scored_by_judge"] == 10 and quality["scored_by_gold"] == 0
    )
    # The judge's requests, found in the simulator's billing ledger by their user text.
    judge_texts = {hashlib.sha256(f"Message: {r['text']}".encode()).hexdigest() for r in rows}
    billed = [r for r in sim.requests() if r["user_sha256"] in judge_texts]
    assert len(billed) == 10 and {r["model"] for r in billed} == {JUDGE_MODEL}
    assert quality["cost_usd"] == pytest.approx(sum(r["billed_usd"] for r in billed), rel=1e-9)
    assert quality["cost_usd"] > 0


def test_success_rate_below_threshold_blocks_enriched_and_says_where_the_failures_are(start_sim, tmp_path):
    sim = start_sim({"seed": 5})
    write_dataset(tmp_path / "tiny.csv", 40, poison_every=10)  # 4 of 40 items are refused by the provider
    home = tmp_path / "home"
    defs = _defs(sim, home, judge_enabled=False)
    with dg.instance_for_test() as instance:
        (key,) = register(tmp_path / "tiny.csv", instance, home, chunk_size=40).partition_keys
        result = materialize_partition(defs, instance, key, raise_on_error=False)
        assert not result.success
        assert instance.get_materialized_partitions(dg.AssetKey("enriched")) == set()
        assert run_failure_class(instance, result.run_id) == FailureClass.QUALITY_GATE
    rate = _evaluation(result, "classified", "success_rate")
    meta = _numbers(rate)
    assert not rate.passed and rate.severity == dg.AssetCheckSeverity.ERROR
    assert (meta["items_attempted"], meta["items_succeeded"], meta["items_failed"]) == (40, 36, 4)
    assert meta["success_rate"] == pytest.approx(0.9) and meta["threshold"] == 0.95
    assert meta["items_invalid_input"] == 0
    assert meta["failed_by_error_class"] == {"invalid_prompt": 4}
    assert meta["failed_by_stage"] == {"classified": 4}
    assert meta["dead_letters_uri"].endswith(f"dataset={key.split('__')[0]}")
    unpassed = _evaluation(result, "classified", "sampled_quality")
    assert unpassed.passed and _numbers(unpassed)["scorer"] == "none"  # no gold label, judge off: not scored
