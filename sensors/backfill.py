"""The backfill sensor: re-run chunk partitions whose latest run failed for a retryable reason, with backoff.

One sensor serves every pipeline of the code location (`layouts`: the built-in one and those built from specs,
llm_assets/layout.py). A failed run belongs to the pipeline whose chunk job it ran (a run of the pipeline's
assets launched from the UI, `__ASSET_JOB`, to the pipeline owning them); its re-run is a run of that chunk job.
Runs of other jobs (a dataset's completion, ...) are not its business. Halts and blocks are per provider,
whichever pipeline hit them.

Each tick:
0. marks failed the runs orphaned by a kill (llm_assets/run_liveness.py), so they are read as failures below;
1. reads the runs that failed since the last tick (run-failure events, in order, from the cursor on) and, for
   each one that is still its chunk's latest run, classifies the failure (llm_assets/failure_class.py):
   - retryable (outage, rate-limit storm, timeouts): schedules attempt n+1 after
     `min(backoff_max_s, backoff_base_s * backoff_factor ** (n - 1))` seconds from the failure, where n is
     the failed run's `chunkwise/attempt` tag; after `max_attempts` runs the chunk is given up (the run is
     tagged `chunkwise/backfill=gave_up`: a terminal failure the completion report counts);
   - quality gate: not retried (the same prompt gives the same answers); tagged `needs_human`, logged once
     (the check-alert sensor already posted the failed check);
   - job-fatal (auth, quota, budget, config): not retried; the provider is *blocked*: one "needs a human"
     log line and one webhook notice, and nothing more is launched for that provider until a person clears it;
2. lifts a block a person cleared (see "Clearing a block");
3. launches the due re-runs, oldest first, while fewer than `max_in_flight` runs of that provider are queued
   or running (runs tagged `chunkwise/provider`), each a RunRequest with `run_key=<partition>:attempt-<n>`
   and the tags `chunkwise/attempt`, `chunkwise/dataset`, `chunkwise/provider`;
4. POSTs pending notices to `$CHUNKWISE_ALERT_WEBHOOK_URL` (a secret, never logged); a failed POST is kept
   in the cursor and retried next tick.

Restarts: the cursor (JSON, saved by Dagster after each tick) holds the read position, the schedule and the
blocks; the attempt number travels on the runs themselves (`chunkwise/attempt`), and Dagster never launches
a sensor's `run_key` twice, so a daemon restarted mid-tick, even with a lost cursor, neither forgets attempts
nor launches a duplicate.

Retrying now: `python -m sensors.backfill retry-now <pipeline>` (and every `make demo` start, for its pipeline)
makes the re-runs of that pipeline's chunks whose failed run was launched before it due at the next tick instead
of after their backoff (a run killed with the previous session counts, even if the sweep fails it later);
attempts still count against `max_attempts`.

Clearing a block (after fixing the key, the quota or the budget):
    python -m sensors.backfill clear openai        # or: anthropic
writes `chunkwise/backfill/clear/<provider>` into the Dagster instance's key-value store (same
`$DAGSTER_HOME`) and lifts the provider's halts in the spend ledger (sensors/halts.py), so requests may be sent
again; the next tick lifts the block and re-runs the chunks the failure stopped, as their next attempt. `python -m sensors.backfill status` prints what is blocked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg

from llm_assets.chunk_status import (
    ATTEMPT_TAG,
    BACKFILL_TAG,
    GAVE_UP,
    IN_FLIGHT_STATUSES,
    NEEDS_HUMAN,
    PARTITION_TAG,
    PROVIDER_TAG,
    RETRY_SCHEDULED,
)
from llm_assets.failure_class import FailureClass, job_fatal_reason, run_failure_class
from llm_assets.layout import DEFAULT_ALERT_WEBHOOK_ENV, PipelineLayout, layout_for_job
from llm_assets.partitions import parse_chunk_key
from llm_assets.run_liveness import fail_orphaned_runs
from sensors.chunk_runs import (
    ExecutableJob,
    chunk_run_request,
    layout_providers,
    sensor_targets,
)
from sensors.halts import clear_provider, cleared_at, provider_stop, record_block, retry_now, retry_now_at
from sensors.webhooks import deliver, webhook_url

ALERT_WEBHOOK_ENV = DEFAULT_ALERT_WEBHOOK_ENV
"""The default of a spec's `notifications.alert_webhook_env`."""


