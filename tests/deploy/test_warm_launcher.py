"""The warm run launcher (llm_assets/run_launcher.py), for real: Dagster launches chunk runs through it, each in a
process forked from a warm parent, against a real instance and the simulator over HTTP.

What a user relies on, each checked from outside the launcher (the instance's runs and events, the simulator's
request log, the processes themselves):
- every run is its own process and its own Dagster run, forked from one parent that loaded the code once;
- a changed spec is honoured by the next run (the parent restarts), as a fresh process would load it;
- "Terminate" in the UI cancels a warm run cleanly;
- a run worker killed with kill -9 is found by the run-liveness sweep, and the parent keeps serving;
- a spec broken while the daemon runs makes the run start cold and fail, never hang.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster_graphql.test.utils import execute_dagster_graphql

from bench.banking77 import banking77_data, first_rows
from llm_assets.pipeline_assets import chunk_job_name, register
from llm_assets.run_launcher import LAUNCH_TAG, WARM_PARENT_TAG
from llm_assets.run_liveness import PID_TAG, WORKER_PID_TAG, fail_orphaned_runs
from llm_assets.spec import load_pipeline
from resources.local_sqlite import pid_alive

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / "pipelines" / "banking77.yaml"
WARM = {
    "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
    "run_launcher": {"module": "llm_assets.run_launcher", "class": "WarmRunLauncher"},
}
HANG_S = 8.0
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
_LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
  }
}
"""


class Deployment:
    """A real instance whose run launcher is the warm one, the code location loaded from its module (as
    workspace.yaml does), and the BANKING77 spec with a profile this test may edit."""

    def __init__(
        self, instance: dg.DagsterInstance, workspace: WorkspaceProcessContext, home: Path, profile: Path
    ):
        self.instance, self.workspace, self.home, self.profile = instance, workspace, home, profile

    def spec(self):
        return load_pipeline(BANKING77, overrides=yaml.safe_load(self.profile.read_text()) or None)

    def launch(self, key: str) -> str:
        """The Launchpad: the chunk job for one chunk."""
        location = self.workspace.create_request_context().get_code_location_entries()
        (name,) = location
        params = {
            "mode": "default",
            "runConfigData": "{}",
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
            "selector": {
                "jobName": chunk_job_name(load_pipeline(BANKING77, require_secrets=False)),
                "repositoryLocationName": name,
                "repositoryName": "__repository__",
            },
        }
        context = self.workspace.create_request_context()
        result = execute_dagster_graphql(context, _LAUNCH, variables={"executionParams": params})
        answer = result.data["launchPipelineExecution"]
        assert answer["__typename"] == "LaunchRunSuccess", answer
        return answer["run"]["runId"]

    def run(self, run_id: str) -> dg.DagsterRun:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None
        return run

    def wait(self, run_id: str, until: Any = None, timeout_s: float = 180.0) -> dg.DagsterRun:
        """The run once `until(run)` holds (default: it finished)."""
        until = until or (lambda r: r.status in FINISHED)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if until(run):
                return run
            time.sleep(0.2)
        raise AssertionError(f"run {run_id} still {self.run(run_id).status} after {timeout_s} s")


@pytest.fixture
def deployment(start_sim, tmp_path, monkeypatch) -> Iterator[tuple[Deployment, Any]]:
    sim = start_sim({"seed": 3, "latency": {"base_ms": 20}})
    for name, value in {
        "CHUNKWISE_LLM_BASE_URL": sim.openai_base_url,
        "CHUNKWISE_LLM_API_KEY": sim.api_key,
        "CHUNKWISE_ANTHROPIC_BASE_URL": sim.base_url,
        "CHUNKWISE_ANTHROPIC_API_KEY": sim.api_key,
        "CHUNKWISE_HOME": str(tmp_path / "home"),
        "CHUNKWISE_PIPELINES": str(BANKING77),
        "CHUNKWISE_PROFILE": str(tmp_path / "profile.yaml"),
    }.items():
        monkeypatch.setenv(name, value)
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"input": {"chunk_size": 100}}))
    location = InProcessWorkspaceLoadTarget(
        InProcessCodeLocationOrigin(
            LoadableTargetOrigin(module_name="llm_assets.definitions", working_directory=str(ROOT)),
            location_name="chunkwise",
        )
    )
    with (
        dg.instance_for_test(overrides=WARM) as instance,
        WorkspaceProcessContext(instance, location) as workspace,
    ):
        yield Deployment(instance, workspace, tmp_path / "home", profile), sim
        instance.run_launcher.dispose()


def _keys(deployment: Deployment, tmp_path: Path, rows: int) -> list[str]:
    data = first_rows(banking77_data(), tmp_path / "rows.csv", rows)
    return register(deployment.spec(), str(data), deployment.instance, deployment.home).partition_keys


def _models_since(sim: Any, start: int) -> set[str]:
    return {row["model"] for row in sim.requests()[start:]}


