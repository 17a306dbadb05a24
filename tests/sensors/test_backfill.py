"""The backfill sensor against a real instance, the simulator and a real webhook receiver on localhost.

Runs are launched the way the daemon would (recovery_support.launch); the in-run RetryPolicy is shortened to
one quick retry, standing for "Dagster's retries are used up" without waiting its real 5-10-20 s."""

import sys
import time
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recovery_support import launch, recovery_defs, runs_of, tick, write_labelled_dataset  # noqa: E402
from webhook_receiver import WebhookReceiver  # noqa: E402

from llm_assets.assets import classified, enriched  # noqa: E402
from llm_assets.chunk_status import ATTEMPT_TAG, BACKFILL_TAG, PROVIDER_TAG, ChunkState, chunk_states  # noqa: E402
from llm_assets.datasets import DatasetSpec, register_dataset  # noqa: E402
from sensors.backfill import (
    ALERT_WEBHOOK_ENV,
    BackfillCursor,
    BackfillPolicy,
    build_backfill_sensor,
    clear_provider,
)  # noqa: E402
from sensors.chunk_runs import chunk_run_request  # noqa: E402
from sensors.completion import build_completion_sensor  # noqa: E402

QUICK_RETRY = dg.RetryPolicy(max_retries=1, delay=0.05)


@pytest.fixture(autouse=True)
def quick_in_run_retries(monkeypatch):
    for asset in (classified, enriched):
        monkeypatch.setattr(asset.node_def, "_retry_policy", QUICK_RETRY)


@pytest.fixture
def receiver():
    hook = WebhookReceiver()
    yield hook
    hook.stop()


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _first_runs(defs, instance, sensor, dataset, provider="openai"):
    for key in dataset.partition_keys:
        launch(defs, instance, sensor, chunk_run_request(key, 1, provider, "new_dataset"))


@pytest.mark.slow
def test_outage_partitions_are_rerun_with_growing_delays_and_the_dataset_completes_unattended(
    start_sim, tmp_path, instance
):
    sim = start_sim({"seed": 1})
    home = tmp_path / "home"
    write_labelled_dataset(tmp_path / "nightly.csv", 40)
    policy = BackfillPolicy(
        max_attempts=5, backoff_base_s=0.4, backoff_factor=2.0, backoff_max_s=10, max_in_flight=4
    )
    backfill = build_backfill_sensor(policy=policy, minimum_interval_seconds=1)
    completion = build_completion_sensor(minimum_interval_seconds=1)
    defs = recovery_defs(sim.base_url, sim.api_key, home, [backfill, completion])
    dataset = register_dataset(DatasetSpec(uri=str(tmp_path / "nightly.csv"), chunk_size=20), instance, home)

    sim.set_faults(outage=True)
    _first_runs(defs, instance, backfill, dataset)
    assert {s.state for s in chunk_states(instance, dataset.partition_keys).values()} == {
        ChunkState.RETRY_PENDING
    }

    cursor = None
    completion_cursor = None
    launched = 0
    deadline = time.monotonic() + 90
    report = None
    while time.monotonic() < deadline:
        requests, cursor, _ = tick(backfill, instance, defs, cursor)
        for request in requests:
            if int(request.tags[ATTEMPT_TAG]) >= 3:
                sim.set_faults(outage=False)  # the provider comes back during the third attempt's wait
            launched += launch(defs, instance, backfill, request) is not None
        done, completion_cursor, _ = tick(completion, instance, defs, completion_cursor)
        for request in done:
            result = launch(defs, instance, completion, request)
            assert result is not None and result.success
            report = result.asset_materializations_for_node("dataset_complete")[0].metadata
        if report is not None:
            break
        time.sleep(0.1)
    assert report is not None, (
        f"the dataset did not complete: {chunk_states(instance, dataset.partition_keys)}"
    )

    for key in dataset.partition_keys:
        runs = runs_of(instance, key)
        assert [r.dagster_run.tags[ATTEMPT_TAG] for r in runs] == ["1", "2", "3"]
        assert [r.dagster_run.status for r in runs] == [dg.DagsterRunStatus.FAILURE] * 2 + [
            dg.DagsterRunStatus.SUCCESS
        ]
        waits = [runs[i + 1].create_timestamp.timestamp() - runs[i].end_time for i in range(2)]
        # Each re-run waited at least its (growing) backoff delay. Only lower bounds: a loaded machine makes
        # any wait longer, so comparing the measured waits with each other would test the machine, not us.
        assert policy.delay_s(2) > policy.delay_s(1)
        assert waits[0] >= policy.delay_s(1) and waits[1] >= policy.delay_s(2)  # 0.4 s, then 0.8 s
    assert launched == 2 * len(dataset.partition_keys)  # two re-runs per chunk, within max_attempts - 1
    assert BackfillCursor.from_json(cursor).needs_human_total == 0
    assert report["succeeded"].value == 40 and report["threshold_met"].value is True
    assert Path(report["report_uri"].value).exists()


