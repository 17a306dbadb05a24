"""Asset-check alerts: one JSON message per failed check evaluation, POSTed to a webhook (Slack-compatible).

Each tick reads the runs that finished since the cursor (run-status events, which every event-log storage
indexes across runs, including the default run-sharded SQLite one), turns every failed check evaluation of
those runs at or above the configured severity into an alert, and POSTs the pending alerts in order. Alerts go
out when the chunk's run ends. The cursor holds how far the finished runs were read AND the alerts not yet
delivered, so:
- a restarted daemon neither re-sends nor forgets (the cursor is Dagster's, saved after each tick);
- a webhook that is down (non-2xx, timeout, refused) keeps the alerts pending; they go out on the next tick;
- delivery is at-least-once if the process dies between a POST and the end of its tick; every message carries
  `alert_id` (`<run id>:<event storage id>`) so a receiver can drop the rare duplicate.
Evaluations reported outside any run (`report_runless_asset_event`) are not alerted; every gate here runs in a run.

Settings (read at every tick, so a change needs no redeploy):
- `CHUNKWISE_ALERT_WEBHOOK_URL`: the webhook; a secret, never logged or put in a message or error
  (posting and redaction are sensors/webhooks.py's, shared with the completion notice).
- `CHUNKWISE_ALERT_MIN_SEVERITY`: `ERROR` (default: blocking gates only) or `WARN` (also drift and cost).
- `CHUNKWISE_UI_BASE_URL`: the Dagster UI root for links (default `http://127.0.0.1:3000`).
"""

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

import dagster as dg

from sensors.webhooks import deliver, webhook_url

WEBHOOK_ENV = "CHUNKWISE_ALERT_WEBHOOK_URL"
MIN_SEVERITY_ENV = "CHUNKWISE_ALERT_MIN_SEVERITY"
UI_BASE_URL_ENV = "CHUNKWISE_UI_BASE_URL"
DEFAULT_UI_BASE_URL = "http://127.0.0.1:3000"
_SEVERITY_RANK = {"WARN": 1, "ERROR": 2}
# A run's check evaluations are all written by the time the run ends; a failed blocking check fails the run.
FINISHED_RUN_EVENTS = (
    dg.DagsterEventType.RUN_SUCCESS,
    dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterEventType.RUN_CANCELED,
)


@dataclass
class AlertCursor:
    """The sensor's state: how far the finished runs were read, and alerts built but not yet delivered."""

    after: dict[str, str] = field(default_factory=dict)
    """Per run-status event type (RUN_SUCCESS, ...), the event-log cursor of the last finished run read."""
    pending: list[dict[str, Any]] = field(default_factory=list)
    delivered_total: int = 0
    failed_posts_total: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "AlertCursor":
        if not text:
            return cls()
        return cls(**json.loads(text))


def _numbers(evaluation: dg.AssetCheckEvaluation) -> dict[str, float | int]:
    """The evaluation's numeric metadata (what a person compares against the threshold)."""
    out: dict[str, float | int] = {}
    for name, value in evaluation.metadata.items():
        raw = value.value
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            out[name] = raw
    return out


def partition_link(ui_base_url: str, asset: dg.AssetKey, partition: str | None) -> str:
    """The UI page of one partition of an asset (the asset's page when unpartitioned)."""
    path = "/".join(quote(part, safe="") for part in asset.path)
    link = f"{ui_base_url.rstrip('/')}/assets/{path}"
    return f"{link}?view=partitions&partition={quote(partition, safe='')}" if partition else link


def alert_message(
    evaluation: dg.AssetCheckEvaluation, *, alert_id: str, run_id: str, ui_base_url: str
) -> dict[str, Any]:
    """The webhook body for one failed evaluation: Slack's `text` plus structured fields."""
    asset = evaluation.asset_key.to_user_string()
    severity = evaluation.severity.value
    link = partition_link(ui_base_url, evaluation.asset_key, evaluation.partition)
    where = f" on partition `{evaluation.partition}`" if evaluation.partition else ""
    blocking = (
        " (blocking: downstream not materialized)" if evaluation.blocking and severity == "ERROR" else ""
    )
    text = (
        f"{':red_circle:' if severity == 'ERROR' else ':warning:'} {severity}: check `{asset}:{evaluation.check_name}` "
        f"failed{where}{blocking}. {evaluation.description or ''} <{link}|Open in Dagster>"
    )
    return {
        "text": text,
        "alert_id": alert_id,
        "asset": asset,
        "partition": evaluation.partition,
        "check": evaluation.check_name,
        "severity": severity,
        "blocking": bool(evaluation.blocking),
        "description": evaluation.description,
        "numbers": _numbers(evaluation),
        "run_id": run_id,
        "url": link,
    }


