"""`make demo` the way production runs: the Dagster daemon, its run queue and Chunkwise's sensors launch every run.

scripts/demo.py checks the spec and the file and registers the dataset in process (bad input: one line, exit 2,
nothing launched); then this module
1. writes the instance config (`$DAGSTER_HOME/dagster.yaml`, rewritten at each start): queued runs,
   `DEMO_MAX_RUNS` at once, the queue read every second;
2. starts `dagster-daemon run` on workspace.yaml, with the demo's choices handed to the code location through
   the environment (llm_assets/location.py): `CHUNKWISE_PIPELINES` = the spec file, `CHUNKWISE_PROFILE` = the
   overrides of PROFILE/MODE/CHUNK (`$CHUNKWISE_HOME/demo/overrides.json`), `CHUNKWISE_SENSOR_INTERVAL_S` = 1
   (the daemon evaluates sensors every 5 s at most);
3. copies the data file into the pipeline's inbox (`$CHUNKWISE_HOME/inbox/<pipeline>`) under its own name, then
   its `._SUCCESS` marker, unless the same bytes are already there;
4. follows the instance and prints one line per finished run, while
   - `<pipeline>__new_dataset_sensor` requests the registration run and then one run per chunk,
   - the run queue launches them, each in its own run worker process,
   - `batch_poll_sensor` requests the runs that collect batch-mode chunks,
   - `chunk_backfill_sensor` re-runs retryable failures by the spec's `backfill` policy,
   - `dataset_completion_sensor` launches the completion run that writes the report.
So in `make ui` every run has its code location, job, partition and the sensor that launched it, and shows on
the Overview timeline.

The daemon is the demo's child: in its process group (a kill of the group stops everything) and, on Linux,
signalled when the demo dies (PR_SET_PDEATHSIG), so no daemon outlives the demo. Stops:
- SIGTERM / Ctrl-C: the daemon is stopped (nothing more starts), runs in progress finish, queued runs stay
  queued for the next `make demo`; exit 130. A second signal exits at once.
- a job-fatal failure (bad key, no quota, spent budget, unknown model): its reason is printed, the daemon is
  stopped once the runs in progress end, exit 3. The next `make demo` lifts the stop (scripts/demo.py: running
  it again is a person's decision to go on) and the backfill sensor re-runs the stopped chunks.
- the report not written within `timeout_s`: exit 1, the daemon stopped; run `make demo` again to go on.
"""

from __future__ import annotations

import ctypes
import filecmp
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

ROOT = Path(__file__).resolve().parent.parent
DEMO_MAX_RUNS = 4
"""Runs at once. Each is a process of its own, forked from a warm one (llm_assets/run_launcher.py); 4 keeps a
2-core machine busy without thrashing."""
SENSOR_INTERVAL_S = 1
POLL_S = 0.5
POLL_PER_CHUNK_S = 0.02
MAX_POLL_S = 5.0


def poll_interval_s(chunks: int) -> float:
    """How often the demo reads the instance to print progress: every 0.5 s for the demo's 13 chunks, slower for
    large datasets (each read asks for every chunk's state; at 200 chunks every 0.5 s it took a tenth of a core,
    bench/overhead.py), at most every 5 s."""
    return min(MAX_POLL_S, POLL_S + POLL_PER_CHUNK_S * chunks)


WIND_DOWN_S = 600.0
"""After a stop, how long the runs in progress may take to finish before the demo exits anyway."""
INSTANCE_CONFIG = f"""\
# Written by `make demo` (scripts/demo_daemon.py) at every start; deploy/dagster.yaml is the production example.
run_queue:
  max_concurrent_runs: {DEMO_MAX_RUNS}
  dequeue_interval_seconds: 1
{{run_launcher}}# A run a kill left STARTING (its worker never began) is failed after 60 s, then re-run by the backfill sensor.
run_monitoring:
  enabled: true
  start_timeout_seconds: 60
  poll_interval_seconds: 10
sensors:
  use_threads: true
  num_workers: 4
telemetry:
  enabled: false
"""
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


