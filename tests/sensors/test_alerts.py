"""The check-alert sensor against a real Dagster instance and a real HTTP receiver on localhost: on toy checks,
and on the quality gates of the spec pipelines the code location builds (each alert names its pipeline's asset)."""

import json
import logging
import socket
import sys
import warnings
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recovery_support import write_labelled_dataset  # noqa: E402
from webhook_receiver import WebhookReceiver  # noqa: E402

from llm_assets.location import build_defs  # noqa: E402
from sensors.alerts import WEBHOOK_ENV, AlertCursor, build_check_alert_sensor, check_alert_sensor  # noqa: E402
from tests.spec_pipelines import layout_of, point_at, register_file, run_chunk, test_spec  # noqa: E402

# The toy checks below are partitioned like the pipeline's (a preview feature in dagster 1.13).
warnings.filterwarnings(
    "ignore", message=".*partitions_def on an AssetCheckSpec.*", category=dg.PreviewWarning
)
# No `from __future__ import annotations` here: Dagster reads the `context` annotation at definition time.

parts = dg.StaticPartitionsDefinition(["chunk-a", "chunk-b", "chunk-c"])


@dg.asset(partitions_def=parts)
def scores() -> int:
    return 1


@dg.asset_check(asset=scores, partitions_def=parts, blocking=True)
def must_pass(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    ok = context.partition_key == "chunk-b"
    return dg.AssetCheckResult(
        passed=ok,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"accuracy": 0.25, "threshold": 0.5, "note": "x"},
    )


@dg.asset_check(asset=scores, partitions_def=parts)
def nice_to_have(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata={"psi": 0.4})


def _run(instance: dg.DagsterInstance, partition: str) -> None:
    dg.materialize(
        [scores, must_pass, nice_to_have], instance=instance, partition_key=partition, raise_on_error=False
    )


def _tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None):
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))
    return data.cursor, data.skip_message


