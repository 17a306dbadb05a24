"""The completion sensor and the completion report: once per dataset, numbers that add up, cleanup.

The pipeline is BANKING77's spec with the sensors the code location builds for it (recovery_support)."""

import json
import sys
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recovery_support import (  # noqa: E402
    BACKFILL,
    COMPLETION,
    first_attempt,
    launch,
    recovery_location,
    recovery_spec,
    tick,
    wait_until,
    write_labelled_dataset,
)
from webhook_receiver import WebhookReceiver  # noqa: E402

from llm_assets.layout import PipelineLayout  # noqa: E402
from sensors.completion import COMPLETION_WEBHOOK_ENV, build_completion_sensor  # noqa: E402
from tests.spec_pipelines import layout_of, point_at, register_file, run_chunk, run_completion, spec_defs  # noqa: E402

pytestmark = pytest.mark.slow


def _meta_sum(
    instance: dg.DagsterInstance, layout: PipelineLayout, partitions: list[str], name: str
) -> float:
    total = 0.0
    for stage in layout.stages:
        for key in partitions:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=layout.key(stage), asset_partitions=[key]), limit=1
            ).records
            if records:
                total += float(records[0].asset_materialization.metadata[name].value)
    return total


def test_completion_fires_once_across_ticks_and_restarts_and_its_numbers_add_up(
    start_sim, tmp_path, monkeypatch
):
    hook = WebhookReceiver()
    # The spec names its own variable (notifications.completion_webhook_env); the default one is unset.
    monkeypatch.delenv(COMPLETION_WEBHOOK_ENV, raising=False)
    monkeypatch.setenv("CARDS_TEAM_COMPLETION_URL", hook.url)
    sim = start_sim({"seed": 3})
    point_at(sim, monkeypatch)
    home = tmp_path / "home"
    write_labelled_dataset(tmp_path / "nightly.csv", 60, markers={4: "[[refuse]]", 31: "[[poison]]"})
    spec = recovery_spec(
        backfill={"max_attempts": 1}, notifications={"completion_webhook_env": "CARDS_TEAM_COMPLETION_URL"}
    )
    layout = layout_of(spec)
    defs, sensors = recovery_location(spec, home)
    backfill, completion = sensors[BACKFILL], sensors[COMPLETION]
    try:
        with dg.instance_for_test() as instance:
            dataset = register_file(spec, tmp_path / "nightly.csv", instance, home, chunk_size=20)
            ok_a, ok_b, doomed = dataset.partition_keys
            for key in (ok_a, ok_b):
                assert launch(defs, instance, backfill, first_attempt(spec, key)).success
            sim.set_faults(outage=True)
            assert not launch(defs, instance, backfill, first_attempt(spec, doomed)).success
            sim.set_faults(outage=False)
            requests, _, _ = tick(backfill, instance, defs, None)  # max_attempts=1: the chunk is given up
            assert requests == []
            stray = home / "checkpoints" / dataset.dataset_id / ok_a / "classified"
            stray.mkdir(parents=True, exist_ok=True)
            (stray / "snapshot.json").write_text("{}")  # left by a crash before the success hook ran
            kept = home / "checkpoints" / dataset.dataset_id / doomed / "classified"
            kept.mkdir(parents=True, exist_ok=True)
            (kept / "snapshot.json").write_text("{}")  # a failed chunk's checkpoint, for a later re-run

            first, cursor, _ = tick(completion, instance, defs, None)
            restarted = recovery_location(spec, home)[1][COMPLETION]
            again, _, _ = tick(restarted, instance, defs, None)  # restarted, cursor lost
            assert (
                [r.run_key for r in first] == [r.run_key for r in again] == [f"complete:{dataset.dataset_id}"]
            )
            results = [launch(defs, instance, completion, r) for r in first + again]
            assert results[0].success and results[1] is None  # the daemon never launches a run key twice
            for _ in range(5):
                requests, cursor, _ = tick(completion, instance, defs, cursor)
                assert requests == []
            for _ in range(2):  # restarts with a lost cursor: nothing requested, nobody notified twice
                requests, _, _ = tick(recovery_location(spec, home)[1][COMPLETION], instance, defs, None)
                assert requests == []
            completions = instance.get_runs(filters=dg.RunsFilter(job_name=layout.completion_job))
            assert len(completions) == 1
            assert len(hook.received) == 1

            report = json.loads(
                (home / "reports" / dataset.dataset_id / "completion_report.json").read_text()
            )
            materialized = [ok_a, ok_b]
            cost = sim.stats()["billed_usd"]
            # The stages' metadata is rounded to the millionth of a dollar; the report keeps every digit.
            assert _meta_sum(instance, layout, materialized, "cost_usd") == pytest.approx(cost, abs=1e-5)
            assert report["total_cost_usd"] == pytest.approx(cost, rel=1e-9)
            assert report["ledger_cost_usd"] == pytest.approx(cost, rel=1e-9)
            assert report["output_tokens"] == _meta_sum(instance, layout, materialized, "output_tokens")
            assert report["output_tokens"] == sim.stats()["tokens"]["output"]
            assert sum(report["cost_by_team"].values()) == pytest.approx(cost, rel=1e-9)
            assert sum(report["cost_by_stage"].values()) == pytest.approx(cost, rel=1e-9)
            assert sum(report["cost_by_day"].values()) == pytest.approx(cost, rel=1e-9)
            assert (report["total_items"], report["succeeded"], report["failed"]) == (60, 38, 22)
            assert report["dead_lettered"] == 2 and report["not_processed"] == 20
            assert report["buckets"] == {
                "succeeded": 38, "dead_lettered": 2, "quarantined": 0, "not_processed": 20,
            }  # fmt: skip
            assert report["not_processed_by_reason"] == {"gave_up": 20}
            assert report["dead_lettered_by_reason"] == {"refusal": 1, "invalid_prompt": 1}
            # The refusal was billed, then dead-lettered: wasted. The rest is the kept output, paid once.
            assert report["wasted_usd"] > 0 and report["repaid_usd"] == report["quality_checks_usd"] == 0
            assert report["useful_cost_usd"] + report["wasted_usd"] == pytest.approx(cost, rel=1e-9)
            assert "(failed items)" not in report["cost_by_team"]
            assert report["failed_chunks"] == {doomed: "gave_up"}
            assert report["threshold_met"] is False and report["success_threshold"] == 0.95
            assert report["top_items"]["count"] == 3 and 0 < report["top_items"]["token_share"] < 1
            assert report["failed_items_uri"]
            markdown = (home / "reports" / dataset.dataset_id / "completion_report.md").read_text()
            assert "38 of 60 items succeeded" in markdown and "NOT met" in markdown
            assert "| not processed | 20 | gave_up 20 (gave up after every retry) |" in markdown
            assert "| **total** | **60** |" in markdown

            body = hook.received[0]
            assert body["kind"] == "dataset_complete" and body["dataset_id"] == dataset.dataset_id
            assert body["total_cost_usd"] == pytest.approx(cost, rel=1e-9) and body["threshold_met"] is False
            assert not stray.exists()  # succeeded chunk: checkpoint removed
            assert (kept / "snapshot.json").exists()  # failed chunk: checkpoint kept
    finally:
        hook.stop()