RUN_LAUNCHER_ENV = "CHUNKWISE_RUN_LAUNCHER"
RUN_LAUNCHERS = {
    "warm": "# Each run in its own process, forked from one that has the code location loaded "
    "(llm_assets/run_launcher.py).\nrun_launcher:\n  module: llm_assets.run_launcher\n  class: WarmRunLauncher\n",
    "default": "# Dagster's default run launcher: each run in a fresh Python process.\n",
}
"""`$CHUNKWISE_RUN_LAUNCHER`: `warm` (the default) or `default` (Dagster's own, for comparison: bench/overhead.py)."""


STORAGE_ENV = "CHUNKWISE_DEMO_STORAGE"
"""`$CHUNKWISE_DEMO_STORAGE`: `sqlite` (the default, under `$DAGSTER_HOME`) or `postgres`: Dagster's storage in
the PostgreSQL server the `CHUNKWISE_PG_*` variables name, as deploy/dagster-postgres.yaml configures it."""


def write_instance_config(dagster_home: Path) -> None:
    import yaml

    launcher = os.environ.get(RUN_LAUNCHER_ENV) or "warm"
    if launcher not in RUN_LAUNCHERS:
        raise SystemExit(
            f"chunkwise: {RUN_LAUNCHER_ENV} must be one of {sorted(RUN_LAUNCHERS)}, got {launcher!r}"
        )
    storage = os.environ.get(STORAGE_ENV) or "sqlite"
    if storage not in ("sqlite", "postgres"):
        raise SystemExit(f"chunkwise: {STORAGE_ENV} must be sqlite or postgres, got {storage!r}")
    config = INSTANCE_CONFIG.replace("{run_launcher}", RUN_LAUNCHERS[launcher])
    if storage == "postgres":
        shipped = yaml.safe_load((ROOT / "deploy" / "dagster-postgres.yaml").read_text())
        config += yaml.safe_dump({"storage": shipped["storage"]}, sort_keys=False)
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(config)


