"""Runs orphaned by a kill are found and marked failed; live ones are left alone."""

from __future__ import annotations

import os
import subprocess
import uuid

import dagster as dg

from llm_assets.chunk_status import ChunkState, chunk_states
from llm_assets.run_liveness import HOST_TAG, PID_TAG, fail_orphaned_runs, process_tags
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