@pytest.fixture
def receiver():
    made: list[WebhookReceiver] = []

    def make(statuses: list[int] | None = None) -> WebhookReceiver:
        made.append(WebhookReceiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.stop()


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_failed_error_check_posts_one_slack_compatible_alert_with_fields(
    instance, receiver, monkeypatch, caplog
):
    hook = receiver()
    monkeypatch.setenv(WEBHOOK_ENV, hook.url)
    monkeypatch.setenv("CHUNKWISE_UI_BASE_URL", "http://dagster.example:3000/")
    _run(instance, "chunk-a")

    with caplog.at_level(logging.DEBUG):
        cursor, _ = _tick(check_alert_sensor, instance, None)

    assert "secret-token" not in caplog.text  # httpx logs request URLs at INFO; the webhook's is dropped

    assert len(hook.received) == 1  # the WARN failure is below the default ERROR level
    alert = hook.received[0]
    assert (alert["asset"], alert["partition"], alert["check"], alert["severity"]) == (
        "scores", "chunk-a", "must_pass", "ERROR"
    )  # fmt: skip
    assert alert["blocking"] is True
    assert alert["numbers"] == {"accuracy": 0.25, "threshold": 0.5}
    assert alert["url"] == "http://dagster.example:3000/assets/scores?view=partitions&partition=chunk-a"
    assert "scores:must_pass" in alert["text"] and alert["url"] in alert["text"]
    assert alert["run_id"] and alert["alert_id"].startswith(alert["run_id"] + ":")

    again, _ = _tick(check_alert_sensor, instance, cursor)
    assert len(hook.received) == 1
    assert AlertCursor.from_json(again).pending == []


def test_a_restarted_sensor_resumes_from_its_cursor_and_alerts_each_failure_once(
    instance, receiver, monkeypatch
):
    hook = receiver()
    monkeypatch.setenv(WEBHOOK_ENV, hook.url)
    _run(instance, "chunk-a")
    cursor, _ = _tick(check_alert_sensor, instance, None)
    _run(instance, "chunk-b")  # passes: no alert
    _run(instance, "chunk-c")

    # A new sensor object (daemon restart) with the cursor Dagster saved.
    restarted = build_check_alert_sensor()
    cursor, _ = _tick(restarted, instance, cursor)
    cursor, _ = _tick(restarted, instance, cursor)

    assert [a["partition"] for a in hook.received] == ["chunk-a", "chunk-c"]
    assert len({a["alert_id"] for a in hook.received}) == 2


def test_webhook_answering_500_twice_then_200_gets_the_alert_once_on_the_third_tick(
    instance, receiver, monkeypatch
):
    hook = receiver(statuses=[500, 500])
    monkeypatch.setenv(WEBHOOK_ENV, hook.url)
    _run(instance, "chunk-a")

    cursor, skip = _tick(check_alert_sensor, instance, None)
    assert hook.received == [] and hook.attempts == 1 and "HTTP 500" in skip
    assert len(AlertCursor.from_json(cursor).pending) == 1
    cursor, _ = _tick(check_alert_sensor, instance, cursor)
    assert hook.received == [] and hook.attempts == 2
    cursor, _ = _tick(check_alert_sensor, instance, cursor)
    assert len(hook.received) == 1 and hook.attempts == 3
    cursor, _ = _tick(check_alert_sensor, instance, cursor)
    assert len(hook.received) == 1 and hook.attempts == 3
    state = AlertCursor.from_json(cursor)
    assert state.pending == [] and state.delivered_total == 1 and state.failed_posts_total == 2


def test_warn_failures_alert_only_when_the_level_is_warn(instance, receiver, monkeypatch):
    hook = receiver()
    monkeypatch.setenv(WEBHOOK_ENV, hook.url)
    monkeypatch.setenv("CHUNKWISE_ALERT_MIN_SEVERITY", "WARN")
    _run(instance, "chunk-b")  # must_pass passes, nice_to_have fails with WARN

    _tick(check_alert_sensor, instance, None)

    assert [(a["check"], a["severity"]) for a in hook.received] == [("nice_to_have", "WARN")]


def test_webhook_url_is_never_in_logs_cursor_or_tick_messages(instance, monkeypatch, caplog):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks/T000/B000/very-secret-token"
    monkeypatch.setenv(WEBHOOK_ENV, url)
    _run(instance, "chunk-a")

    with caplog.at_level(logging.DEBUG):
        cursor, skip = _tick(check_alert_sensor, instance, None)

    assert "ConnectError" in skip
    assert len(AlertCursor.from_json(cursor).pending) == 1  # kept for the next tick
    for text in (cursor, skip, caplog.text, json.dumps(AlertCursor.from_json(cursor).pending)):
        assert "very-secret-token" not in text and url not in text


def test_without_a_webhook_nothing_is_read_so_nothing_is_lost(instance, receiver, monkeypatch):
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    _run(instance, "chunk-a")
    cursor, skip = _tick(check_alert_sensor, instance, None)
    assert cursor is None and WEBHOOK_ENV in skip

    hook = receiver()
    monkeypatch.setenv(WEBHOOK_ENV, hook.url)
    _tick(check_alert_sensor, instance, cursor)
    assert [a["partition"] for a in hook.received] == ["chunk-a"]


@pytest.mark.slow
def test_the_code_locations_sensor_alerts_failed_gates_of_every_pipeline_with_their_own_asset_and_link(
    start_sim, tmp_path, instance, receiver, monkeypatch
):
    sim = start_sim({"seed": 9})
    point_at(sim, monkeypatch)
    hook = receiver()
    monkeypatch.setenv(WEBHOOK_ENV, hook.url)
    # Two pipelines in one code location, both with a `classified` stage whose success_rate gate (ERROR,
    # blocking) fails on a chunk with one refusal; their WARN gates stay below the default level.
    strict = {"classified": {"gates": {"success_rate": {"min": 1.0}}}}
    specs = [test_spec(stages=strict), test_spec(name="tickets", stages=strict)]
    defs = build_defs(specs, home=tmp_path / "home")
    sensor = {s.name: s for s in defs.sensors}["check_alert_sensor"]
    write_labelled_dataset(tmp_path / "nightly.csv", 10, markers={3: "[[refuse]]"})
    chunks = {}
    for spec in specs:
        (key,) = register_file(spec, tmp_path / "nightly.csv", instance, tmp_path / "home").partition_keys
        assert not run_chunk(defs, spec, instance, key, raise_on_error=False).success
        chunks[layout_of(spec).key("classified").to_user_string()] = key

    cursor, _ = _tick(sensor, instance, None)

    assert sorted((a["asset"], a["check"], a["severity"]) for a in hook.received) == [
        ("banking77/classified", "success_rate", "ERROR"),
        ("tickets/classified", "success_rate", "ERROR"),
    ]
    for alert in hook.received:
        pipeline = alert["asset"].split("/")[0]
        assert alert["partition"] == chunks[alert["asset"]] and alert["blocking"] is True
        assert alert["url"] == (
            f"http://127.0.0.1:3000/assets/{pipeline}/classified?view=partitions&partition={alert['partition']}"
        )
        assert f"`{alert['asset']}:success_rate`" in alert["text"]
    _tick(sensor, instance, cursor)
    assert len(hook.received) == 2
