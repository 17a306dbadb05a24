"""The budget gate before launch: with the spec's `estimate.before_launch` on, the new-dataset sensor requests the
dataset's `<pipeline>__estimate_job` after registration and launches its chunk runs only when the estimate fits
the budgets; over budget it launches none, logs why and posts the same notice to the pipeline's alert webhook.
Real sensor evaluations on a real instance and folder (tests/sensors/recovery_support.py), a real simulator and a
real webhook receiver on localhost."""

import json
import os
import sys
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sensors"))
from recovery_support import launch, recovery_location, tick, write_labelled_dataset  # noqa: E402
from webhook_receiver import WebhookReceiver  # noqa: E402

from llm_assets.estimate import estimate_dataset, load_estimate  # noqa: E402
from llm_assets.pipeline_assets import register  # noqa: E402
from sensors.new_datasets import NewDatasetCursor  # noqa: E402
from tests.spec_pipelines import point_at, test_spec  # noqa: E402

WATCHER = "banking77__new_dataset_sensor"

pytestmark = pytest.mark.slow


def _land_and_estimate(spec, tmp_path, instance):
    """Drop a 200-row file, let it settle, register it, run the estimate the sensor asks for; the tick after."""
    inbox, home = tmp_path / "inbox", tmp_path / "home"
    inbox.mkdir()
    write_labelled_dataset(inbox / "tickets.csv", 200)
    defs, sensors = recovery_location(spec, home, watch=str(inbox))
    watcher = sensors[WATCHER]
    _, cursor, _ = tick(watcher, instance, defs, None)  # seen once: not settled yet
    [registration], cursor, _ = tick(watcher, instance, defs, cursor)
    assert launch(defs, instance, watcher, registration).success
    requests, cursor, _ = tick(watcher, instance, defs, cursor)
    [estimate_run] = requests  # no chunk run yet: the estimate comes first
    assert estimate_run.job_name == "banking77__estimate_job"
    assert estimate_run.run_key.startswith("estimate:banking77-tickets-")
    assert launch(defs, instance, watcher, estimate_run).success
    requests, cursor, skip = tick(watcher, instance, defs, cursor)
    return requests, cursor, skip, home, lambda c: tick(watcher, instance, defs, c)


def test_an_over_budget_dataset_is_held_and_an_alert_says_why(start_sim, monkeypatch, tmp_path):
    sim = start_sim({"seed": 4})
    point_at(sim, monkeypatch)
    receiver = WebhookReceiver()
    monkeypatch.setenv("CHUNKWISE_ALERT_WEBHOOK_URL", receiver.url)
    # The sample of 10 fits $0.05 at worst; 200 items do not (about $0.10 projected).
    spec = test_spec(estimate={"before_launch": True, "sample_size": 10}, budgets={"dataset_usd": 0.05})
    try:
        with dg.instance_for_test() as instance:
            requests, cursor, skip, home, next_tick = _land_and_estimate(spec, tmp_path, instance)
            assert requests == [] and "1 datasets held by their estimate" in skip
            state = NewDatasetCursor.from_json(cursor)
            [(dataset_id, why)] = state.over_budget.items()
            estimate = load_estimate(home, spec.name, dataset_id)
            assert estimate is not None and not estimate.budget.within_budget
            assert "over `budgets.dataset_usd` = $0.0500" in why
            [alert] = receiver.received
            assert alert["kind"] == "estimate_hold" and alert["dataset_id"] == dataset_id
            assert "budgets.dataset_usd" in alert["text"] and receiver.url not in json.dumps(alert)
            # Later ticks launch nothing and alert once.
            requests, cursor, _ = next_tick(cursor)
            assert requests == [] and len(receiver.received) == 1
            # Only the sample was paid: the simulator billed what the estimate says it spent.
            assert sim.stats()["billed_usd"] == pytest.approx(estimate.sample_cost_usd, abs=1e-9)

            # Raise the budget and touch the file: it registers again, its estimate is read back (nothing paid)
            # and judged against the new budget, and the chunks launch.
            richer = test_spec(
                estimate={"before_launch": True, "sample_size": 10}, budgets={"dataset_usd": 5.0}
            )
            defs, sensors = recovery_location(richer, home, watch=str(tmp_path / "inbox"))
            watcher = sensors[WATCHER]
            landed = tmp_path / "inbox" / "tickets.csv"
            os.utime(landed, (landed.stat().st_atime, landed.stat().st_mtime + 5))
            _, cursor, _ = tick(watcher, instance, defs, cursor)  # changed: settles over two ticks
            [registration], cursor, _ = tick(watcher, instance, defs, cursor)
            assert launch(defs, instance, watcher, registration).success
            [estimate_run], cursor, _ = tick(watcher, instance, defs, cursor)
            assert launch(defs, instance, watcher, estimate_run).success
            requests, cursor, _ = tick(watcher, instance, defs, cursor)
            assert {r.job_name for r in requests} == {"banking77__chunk_job"}
            assert NewDatasetCursor.from_json(cursor).over_budget == {}
            assert sim.stats()["billed_usd"] == pytest.approx(estimate.sample_cost_usd, abs=1e-9)
    finally:
        receiver.stop()