@dataclass(frozen=True)
class BackfillPolicy:
    """How failed chunks are retried. Seconds for times; `max_attempts` counts every run of a chunk."""

    max_attempts: int = 4
    backoff_base_s: float = 60.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 3600.0
    max_in_flight: int = 8
    """Per provider: queued + running runs tagged with it; no re-run is launched at or above this."""

    @classmethod
    def of(cls, layout: PipelineLayout, default: BackfillPolicy | None = None) -> BackfillPolicy:
        """The pipeline's own policy (its spec's `backfill`), else `default`, else the defaults."""
        if layout.backfill:
            return cls(**dict(layout.backfill))
        return default or cls()

    def delay_s(self, failed_attempt: int) -> float:
        """Wait after the `failed_attempt`-th run failed: base, base*factor, base*factor^2, ... capped."""
        return min(
            self.backoff_max_s, self.backoff_base_s * self.backoff_factor ** max(0, failed_attempt - 1)
        )


@dataclass
class BackfillCursor:
    after: str | None = None
    """Event-log cursor of the last run failure read."""
    scheduled: dict[str, dict[str, Any]] = field(default_factory=dict)
    """partition -> {attempt, due_at (unix s), provider, failed_run, job} (no `job`: the built-in chunk job)"""
    blocked: dict[str, dict[str, Any]] = field(default_factory=dict)
    """provider -> {since, reason, partition, run_id, message}"""
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    """partition -> {attempt, provider, failed_run, job}: stopped by a job-fatal failure, re-run when cleared"""
    notices: list[dict[str, Any]] = field(default_factory=list)
    launched_total: int = 0
    gave_up_total: int = 0
    needs_human_total: int = 0
    failed_posts_total: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> BackfillCursor:
        return cls(**json.loads(text)) if text else cls()


def _is_latest_run(instance: dg.DagsterInstance, partition: str, run_id: str) -> bool:
    newest = instance.get_run_records(filters=dg.RunsFilter(tags={PARTITION_TAG: partition}), limit=1)
    return bool(newest) and newest[0].dagster_run.run_id == run_id


def _in_flight(instance: dg.DagsterInstance, provider: str) -> int:
    return instance.get_runs_count(
        filters=dg.RunsFilter(statuses=IN_FLIGHT_STATUSES, tags={PROVIDER_TAG: provider})
    )


def _needs_human_notice(
    provider: str, reason: str, partition: str, run_id: str, message: str
) -> dict[str, Any]:
    text = (
        f":rotating_light: Chunkwise needs a human: provider `{provider}` stopped ({reason}) on chunk "
        f"`{partition}`: {message} Nothing more is launched for `{provider}` until cleared: fix the cause, then "
        f"run `python -m sensors.backfill clear {provider}`."
    )
    return {
        "text": text,
        "kind": "needs_human",
        "failure_class": FailureClass.JOB_FATAL.value,
        "reason": reason,
        "provider": provider,
        "partition": partition,
        "run_id": run_id,
        "notice_id": f"needs_human:{run_id}",
    }


def _pipeline_of(run: dg.DagsterRun, layouts: list[PipelineLayout]) -> PipelineLayout | None:
    """The pipeline whose chunk job `run` ran, or whose chunk assets it materialized (a UI launch); None: a run
    of another job."""
    for layout in layouts:
        if run.job_name == layout.chunk_job:
            return layout
    selected = run.asset_selection or frozenset()
    for layout in layouts:
        if selected & {layout.key(name) for name in ("items", *layout.stages)}:
            return layout
    return None


def _created_at(instance: dg.DagsterInstance, run_id: str, default: float) -> float:
    record = instance.get_run_record_by_id(run_id)
    return record.create_timestamp.timestamp() if record is not None else default


