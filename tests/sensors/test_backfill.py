"""The backfill sensor against a real instance, the simulator and a real webhook receiver on localhost.

The pipeline is BANKING77's spec with the backfill sensor the code location builds for it (recovery_support);
runs are launched the way the daemon would (recovery_support.launch); the spec's in-run retry is one quick
retry, standing for "Dagster's retries are used up" without waiting its real 5-10-20 s."""

import sys
import time
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
    runs_of,
    tick,
    write_labelled_dataset,
)
from webhook_receiver import WebhookReceiver  # noqa: E402

from llm_assets.chunk_status import ATTEMPT_TAG, BACKFILL_TAG, PROVIDER_TAG, ChunkState, chunk_states  # noqa: E402
from sensors.backfill import ALERT_WEBHOOK_ENV, BackfillCursor, BackfillPolicy, clear_provider  # noqa: E402
from sensors.halts import retry_now  # noqa: E402
from tests.spec_pipelines import layout_of, point_at, register_file  # noqa: E402


@pytest.fixture
def receiver():
    hook = WebhookReceiver()
    yield hook
    hook.stop()


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _first_runs(defs, instance, sensor, spec, dataset):
    for key in dataset.partition_keys:
        launch(defs, instance, sensor, first_attempt(spec, key))


@pytest.mark.slow
def test_outage_partitions_are_rerun_with_growing_delays_and_the_dataset_completes_unattended(
    start_sim, tmp_path, instance, monkeypatch
):
    sim = start_sim({"seed": 1})
    point_at(sim, monkeypatch)
    home = tmp_path / "home"
    write_labelled_dataset(tmp_path / "nightly.csv", 40)
    backoff = {"max_attempts": 5, "backoff_base_s": 0.4, "backoff_factor": 2.0, "backoff_max_s": 10}
    spec = recovery_spec(backfill={**backoff, "max_in_flight": 4})
    policy = BackfillPolicy(**backoff, max_in_flight=4)
    layout = layout_of(spec)
    defs, sensors = recovery_location(spec, home)
    backfill, completion = sensors[BACKFILL], sensors[COMPLETION]
    dataset = register_file(spec, tmp_path / "nightly.csv", instance, home, chunk_size=20)

    sim.set_faults(outage=True)
    _first_runs(defs, instance, backfill, spec, dataset)
    assert {s.state for s in chunk_states(instance, dataset.partition_keys, layout).values()} == {
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
            node = layout.completion_key.to_python_identifier()
            report = result.asset_materializations_for_node(node)[0].metadata
        if report is not None:
            break
        time.sleep(0.1)
    assert report is not None, (
        f"the dataset did not complete: {chunk_states(instance, dataset.partition_keys, layout)}"
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
    point_at(sim, monkeypatch)
    monkeypatch.setenv("CHUNKWISE_REVOKED_KEY", "sk-revoked-0123456789abcdef")
    home = tmp_path / "home"
    write_labelled_dataset(tmp_path / "nightly.csv", 40)
    policy = {"max_attempts": 4, "backoff_base_s": 0.05, "max_in_flight": 4}
    spec = recovery_spec(backfill=policy)
    layout = layout_of(spec)
    good, sensors = recovery_location(spec, home)
    backfill = sensors[BACKFILL]
    # The same pipeline, its provider profile reading a revoked key.
    revoked, _ = recovery_location(
        recovery_spec(backfill=policy, providers={"api_key_env": "CHUNKWISE_REVOKED_KEY"}), home
    )
    dataset = register_file(spec, tmp_path / "nightly.csv", instance, home, chunk_size=20)
    first, second = dataset.partition_keys

    result = launch(revoked, instance, backfill, first_attempt(spec, first))
    assert not result.success
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    sent_after_401 = sim.stats()["requests_total"]
    sim.set_faults(outage=True)  # and a retryable failure on the same provider
    launch(good, instance, backfill, first_attempt(spec, second))

    cursor = None
    for _ in range(6):
        requests, cursor, _ = tick(backfill, instance, good, cursor)
        assert requests == []  # the provider is blocked: not the 401 chunk, not the retryable one
        time.sleep(0.1)
    # A restarted daemon that lost its cursor re-reads both failures: still one alert, still nothing launched.
    requests, _, _ = tick(recovery_location(spec, home)[1][BACKFILL], instance, good, None)
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
    assert chunk_states(instance, [first], layout)[first].state == ChunkState.NEEDS_HUMAN
    assert sim.stats()["requests_total"] - sent_after_401 > 0  # only the outage chunk's own run sent anything

    # A person fixes the key and clears the provider: both chunks run again.
    sim.set_faults(outage=False)
    clear_provider(instance, "openai")
    requests, cursor, _ = tick(backfill, instance, good, cursor)
    assert sorted((r.partition_key, r.tags[ATTEMPT_TAG]) for r in requests) == [(first, "2"), (second, "2")]
    assert all(launch(good, instance, backfill, r).success for r in requests)
    assert len(receiver.received) == 1


def _runless_location(tmp_path, monkeypatch, backfill: dict):
    """A spec with the `backfill` policy whose runs are only recorded, never executed (nothing is called)."""
    monkeypatch.setenv("CHUNKWISE_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", "sk-x")
    spec = recovery_spec(backfill=backfill)
    layout = layout_of(spec)
    defs, sensors = recovery_location(spec, tmp_path)
    return spec, layout, defs, sensors[BACKFILL], defs.resolve_job_def(layout.chunk_job)


def _failed_first_run(instance, layout, job, key: str) -> None:
    """Record attempt 1 of chunk `key` as failed (retryable: no step failure says otherwise)."""
    instance.add_dynamic_partitions(layout.chunks_partitions, [key])
    run = instance.create_run_for_job(
        job_def=job, tags={"dagster/partition": key, PROVIDER_TAG: "openai", ATTEMPT_TAG: "1"},
        status=dg.DagsterRunStatus.NOT_STARTED,
    )  # fmt: skip
    instance.report_run_failed(run)


def test_no_rerun_is_launched_while_the_provider_has_max_in_flight_runs(tmp_path, instance, monkeypatch):
    _, layout, defs, backfill, job = _runless_location(
        tmp_path, monkeypatch, {"max_attempts": 3, "backoff_base_s": 0.0, "max_in_flight": 2}
    )
    for i in range(3):
        _failed_first_run(instance, layout, job, f"ds-{i}__c00000")
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


def test_retry_now_reruns_earlier_retryable_failures_at_the_next_tick_and_later_ones_after_backoff(
    tmp_path, instance, monkeypatch
):
    """`make demo` run again (or `python -m sensors.backfill retry-now <pipeline>`): the chunks that failed for a
    retryable reason before it are re-run at the next tick, not after an hour's backoff; a failure after it
    waits its backoff as usual."""
    spec, layout, defs, backfill, job = _runless_location(
        tmp_path, monkeypatch, {"max_attempts": 3, "backoff_base_s": 3600.0, "max_in_flight": 8}
    )
    _failed_first_run(instance, layout, job, "ds-0__c00000")
    requests, cursor, _ = tick(backfill, instance, defs, None)
    assert requests == []  # due in an hour
    retry_now(instance, spec.name)
    time.sleep(0.01)
    _failed_first_run(instance, layout, job, "ds-0__c00001")  # after the person's decision: its own backoff
    requests, cursor, _ = tick(backfill, instance, defs, cursor)
    assert [(r.partition_key, r.tags[ATTEMPT_TAG]) for r in requests] == [("ds-0__c00000", "2")]
    requests, cursor, _ = tick(backfill, instance, defs, cursor)
    assert requests == []