def test_a_dataset_within_budget_gets_its_chunk_runs_after_the_estimate(start_sim, monkeypatch, tmp_path):
    sim = start_sim({"seed": 4})
    point_at(sim, monkeypatch)
    spec = test_spec(estimate={"before_launch": True, "sample_size": 10}, budgets={"dataset_usd": 5.0})
    with dg.instance_for_test() as instance:
        requests, cursor, _, home, _ = _land_and_estimate(spec, tmp_path, instance)
        assert {r.job_name for r in requests} == {"banking77__chunk_job"} and len(requests) == 1
        dataset_id = requests[0].partition_key.split("__c")[0]
        assert load_estimate(home, spec.name, dataset_id).budget.within_budget
        assert NewDatasetCursor.from_json(cursor).over_budget == {}


def _land(spec, home, inbox, instance):
    """The sensor sees the file in `inbox` settle, registers it; the tick after (what it launches or holds)."""
    defs, sensors = recovery_location(spec, home, watch=str(inbox))
    watcher = sensors[WATCHER]
    _, cursor, _ = tick(watcher, instance, defs, None)
    [registration], cursor, _ = tick(watcher, instance, defs, cursor)
    assert launch(defs, instance, watcher, registration).success
    return tick(watcher, instance, defs, cursor)


def test_an_estimate_made_by_hand_holds_an_over_budget_dataset_without_before_launch(
    start_sim, monkeypatch, tmp_path
):
    """`make estimate` (or the estimate job from the Launchpad) before the file lands: the sensor judges that
    estimate although the spec does not ask for one, holds the chunks and alerts; without an estimate it launches."""
    sim = start_sim({"seed": 4})
    point_at(sim, monkeypatch)
    receiver = WebhookReceiver()
    monkeypatch.setenv("CHUNKWISE_ALERT_WEBHOOK_URL", receiver.url)
    spec = test_spec(budgets={"dataset_usd": 0.05})
    assert not spec.estimate.before_launch
    inbox, home = tmp_path / "inbox", tmp_path / "home"
    inbox.mkdir()
    landed = inbox / "tickets.csv"
    write_labelled_dataset(landed, 200)
    try:
        with dg.instance_for_test() as instance:
            dataset = register(spec, str(landed), instance, home)
            estimate = estimate_dataset(spec, dataset, instance, home, sample_size=10)
            assert not estimate.budget.within_budget
            paid = sim.stats()["billed_usd"]
            requests, cursor, skip = _land(spec, home, inbox, instance)
            assert requests == [] and "1 datasets held by their estimate" in skip
            assert NewDatasetCursor.from_json(cursor).over_budget.keys() == {dataset.dataset_id}
            [alert] = receiver.received
            assert alert["kind"] == "estimate_hold" and "budgets.dataset_usd" in alert["text"]
            assert sim.stats()["billed_usd"] == paid  # the hold sent nothing

        # The same file with no estimate on record: launched as before.
        with dg.instance_for_test() as instance:
            requests, cursor, _ = _land(spec, tmp_path / "fresh", inbox, instance)
            assert {r.job_name for r in requests} == {"banking77__chunk_job"}
            assert NewDatasetCursor.from_json(cursor).over_budget == {}
    finally:
        receiver.stop()