def test_a_401_on_one_chunk_alerts_a_human_once_and_launches_nothing_more_until_cleared(
    start_sim, tmp_path, instance, receiver, monkeypatch
):
    monkeypatch.setenv(ALERT_WEBHOOK_ENV, receiver.url)
    sim = start_sim({"seed": 2})
    home = tmp_path / "home"
    write_labelled_dataset(tmp_path / "nightly.csv", 40)
    policy = BackfillPolicy(max_attempts=4, backoff_base_s=0.05, max_in_flight=4)
    backfill = build_backfill_sensor(policy=policy)
    good = recovery_defs(sim.base_url, sim.api_key, home, [backfill])
    revoked = recovery_defs(sim.base_url, "sk-revoked-0123456789abcdef", home, [backfill])
    dataset = register_dataset(DatasetSpec(uri=str(tmp_path / "nightly.csv"), chunk_size=20), instance, home)
    first, second = dataset.partition_keys

    result = launch(revoked, instance, backfill, chunk_run_request(first, 1, "openai", "new_dataset"))
    assert not result.success
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    sent_after_401 = sim.stats()["requests_total"]
    sim.set_faults(outage=True)  # and a retryable failure on the same provider
    launch(good, instance, backfill, chunk_run_request(second, 1, "openai", "new_dataset"))

    cursor = None
    for _ in range(6):
        requests, cursor, _ = tick(backfill, instance, good, cursor)
        assert requests == []  # the provider is blocked: not the 401 chunk, not the retryable one
        time.sleep(0.1)
    # A restarted daemon that lost its cursor re-reads both failures: still one alert, still nothing launched.
    requests, _, _ = tick(build_backfill_sensor(policy=policy), instance, good, None)
    assert requests == []

    assert len(receiver.received) == 1
    alert = receiver.received[0]
    assert (alert["kind"], alert["reason"], alert["provider"], alert["partition"]) == (
        "needs_human", "auth", "openai", first,
    )  # fmt: skip
    assert "sensors.backfill clear openai" in alert["text"]
    assert "sk-revoked" not in str(alert) and receiver.url not in str(alert)
    state = BackfillCursor.from_json(cursor)
    assert set(state.blocked) == {"openai"} and set(state.held) == {first}
    assert instance.get_run_by_id(result.run_id).tags[BACKFILL_TAG] == "needs_human"
    assert chunk_states(instance, [first])[first].state == ChunkState.NEEDS_HUMAN
    assert sim.stats()["requests_total"] - sent_after_401 > 0  # only the outage chunk's own run sent anything

    # A person fixes the key and clears the provider: both chunks run again.
    sim.set_faults(outage=False)
    clear_provider(instance, "openai")
    requests, cursor, _ = tick(backfill, instance, good, cursor)
    assert sorted((r.partition_key, r.tags[ATTEMPT_TAG]) for r in requests) == [(first, "2"), (second, "2")]
    assert all(launch(good, instance, backfill, r).success for r in requests)
    assert len(receiver.received) == 1


def test_no_rerun_is_launched_while_the_provider_has_max_in_flight_runs(tmp_path, instance):
    policy = BackfillPolicy(max_attempts=3, backoff_base_s=0.0, max_in_flight=2)
    backfill = build_backfill_sensor(policy=policy)
    defs = recovery_defs("http://127.0.0.1:9", "sk-x", tmp_path, [backfill])
    job = defs.resolve_job_def("chunk_pipeline")
    failed = []
    for i in range(3):
        key = f"ds-{i}__c00000"
        instance.add_dynamic_partitions("chunks", [key])
        run = instance.create_run_for_job(
            job_def=job, tags={"dagster/partition": key, PROVIDER_TAG: "openai", ATTEMPT_TAG: "1"},
            status=dg.DagsterRunStatus.NOT_STARTED,
        )  # fmt: skip
        instance.report_run_failed(run)
        failed.append(key)
    for i in range(2):  # two runs of the provider about to start elsewhere (e.g. a new dataset's chunks)
        instance.create_run_for_job(
            job_def=job, tags={"dagster/partition": f"other-{i}__c00000", PROVIDER_TAG: "openai"},
            status=dg.DagsterRunStatus.NOT_STARTED,
        )  # fmt: skip

    requests, cursor, skip = tick(backfill, instance, defs, None)
    assert requests == [] and "3 scheduled" in skip

    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.NOT_STARTED])):
        instance.report_run_canceled(run)
    requests, cursor, _ = tick(backfill, instance, defs, cursor)
    assert len(requests) == 2  # room for two; the third waits for the next tick
    assert {r.tags[ATTEMPT_TAG] for r in requests} == {"2"}


def test_the_shipped_dagster_yaml_queues_runs_with_a_limit_per_provider(tmp_path):
    import shutil

    from dagster._core.run_coordinator import QueuedRunCoordinator

    shutil.copy(Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as configured:
        assert isinstance(configured.run_coordinator, QueuedRunCoordinator)
        limits = configured.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert {(d["key"], d.get("value")) for d in limits} >= {
        (PROVIDER_TAG, "openai"),
        (PROVIDER_TAG, "anthropic"),
    }