def test_a_failed_completion_run_is_retried_with_backoff_then_given_up_with_an_error(
    start_sim, tmp_path, monkeypatch
):
    sim = start_sim({"seed": 3})
    point_at(sim, monkeypatch)
    home = tmp_path / "home"
    write_labelled_dataset(tmp_path / "nightly.csv", 20)
    spec = recovery_spec()
    layout = layout_of(spec)
    completion = build_completion_sensor(layouts=[layout], max_attempts=3, retry_base_s=1.0)
    defs = spec_defs(spec, home, sensors=[completion])
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "nightly.csv", instance, home, chunk_size=20)
        (key,) = dataset.partition_keys
        assert run_chunk(defs, spec, instance, key).success
        output = home / "outputs" / spec.name / "enriched" / f"{key}.parquet"
        aside = tmp_path / "aside.parquet"
        output.rename(aside)  # the report cannot read the chunk's output: every completion run fails

        first, cursor, _ = tick(completion, instance, defs, None)
        assert [r.run_key for r in first] == [f"complete:{dataset.dataset_id}"]
        assert not launch(defs, instance, completion, first[0]).success
        backing_off, cursor, _ = tick(completion, instance, defs, cursor)
        assert backing_off == []  # 1 s has not passed since the run ended
        wait_until(1.05)
        second, cursor, _ = tick(completion, instance, defs, cursor)
        assert [r.run_key for r in second] == [f"complete:{dataset.dataset_id}:attempt-2"]
        assert not launch(defs, instance, completion, second[0]).success
        wait_until(1.05)
        assert tick(completion, instance, defs, cursor)[0] == []  # attempt 3 waits 2 s after attempt 2
        wait_until(1.0)
        third, cursor, _ = tick(completion, instance, defs, cursor)
        assert [r.run_key for r in third] == [f"complete:{dataset.dataset_id}:attempt-3"]
        assert not launch(defs, instance, completion, third[0]).success
        for _ in range(3):  # out of attempts: an error, then nothing more, said in every skip reason
            requests, cursor, skip = tick(completion, instance, defs, cursor)
            assert requests == [] and "1 completion runs failed for good" in skip
        assert len(instance.get_runs(filters=dg.RunsFilter(job_name=layout.completion_job))) == 3

        # A person fixes the cause and materializes the report by hand; the sensor then finishes the dataset.
        aside.rename(output)
        assert run_completion(defs, spec, instance, dataset.dataset_id).success
        requests, cursor, _ = tick(completion, instance, defs, cursor)
        assert requests == [] and dataset.dataset_id in json.loads(cursor)["done"]