def _alerts_for_run(
    instance: dg.DagsterInstance, run_id: str, level: str, ui_base_url: str
) -> list[dict[str, Any]]:
    """One alert per failed check evaluation of the run at or above `level`, in event order."""
    alerts = []
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    for record in records:
        event = record.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event else None
        if not isinstance(evaluation, dg.AssetCheckEvaluation) or evaluation.passed:
            continue
        if _SEVERITY_RANK[evaluation.severity.value] < _SEVERITY_RANK[level]:
            continue
        alerts.append(
            alert_message(
                evaluation, alert_id=f"{run_id}:{record.storage_id}", run_id=run_id, ui_base_url=ui_base_url
            )
        )
    return alerts


def build_check_alert_sensor(
    *,
    name: str = "check_alert_sensor",
    webhook_env_var: str = WEBHOOK_ENV,
    min_severity: str | None = None,
    ui_base_url: str | None = None,
    minimum_interval_seconds: int = 30,
    read_limit: int = 500,
    max_pending: int = 1000,
    timeout_s: float = 5.0,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """A sensor alerting on failed asset checks. `min_severity`/`ui_base_url` None: read from the environment
    at each tick. At most `read_limit` finished runs per run status are read per tick, and reading pauses
    while `max_pending` alerts wait for the webhook (unread runs stay in the event log: nothing is dropped)."""

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            "Watches the runs that finish for failed asset-check evaluations at or above "
            f"${MIN_SEVERITY_ENV} (default ERROR). Launches no run: POSTs one JSON message (Slack-compatible "
            f"`text` + fields) per failure to the webhook in ${webhook_env_var}, linking to ${UI_BASE_URL_ENV} "
            f"(default {DEFAULT_UI_BASE_URL}). Needs the Dagster daemon and ${webhook_env_var} (unset: it reads and "
            "sends nothing). Undelivered alerts stay in the cursor and are retried every tick."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        url = webhook_url(webhook_env_var)
        if url is None:
            return dg.SkipReason(f"${webhook_env_var} is not set: no alerts are read or sent until it is")
        level = (min_severity or os.environ.get(MIN_SEVERITY_ENV) or "ERROR").upper()
        if level not in _SEVERITY_RANK:
            raise ValueError(
                f"alert severity {level!r} is not WARN or ERROR; set ${MIN_SEVERITY_ENV} to one of them"
            )
        base = ui_base_url or os.environ.get(UI_BASE_URL_ENV) or DEFAULT_UI_BASE_URL
        state = AlertCursor.from_json(context.cursor)

        read = 0
        for status in FINISHED_RUN_EVENTS:
            if len(state.pending) >= max_pending:
                break
            result = context.instance.fetch_run_status_changes(
                status,
                limit=read_limit,
                cursor=state.after.get(status.value),
                ascending=True,
            )
            for record in result.records:
                read += 1
                state.pending += _alerts_for_run(context.instance, record.event_log_entry.run_id, level, base)
            if result.records:
                state.after[status.value] = result.cursor

        delivered, problem = deliver(url, state.pending, timeout_s)
        if problem:
            state.failed_posts_total += 1
        state.delivered_total += delivered
        context.update_cursor(state.to_json())
        summary = f"read {read} finished runs, delivered {delivered} alerts, {len(state.pending)} pending"
        if problem:
            context.log.warning(f"alert webhook failed ({problem}); {summary}; retrying next tick")
            return dg.SkipReason(f"webhook failed ({problem}); {summary}")
        return dg.SkipReason(summary)

    return _sensor


check_alert_sensor = build_check_alert_sensor()
"""Register in definitions: `dg.Definitions(sensors=[check_alert_sensor, ...])`."""