class _Tick:
    """One evaluation: reads failures, decides, launches. Kept apart from the decorator for readability."""

    def __init__(
        self,
        context: dg.SensorEvaluationContext,
        policy: BackfillPolicy,
        provider: str | None,
        layouts: list[PipelineLayout],
        read_limit: int,
    ) -> None:
        self.context = context
        self.instance = context.instance
        self.policy = policy
        self.provider = provider
        self.layouts = layouts
        self.read_limit = read_limit
        self.state = BackfillCursor.from_json(context.cursor)
        self.now = time.time()
        self.requests: list[dg.RunRequest] = []
        self.log = context.log
        self._retry_now: dict[str, float] = {}  # pipeline -> when a person last asked to retry now

    def read_failures(self) -> int:
        result = self.instance.fetch_run_status_changes(
            dg.DagsterEventType.RUN_FAILURE, limit=self.read_limit, cursor=self.state.after, ascending=True
        )
        for record in result.records:
            self._decide(record.event_log_entry.run_id, record.event_log_entry.timestamp)
        if result.records:
            self.state.after = result.cursor
        return len(result.records)

    def policy_of(self, layout: PipelineLayout) -> BackfillPolicy:
        return BackfillPolicy.of(layout, self.policy)

    def _decide(self, run_id: str, failed_at: float) -> None:
        """Decide what a failed run means. Idempotent: re-reading a run (a lost cursor) repeats no alert."""
        run = self.instance.get_run_by_id(run_id)
        partition = run.tags.get(PARTITION_TAG) if run else None
        if run is None or partition is None:
            return
        layout = _pipeline_of(run, self.layouts)
        if layout is None:
            return  # another job (e.g. a dataset's completion, or a pipeline not served here): not ours to retry
        try:
            parse_chunk_key(partition)
        except ValueError:
            return
        if not _is_latest_run(self.instance, partition, run_id):
            return  # a newer run of this chunk exists: that one decides
        attempt = int(run.tags.get(ATTEMPT_TAG, "1"))
        provider = run.tags.get(PROVIDER_TAG) or self.provider or layout_providers(layout)[0]
        first_time = BACKFILL_TAG not in run.tags
        failure = run_failure_class(self.instance, run_id) or FailureClass.RETRYABLE
        if failure == FailureClass.QUALITY_GATE:
            self._tag(run_id, NEEDS_HUMAN)
            if first_time:
                self.state.needs_human_total += 1
                self.log.warning(
                    f"chunk {partition} failed a blocking quality gate (run {run_id}): not retried; needs a "
                    "human (see the check's alert and metadata)"
                )
        elif failure == FailureClass.JOB_FATAL:
            self._hold(partition, run_id, attempt, provider, layout, failed_at, first_time)
        elif attempt >= self.policy_of(layout).max_attempts:
            self._tag(run_id, GAVE_UP)
            if first_time:
                self.state.gave_up_total += 1
                self.log.error(
                    f"chunk {partition} failed {attempt} times (last run {run_id}); giving up: it counts as "
                    "failed in the completion report. Re-materialize it from the UI once the cause is fixed."
                )
        else:
            due = failed_at + self.policy_of(layout).delay_s(attempt)
            self.state.scheduled[partition] = {
                "attempt": attempt + 1,
                "due_at": due,
                "failed_at": failed_at,
                "launched_at": _created_at(self.instance, run_id, failed_at),
                "provider": provider,
                "failed_run": run_id,
                "job": layout.chunk_job,
            }
            due = self._due_at(self.state.scheduled[partition])
            self._tag(run_id, RETRY_SCHEDULED)
            if first_time:
                self.log.info(
                    f"chunk {partition} attempt {attempt} failed (retryable); attempt {attempt + 1} in "
                    f"{max(0.0, due - self.now):.1f}s"
                )

    def _tag(self, run_id: str, decision: str) -> None:
        self.instance.add_run_tags(run_id, {BACKFILL_TAG: decision})

    def _hold(
        self,
        partition: str,
        run_id: str,
        attempt: int,
        provider: str,
        layout: PipelineLayout,
        failed_at: float,
        first_time: bool,
    ) -> None:
        self._tag(run_id, NEEDS_HUMAN)
        entry = {"attempt": attempt + 1, "provider": provider, "failed_run": run_id, "job": layout.chunk_job}
        if cleared_at(self.instance, provider) > failed_at:
            self.state.scheduled[partition] = {**entry, "due_at": self.now}  # cleared since: just re-run it
            return
        self.state.held[partition] = entry
        self.state.scheduled.pop(partition, None)
        if provider in self.state.blocked:
            return  # one alert per block, however many chunks the failure stopped
        reason, message = job_fatal_reason(self.instance, run_id)
        self.state.blocked[provider] = {
            "since": failed_at,
            "reason": reason,
            "partition": partition,
            "run_id": run_id,
            "message": message,
        }
        record_block(self.instance, provider, self.state.blocked[provider])
        if not first_time:
            return  # alerted before this cursor was lost
        self.state.needs_human_total += 1
        notice = _needs_human_notice(provider, reason, partition, run_id, message)
        self.state.notices.append({**notice, "pipeline": layout.name})
        self.log.error(
            f"NEEDS A HUMAN: provider {provider} stopped ({reason}) on chunk {partition}, run {run_id}: {message} "
            f"Nothing more is launched for {provider} until `python -m sensors.backfill clear {provider}`."
        )

    def lift_cleared_blocks(self) -> None:
        for provider, block in list(self.state.blocked.items()):
            if cleared_at(self.instance, provider) <= block["since"]:
                continue
            del self.state.blocked[provider]
            resumed = [p for p, h in self.state.held.items() if h["provider"] == provider]
            for partition in resumed:
                held = self.state.held.pop(partition)
                self.state.scheduled[partition] = {**held, "due_at": self.now}
            self.log.info(
                f"provider {provider} cleared by a person; re-running {len(resumed)} stopped chunks"
            )

    def _due_at(self, entry: dict[str, Any]) -> float:
        """When a scheduled re-run is due: now if a person asked its pipeline to retry now after the failed run
        was launched (a run killed with the previous session, failed only now by the sweep or run monitoring,
        counts as before)."""
        layout = layout_for_job(self.layouts, entry.get("job", ""))
        if layout is None:
            return entry["due_at"]
        if layout.name not in self._retry_now:
            self._retry_now[layout.name] = retry_now_at(self.instance, layout.name)
        if self._retry_now[layout.name] > entry.get("launched_at", entry.get("failed_at", entry["due_at"])):
            return min(entry["due_at"], self.now)
        return entry["due_at"]

    def launch_due(self) -> None:
        room: dict[str, int] = {}
        due = sorted(self.state.scheduled.items(), key=lambda kv: self._due_at(kv[1]))
        stopped: dict[str, str | None] = {}
        for partition, entry in due:
            provider = entry["provider"]
            if self._due_at(entry) > self.now or provider in self.state.blocked:
                continue
            if provider not in stopped:  # halted by a job-fatal answer another run got (spend ledger)
                stopped[provider] = provider_stop(self.instance, provider)
            if stopped[provider] is not None:
                continue
            job = entry.get("job", "")
            layout = layout_for_job(self.layouts, job)
            if layout is None:
                del self.state.scheduled[partition]
                self.log.warning(
                    f"chunk {partition}: its job {job!r} is not served here any more; not re-run"
                )
                continue
            if provider not in room:  # the in-flight cap of the pipeline whose chunk comes first
                room[provider] = self.policy_of(layout).max_in_flight - _in_flight(self.instance, provider)
            if room[provider] <= 0:
                continue
            del self.state.scheduled[partition]
            if not _is_latest_run(self.instance, partition, entry["failed_run"]):
                continue  # someone re-ran it meanwhile
            self.requests.append(
                chunk_run_request(partition, entry["attempt"], provider, "backfill", job_name=job)
            )
            room[provider] -= 1
            self.state.launched_total += 1

    def notify(self) -> str | None:
        """POST each notice to its pipeline's alert webhook (`notifications.alert_webhook_env`); notices whose
        webhook is not configured were logged as errors when raised and are dropped; failed ones are kept."""
        by_env: dict[str, list[dict[str, Any]]] = {}
        for notice in self.state.notices:
            layout = next((x for x in self.layouts if x.name == notice.get("pipeline")), None)
            env = layout.alert_webhook_env if layout is not None else ALERT_WEBHOOK_ENV
            if env is not None:
                by_env.setdefault(env, []).append(notice)
        kept: list[dict[str, Any]] = []
        problem = None
        for env, notices in by_env.items():
            url = webhook_url(env)
            if url is None:
                continue
            _, failed = deliver(url, notices)
            if failed:
                problem = failed
                kept += notices
        self.state.notices = kept
        if problem:
            self.state.failed_posts_total += 1
            self.log.warning(f"alert webhook failed ({problem}); {len(kept)} notices kept for next tick")
        return problem