def test_each_run_is_a_process_forked_from_one_warm_parent_and_a_changed_spec_restarts_it(
    deployment, tmp_path
):
    d, sim = deployment
    keys = _keys(d, tmp_path, 300)
    assert len(keys) == 3

    first = d.wait(d.launch(keys[0]))
    second = d.wait(d.launch(keys[1]))
    for run in (first, second):
        assert run.status == dg.DagsterRunStatus.SUCCESS, run.run_id
        assert run.tags[LAUNCH_TAG] == "warm"
        assert run.tags[WORKER_PID_TAG] == run.tags[PID_TAG]  # the steps ran in the forked process
        assert int(run.tags[WORKER_PID_TAG]) != os.getpid()
    assert first.tags[WORKER_PID_TAG] != second.tags[WORKER_PID_TAG]
    assert first.tags[WARM_PARENT_TAG] == second.tags[WARM_PARENT_TAG]  # loaded once
    assert "gpt-6-luna" in _models_since(sim, 0)  # the spec's classifier

    # A person edits the profile while the daemon runs: the next run uses the edit, as a fresh process would.
    time.sleep(
        0.01
    )  # a later modification time; the new profile is also longer, so its size differs either way
    d.profile.write_text(
        yaml.safe_dump({"input": {"chunk_size": 100}, "stages": {"classified": {"model": "gpt-6.2-sol"}}})
    )
    seen = len(sim.requests())
    third = d.wait(d.launch(keys[2]))
    assert third.status == dg.DagsterRunStatus.SUCCESS
    assert third.tags[LAUNCH_TAG] == "warm"
    assert third.tags[WARM_PARENT_TAG] != first.tags[WARM_PARENT_TAG]  # a new parent loaded the new spec
    assert not pid_alive(int(first.tags[WARM_PARENT_TAG]))
    assert _models_since(sim, seen) == {"gpt-6.2-sol"}  # counted from the provider's side


def _hang(sim: Any, on: bool) -> None:
    """Every request hangs for HANG_S before its error (or none does): the run is surely in progress."""
    sim.set_faults(timeout=1.0 if on else 0.0, hang_s=HANG_S)


def test_terminate_cancels_a_warm_run(deployment, tmp_path):
    d, sim = deployment
    (key,) = _keys(d, tmp_path, 100)
    _hang(sim, on=True)
    run_id = d.launch(key)
    d.wait(run_id, until=lambda r: PID_TAG in r.tags and len(sim.requests()) > 0)
    assert d.instance.run_launcher.terminate(run_id)
    run = d.wait(run_id)
    assert run.status == dg.DagsterRunStatus.CANCELED
    # The worker writes RUN_CANCELED, then closes the instance and exits: it is gone shortly after, not at once.
    worker = int(run.tags[WORKER_PID_TAG])
    deadline = time.monotonic() + 30
    while pid_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(worker)


def test_a_killed_worker_is_found_by_the_sweep_and_the_parent_keeps_serving(deployment, tmp_path):
    d, sim = deployment
    first_key, second_key = _keys(d, tmp_path, 200)
    _hang(sim, on=True)
    run_id = d.launch(first_key)
    started = d.wait(run_id, until=lambda r: PID_TAG in r.tags and len(sim.requests()) > 0)
    worker = int(started.tags[WORKER_PID_TAG])
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(worker)  # reaped by the parent: no zombie left behind
    assert fail_orphaned_runs(d.instance) == [run_id]
    assert d.run(run_id).status == dg.DagsterRunStatus.FAILURE

    _hang(sim, on=False)
    after = d.wait(d.launch(second_key))
    assert after.status == dg.DagsterRunStatus.SUCCESS
    assert after.tags[WARM_PARENT_TAG] == started.tags[WARM_PARENT_TAG]


def test_a_spec_broken_while_the_daemon_runs_starts_the_run_cold_and_it_fails_not_hangs(deployment, tmp_path):
    d, _sim = deployment
    (key,) = _keys(d, tmp_path, 100)
    d.profile.write_text(yaml.safe_dump({"stages": {"classified": {"modle": "typo"}}}))
    run_id = d.launch(key)
    d.wait(run_id, until=lambda r: r.tags.get(LAUNCH_TAG) == "cold")
    worker = int(d.run(run_id).tags[WORKER_PID_TAG])
    deadline = time.monotonic() + 120
    while pid_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_alive(worker)  # the cold worker could not load the code either, and exited
    # What it could not write itself, the sweep does (each backfill-sensor tick runs it).
    if d.run(run_id).status not in FINISHED:
        assert fail_orphaned_runs(d.instance) == [run_id]
    run = d.wait(run_id, timeout_s=10)
    assert run.status == dg.DagsterRunStatus.FAILURE
    messages = [e.message for e in d.instance.all_logs(run_id)]
    assert any("Started the run cold" in m for m in messages), messages
