"""Runs orphaned by a kill: found and marked failed, so none stays STARTED forever or blocks a re-run.

Every chunk run records where it executes: the process that launches it in process (the demo) tags it with its
host and pid before it starts, and each stage step tags the run with the pid of the process that runs it (a
run worker under the daemon). A run still NOT_STARTED / STARTING / STARTED on this host whose recorded process
is gone was orphaned by a kill -9, an OOM or a reboot: `fail_orphaned_runs` reports it failed, with a message
that says so. The failure is retryable (chunk_status: `retry_pending`), so the backfill sensor or the next
`make demo` re-runs the chunk, which resumes from its checkpoint and re-pays only what was in flight.

Runs launched on other hosts are left to that host's sweep. For runs a run launcher starts, Dagster's own run
monitoring (`run_monitoring` in deploy/dagster.yaml) catches those that never start.
"""

from __future__ import annotations

import os
import socket

import dagster as dg

from resources.local_sqlite import pid_alive

HOST_TAG = "chunkwise/host"
PID_TAG = "chunkwise/pid"
WORKER_PID_TAG = "chunkwise/worker_pid"
"""The pid of the run worker a launcher started for the run (llm_assets/run_launcher.py), tagged at launch."""
LAUNCHER_PID_TAG = "chunkwise/launcher_pid"
LAUNCHER_PID_ENV = "CHUNKWISE_LAUNCHER_PID"
"""Set by a process that owns the daemon and everything it starts (`make demo`): the sensors tag the runs they
request with it, so a run killed together with it before its first step tagged its own pid is found too."""
_LIVE_STATUSES = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def process_tags() -> dict[str, str]:
    """The tags naming this process: host and pid."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def launcher_tags() -> dict[str, str]:
    """Host and `$CHUNKWISE_LAUNCHER_PID` for a run request, when that variable is set; else nothing."""
    pid = os.environ.get(LAUNCHER_PID_ENV, "")
    return {HOST_TAG: socket.gethostname(), LAUNCHER_PID_TAG: pid} if pid.isdigit() else {}


def mark_run_worker(context: dg.AssetExecutionContext) -> None:
    """Tag the run with the process executing this step (once per process)."""
    tags = process_tags()
    if context.run.tags.get(PID_TAG) != tags[PID_TAG] or context.run.tags.get(HOST_TAG) != tags[HOST_TAG]:
        context.instance.add_run_tags(context.run_id, tags)


def fail_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed every unfinished run on this host whose process is gone; returns their run ids."""
    host = socket.gethostname()
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=_LIVE_STATUSES, tags={HOST_TAG: host}))
    failed: list[str] = []
    for record in records:
        run = record.dagster_run
        # The worker's own pid once a step tagged it; before that, the one the run launcher started, else the
        # launching process's (whose death took the daemon).
        pid_text = run.tags.get(PID_TAG) or run.tags.get(WORKER_PID_TAG) or run.tags.get(LAUNCHER_PID_TAG, "")
        if not pid_text.isdigit() or pid_alive(int(pid_text)):
            continue
        instance.report_run_failed(
            run,
            message=(
                f"orphaned: the process that ran it (pid {pid_text} on {host}) is gone (killed or crashed) "
                "while the run was unfinished; marked failed by Chunkwise's sweep. Its chunk resumes from its "
                "checkpoint when re-run."
            ),
        )
        failed.append(run.run_id)
    return failed