def build_backfill_sensor(
    *,
    name: str = "chunk_backfill_sensor",
    policy: BackfillPolicy | None = None,
    provider: str | None = None,
    layouts: list[PipelineLayout],
    jobs: list[ExecutableJob] | None = None,
    minimum_interval_seconds: int = 30,
    read_limit: int = 500,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """The backfill sensor of the pipelines in `layouts`, each retried by its own policy (its spec's `backfill`;
    `policy` for a layout without one). `jobs`: their chunk jobs' definitions (`pipeline_definitions(spec).jobs`),
    needed when it serves several pipelines. `provider` labels failed runs that carry no `chunkwise/provider`
    tag (runs launched from the UI); None: the pipeline's first provider."""
    chosen = policy or BackfillPolicy()
    served = list(layouts)
    job_names = [layout.chunk_job for layout in served]
    pipelines = ", ".join(f"`{layout.name}`" for layout in served)
    first = BackfillPolicy.of(served[0], chosen) if served else chosen
    envs = sorted({layout.alert_webhook_env for layout in served if layout.alert_webhook_env})
    alert_envs = " / ".join(f"${env}" for env in envs) or "no variable (no pipeline names one)"

    @dg.sensor(
        name=name,
        **sensor_targets(job_names, list(jobs or [])),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            f"Watches the failed chunk runs of the {pipelines} pipeline{'s' if len(served) > 1 else ''} (and marks "
            "failed the runs on this host whose process is gone). Launches a re-run of a chunk whose latest run "
            f"failed for a retryable reason, on its own chunk job ({', '.join(job_names)}), by each pipeline's "
            f"`backfill` policy (the first's: after {first.backoff_base_s:g}s x {first.backoff_factor:g}^(n-1), cap "
            f"{first.backoff_max_s:g}s, at most {first.max_attempts} runs per chunk and {first.max_in_flight} in "
            "flight per provider). Quality-gate and job-fatal failures are not retried; a job-fatal one blocks its "
            "provider until `python -m sensors.backfill clear <provider>`. Needs the Dagster daemon; needs-a-human "
            f"notices go to the webhook in {alert_envs} (unset: logged only)."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        orphaned = fail_orphaned_runs(context.instance)  # killed runs become failures this tick reads
        if orphaned:
            context.log.warning(f"marked {len(orphaned)} runs failed whose process is gone: {orphaned}")
        tick = _Tick(context, chosen, provider, served, read_limit)
        read = tick.read_failures()
        tick.lift_cleared_blocks()
        tick.launch_due()
        problem = tick.notify()
        s = tick.state
        summary = (
            f"read {read} failed runs; launched {len(tick.requests)}; {len(s.scheduled)} scheduled, "
            f"{len(s.held)} held by a job-fatal failure, blocked providers: {sorted(s.blocked) or 'none'}; "
            f"{len(s.notices)} notices pending" + (f" (webhook: {problem})" if problem else "")
        )
        return dg.SensorResult(
            run_requests=tick.requests,
            cursor=s.to_json(),
            skip_reason=None if tick.requests else dg.SkipReason(summary),
        )

    return _sensor


def main(argv: list[str] | None = None) -> int:
    """`python -m sensors.backfill clear <provider>` / `status`, against the instance in `$DAGSTER_HOME`."""
    parser = argparse.ArgumentParser(
        prog="python -m sensors.backfill", description="Backfill sensor controls"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    clear = sub.add_parser("clear", help="lift a provider's block after fixing what stopped it")
    clear.add_argument("provider")
    again = sub.add_parser(
        "retry-now",
        help="re-run a pipeline's chunks that failed (retryable) at the next tick, not after backoff",
    )
    again.add_argument("pipeline")
    sub.add_parser("status", help="print the clear markers in this instance")
    args = parser.parse_args(argv)
    with dg.DagsterInstance.get() as instance:
        if args.command == "clear":
            lifted = clear_provider(instance, args.provider)
            if lifted:
                print(f"lifted the stop of {args.provider} ({', '.join(lifted)}): requests may be sent again")
            print(f"cleared {args.provider}: the backfill sensor's next tick resumes its chunks")
            return 0
        if args.command == "retry-now":
            retry_now(instance, args.pipeline)
            print(
                f"{args.pipeline}: the backfill sensor's next tick re-runs the chunks waiting for their backoff"
            )
            return 0
        for provider in ("openai", "anthropic"):
            at = cleared_at(instance, provider)
            print(f"{provider}: last cleared {time.ctime(at) if at else 'never'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
