"""Why a chunk's run failed: a quality gate, a retryable outage, or a job-fatal error.

A partition looks FAILED in Dagster both when execution failed and when a blocking asset check failed
downstream of a successful materialization. Retrying the second kind only buys the same bad answers again,
so the backfill sensor asks `run_failure_class` before it re-runs anything.

Recorded as run tags (set by the failing blocking check, see llm_assets/checks.py):
- `chunkwise/failure_class` = `quality_gate`
- `chunkwise/failed_gates`  = comma-separated `<asset>:<check>` names
Without the tag, the class is read from the run's step failures: resources/llm's `JobFatalError`
(auth, quota, budget, config) is `job_fatal`; any other step error is `retryable`.
"""

from __future__ import annotations

from enum import StrEnum

import dagster as dg

FAILURE_CLASS_TAG = "chunkwise/failure_class"
FAILED_GATES_TAG = "chunkwise/failed_gates"
# The error class Dagster raises when a blocking check fails with ERROR severity.
_CHECK_FAILED_ERROR = "DagsterAssetCheckFailedError"
# resources/llm raises JobFatalError (a dg.Failure with allow_retries=False) for auth, quota, budget, config.
_JOB_FATAL_ERRORS = {"JobFatalError"}


class FailureClass(StrEnum):
    QUALITY_GATE = "quality_gate"  # the chunk ran, its outputs failed a blocking gate: needs a person
    RETRYABLE = "retryable"  # outage, rate-limit storm, timeouts: re-run with backoff
    JOB_FATAL = "job_fatal"  # credentials, quota, budget, config: stop and tell a person


def mark_quality_gate_failure(instance: dg.DagsterInstance, run_id: str, gate: str) -> None:
    """Tag `run_id` as failed by the blocking gate `gate` (`<asset>:<check>`); gates accumulate."""
    run = instance.get_run_by_id(run_id)
    existing = run.tags.get(FAILED_GATES_TAG, "") if run else ""
    gates = [g for g in existing.split(",") if g]
    if gate not in gates:
        gates.append(gate)
    instance.add_run_tags(
        run_id, {FAILURE_CLASS_TAG: FailureClass.QUALITY_GATE.value, FAILED_GATES_TAG: ",".join(gates)}
    )


def run_failure_class(instance: dg.DagsterInstance, run_id: str) -> FailureClass | None:
    """The class of a failed run; None when the run has no step failure and no gate tag (it did not fail)."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise ValueError(f"run {run_id} is not in this Dagster instance; pass the id of a run it holds")
    tagged = run.tags.get(FAILURE_CLASS_TAG)
    if tagged:
        return FailureClass(tagged)
    failures = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    if not failures:
        return None
    names = {name for entry in failures for name in _error_class_names(entry)}
    if _CHECK_FAILED_ERROR in names:
        return FailureClass.QUALITY_GATE
    if names & _JOB_FATAL_ERRORS:
        return FailureClass.JOB_FATAL
    return FailureClass.RETRYABLE


def _error_class_names(entry: dg.EventLogEntry) -> set[str]:
    """Class names along a step failure's error chain (cause and context), e.g. {"JobFatalError"}."""
    data = entry.dagster_event.step_failure_data if entry.dagster_event else None
    pending = [data.error] if data and data.error else []
    names: set[str] = set()
    while pending:
        error = pending.pop()
        if error.cls_name:
            names.add(error.cls_name)
        pending += [e for e in (error.cause, error.context) if e is not None]
    return names


def job_fatal_reason(instance: dg.DagsterInstance, run_id: str) -> tuple[str, str]:
    """(reason, message) of a job-fatal step failure: JobFatalError's `reason` metadata and its description."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = entry.dagster_event.step_failure_data if entry.dagster_event else None
        if data is None:
            continue
        meta = data.user_failure_data.metadata if data.user_failure_data else {}
        reason = meta.get("reason")
        message = data.error.message.strip() if data.error else ""
        return (str(reason.value) if reason is not None else "unknown"), message
    return "unknown", ""
