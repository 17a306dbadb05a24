"""Runs orphaned by a kill are found and marked failed; live ones are left alone."""

from __future__ import annotations

import os
import subprocess
import uuid

import dagster as dg

from llm_assets.chunk_status import ChunkState, chunk_states
from llm_assets.run_liveness import (
    HOST_TAG,
    LAUNCHER_PID_ENV,
    PID_TAG,
    fail_orphaned_runs,
    launcher_tags,
    process_tags,
)
from llm_assets.spec import load_pipeline
from tests.spec_pipelines import BANKING77_SPEC, layout_of

LAYOUT = layout_of(load_pipeline(BANKING77_SPEC, require_secrets=False))


def _run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus, tags: dict[str, str]) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(job_name=LAYOUT.chunk_job, run_id=run_id, status=status, tags=tags))
    return run_id


def test_a_run_whose_process_is_gone_is_marked_failed_and_its_chunk_can_be_re_run():
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = {**process_tags(), PID_TAG: str(dead.pid), "dagster/partition": "ds-00000000__c00000"}
    with dg.instance_for_test() as instance:
        orphan = _run(instance, dg.DagsterRunStatus.STARTED, gone)
        not_started = _run(
            instance, dg.DagsterRunStatus.NOT_STARTED, {**gone, "dagster/partition": "x__c00001"}
        )
        alive = _run(
            instance, dg.DagsterRunStatus.STARTED, {**process_tags(), "dagster/partition": "y__c00000"}
        )
        elsewhere = _run(
            instance,
            dg.DagsterRunStatus.STARTED,
            {**gone, HOST_TAG: "other", "dagster/partition": "z__c00000"},
        )
        untagged = _run(instance, dg.DagsterRunStatus.STARTED, {})

        assert sorted(fail_orphaned_runs(instance)) == sorted([orphan, not_started])
        status = {
            r: instance.get_run_by_id(r).status for r in (orphan, not_started, alive, elsewhere, untagged)
        }
        assert status[orphan] == status[not_started] == dg.DagsterRunStatus.FAILURE
        assert status[alive] == status[elsewhere] == status[untagged] == dg.DagsterRunStatus.STARTED
        # A failed orphan is a retryable failure: the chunk is re-run, never stuck "in flight".
        assert (
            chunk_states(instance, ["ds-00000000__c00000"], LAYOUT)["ds-00000000__c00000"].state
            == ChunkState.RETRY_PENDING
        )
        assert fail_orphaned_runs(instance) == []  # once
        assert int(instance.get_run_by_id(alive).tags[PID_TAG]) == os.getpid()


def test_a_run_started_before_its_worker_tagged_a_pid_is_an_orphan_once_its_launcher_is_gone(monkeypatch):
    """`make demo` owns the daemon: its runs carry the demo's pid (`launcher_tags`) from the request on, so one
    a kill left STARTED before its first step tagged the worker's pid is found as soon as the demo is gone; the
    worker's own pid, once tagged, decides instead."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    monkeypatch.setenv(LAUNCHER_PID_ENV, str(dead.pid))
    by_dead_launcher = {**launcher_tags(), "dagster/partition": "ds-00000000__c00000"}
    monkeypatch.setenv(LAUNCHER_PID_ENV, str(os.getpid()))
    by_live_launcher = {**launcher_tags(), "dagster/partition": "ds-00000000__c00001"}
    monkeypatch.delenv(LAUNCHER_PID_ENV)
    assert launcher_tags() == {}  # production sensors: no launcher, run monitoring and the worker's pid
    with dg.instance_for_test() as instance:
        orphan = _run(instance, dg.DagsterRunStatus.STARTED, by_dead_launcher)
        running = _run(instance, dg.DagsterRunStatus.STARTED, by_live_launcher)
        worker_alive = _run(
            instance,
            dg.DagsterRunStatus.STARTED,
            {**by_dead_launcher, PID_TAG: str(os.getpid()), "dagster/partition": "ds-00000000__c00002"},
        )
        assert fail_orphaned_runs(instance) == [orphan]
        assert instance.get_run_by_id(running).status == dg.DagsterRunStatus.STARTED
        assert instance.get_run_by_id(worker_alive).status == dg.DagsterRunStatus.STARTED