def drop_in_inbox(data: str, inbox: Path, s3: Any = None) -> Path:
    """Copy `data` (local or s3://) into `inbox` under its own name, then write its `._SUCCESS` marker; a file
    with the same bytes already there is left alone (the sensor has seen it: nothing registers twice)."""
    from io_managers.object_reader import open_binary
    from io_managers.parquet_files import is_s3_uri
    from sensors.new_datasets import SUCCESS_SUFFIX

    inbox.mkdir(parents=True, exist_ok=True)
    name = data.rstrip("/").rsplit("/", 1)[-1]
    target = inbox / name
    marker = inbox / f"{name}{SUCCESS_SUFFIX}"
    local = not is_s3_uri(data)
    if local and target.exists() and marker.exists() and filecmp.cmp(data, target, shallow=False):
        return target
    partial = inbox / f".{name}.tmp"  # names starting with "." are never watched
    with open_binary(data, s3) as src, partial.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    if target.exists() and marker.exists() and filecmp.cmp(partial, target, shallow=False):
        partial.unlink()
        return target
    marker.unlink(missing_ok=True)
    os.replace(partial, target)
    marker.write_text("")
    return target


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`dagster-daemon run` on workspace.yaml with `env`, its output in `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl call, no locks taken
        )


def stop_daemon(daemon: subprocess.Popen) -> None:
    if daemon.poll() is None:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def daemon_env(home: Path, spec_path: Path, overrides: dict[str, Any]) -> dict[str, str]:
    """The environment of the daemon and the code location: this process's, plus the demo's choices."""
    from llm_assets.location import PIPELINES_ENV, PROFILE_ENV, SENSOR_INTERVAL_ENV
    from llm_assets.run_liveness import LAUNCHER_PID_ENV

    env = {
        **os.environ,
        "CHUNKWISE_HOME": str(home.resolve()),
        PIPELINES_ENV: str(spec_path.resolve()),
        SENSOR_INTERVAL_ENV: str(SENSOR_INTERVAL_S),
        LAUNCHER_PID_ENV: str(os.getpid()),  # runs a kill of this process orphans are found by the next start
    }
    env.pop(PROFILE_ENV, None)
    if overrides:
        path = home / "demo" / "overrides.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(overrides, indent=2))
        env[PROFILE_ENV] = str(path.resolve())
    return env


def run_cost_usd(instance: dg.DagsterInstance, run_id: str) -> float:
    """USD the run's materializations recorded (stage metadata `cost_usd`)."""
    total = 0.0
    events = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    for record in events:
        event = record.event_log_entry.dagster_event
        metadata = event.event_specific_data.materialization.metadata if event else {}
        if "cost_usd" in metadata:
            total += float(metadata["cost_usd"].value)
    return total


def launched_by(run: dg.DagsterRun) -> str:
    tags = run.tags
    if "dagster/sensor_name" in tags:
        return tags["dagster/sensor_name"]
    if "dagster/backfill" in tags:
        return f"backfill {tags['dagster/backfill']}"
    return "a person (UI or CLI)"


@dataclass
class Follower:
    """Reads the instance and says each finished run of one dataset once."""

    instance: dg.DagsterInstance
    dataset: Any  # RegisteredDataset
    layout: Any  # PipelineLayout
    batch: bool
    said: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    """Chunks whose finished run was said and left them terminal: the n of `[n/N]`."""

    def runs(self) -> list[dg.RunRecord]:
        from llm_assets.chunk_status import DATASET_TAG, PARTITION_TAG

        ds = self.dataset.dataset_id
        chunk = self.instance.get_run_records(filters=dg.RunsFilter(tags={DATASET_TAG: ds}))
        other = self.instance.get_run_records(
            filters=dg.RunsFilter(job_name=self.layout.completion_job, tags={PARTITION_TAG: ds})
        )
        return sorted([*chunk, *other], key=lambda r: r.end_time or 0.0)

    def new_lines(self, states: dict) -> list[str]:
        from llm_assets.chunk_status import ATTEMPT_TAG, PARTITION_TAG, ChunkState
        from llm_assets.failure_class import run_failure_class

        lines = []
        total = self.dataset.n_chunks
        for record in self.runs():
            run = record.dagster_run
            if run.status not in FINISHED or run.run_id in self.said:
                continue
            chunk = states.get(run.tags.get(PARTITION_TAG, ""))
            if (
                chunk is not None
                and chunk.latest_run_id == run.run_id
                and chunk.state == ChunkState.IN_FLIGHT
            ):
                continue  # `states` was read before the run ended: said at the next poll
            self.said.add(run.run_id)
            seconds = (record.end_time or 0.0) - (record.start_time or record.end_time or 0.0)
            cost = run_cost_usd(self.instance, run.run_id)
            key = run.tags.get(PARTITION_TAG, "?")
            if run.job_name == self.layout.completion_job:
                status = "report written" if run.status == dg.DagsterRunStatus.SUCCESS else "FAILED"
                lines.append(f"completion {key}: {status} in {seconds:.1f}s (launched by {launched_by(run)})")
                continue
            stage = run.tags.get("chunkwise/batch_stage")
            if run.status == dg.DagsterRunStatus.SUCCESS:
                status = (
                    ("collected " + stage)
                    if stage
                    else ("batch submitted" if self.batch and not cost else "ok")
                )
            elif run.status == dg.DagsterRunStatus.CANCELED:
                status = "CANCELED"
            else:
                failure = run_failure_class(self.instance, run.run_id)
                status = f"FAILED ({failure.value if failure else 'see the run in `make ui`'})"
            if chunk is not None and chunk.state.terminal and chunk.latest_run_id == run.run_id:
                self.finished.add(key)
            lines.append(
                f"[{len(self.finished)}/{total}] {key}: {status} in {seconds:.1f}s, ${cost:.4f} (attempt "
                f"{run.tags.get(ATTEMPT_TAG, '?')}, launched by {launched_by(run)})"
            )
        return lines

    def states(self) -> dict:
        from llm_assets.chunk_status import chunk_states

        return chunk_states(self.instance, self.dataset.partition_keys, self.layout)

    def in_progress(self) -> list[str]:
        return [
            r.dagster_run.run_id
            for r in self.runs()
            if r.dagster_run.status
            in (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
        ]


class Stopper:
    """SIGTERM / Ctrl-C: remember the first (the caller stops the daemon and lets runs in progress finish); a
    second exits at once."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._before = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.signal is not None:
            raise SystemExit(130)
        self.signal = signal.Signals(signum).name
        print(f"{self.signal}: stopping: no run starts from now on; runs in progress finish (again to exit at once)",
              file=sys.stderr, flush=True)  # fmt: skip


def run_through_daemon(
    *,
    dataset: Any,
    layout: Any,
    data: str,
    spec_path: Path,
    overrides: dict[str, Any],
    home: Path,
    instance: dg.DagsterInstance,
    s3: Any,
    batch: bool,
    timeout_s: float,
) -> int | None:
    """Steps 1-4 of the module docstring for `dataset` (registered in process by the caller). Returns None once
    the completion report is written, else the demo's exit code (130 stopped by a signal, 3 job-fatal stop,
    1 not finished)."""
    from llm_assets.chunk_status import ChunkState, chunk_states
    from llm_assets.failure_class import job_fatal_reason

    inbox = Path(overrides["input"]["watch"])
    stop = Stopper()
    log = home / "demo" / "daemon.log"
    daemon = start_daemon(daemon_env(home, spec_path, overrides), log)
    print(
        f"dagster-daemon started (log: {log}): the sensors launch every run through the run queue, "
        f"{DEMO_MAX_RUNS} at a time; `make ui` shows them",
        flush=True,
    )
    dropped = drop_in_inbox(data, inbox, s3)
    print(f"dropped {dropped.name} in {inbox} for {layout.name}__new_dataset_sensor", flush=True)
    follower = Follower(instance, dataset, layout, batch)
    follower.said = {r.dagster_run.run_id for r in follower.runs() if r.dagster_run.status in FINISHED}
    follower.finished = {
        key for key, s in chunk_states(instance, dataset.partition_keys, layout).items() if s.state.terminal
    }
    started = time.time()
    deadline = time.monotonic() + timeout_s
    report = home / "reports" / dataset.dataset_id / "completion_report.json"
    poll_s = poll_interval_s(len(dataset.partition_keys))
    try:
        while True:
            states = chunk_states(instance, dataset.partition_keys, layout)
            for line in follower.new_lines(states):
                print(line, flush=True)
            if stop.signal is not None:
                return _wind_down(daemon, follower, 130, f"stopped by {stop.signal}")
            if daemon.poll() is not None:
                print(
                    f"chunkwise: dagster-daemon exited ({daemon.returncode}); its log: {log}", file=sys.stderr
                )
                print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
                return 1
            # A chunk stopped before this start is re-run by the backfill sensor (the caller lifted the stop).
            stuck = [
                s
                for s in states.values()
                if s.state == ChunkState.NEEDS_HUMAN and (s.end_time or 0.0) > started
            ]
            if stuck:
                reason, message = job_fatal_reason(instance, stuck[0].latest_run_id)
                message = re.sub(r"^[\w.]+Error: ", "", " ".join(message.split()))
                print(f"chunkwise: stopped ({reason}): {message}", file=sys.stderr, flush=True)
                return _wind_down(daemon, follower, 3, "a provider stopped every chunk")
            if report.exists() and dataset.dataset_id in instance.get_materialized_partitions(
                layout.completion_key
            ):
                return None
            if time.monotonic() > deadline:
                return _wind_down(daemon, follower, 1, f"the report was not written within {timeout_s:.0f}s")
            time.sleep(poll_s)
    finally:
        stop_daemon(daemon)
        stop.restore()


def _wind_down(daemon: subprocess.Popen, follower: Follower, code: int, why: str) -> int:
    """Stop the daemon, wait for the runs in progress (saying each), and say what is left for next time."""
    from llm_assets.run_liveness import fail_orphaned_runs

    stop_daemon(daemon)
    deadline = time.monotonic() + WIND_DOWN_S
    while follower.in_progress() and time.monotonic() < deadline:
        time.sleep(POLL_S)
        fail_orphaned_runs(follower.instance)  # a run worker that died with the daemon is not waited for
        states = follower.states()  # re-read: the runs in progress end during the wait
        for line in follower.new_lines(states):
            print(line, flush=True)
    states = follower.states()
    for line in follower.new_lines(states):
        print(line, flush=True)
    left = sum(1 for s in states.values() if not s.state.terminal)
    print(
        f"chunkwise: {why}; {left} chunks not done. Run `make demo` again to go on: queued runs start, work "
        "already done is kept and not paid again.",
        file=sys.stderr,
        flush=True,
    )
    return code
