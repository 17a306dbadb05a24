"""What the Dagster UI offers on a pipeline's quality gates works, and never paints them "Execution failed" (#13).

Dagster 1.13's UI has one way to run an asset's checks without materializing it: "Execute all" on the asset's
Checks tab (and in its sidebar). It launches the checks alone, `assetSelection: []`, with no partition
(dagster-webserver's `ExecuteChecksButton`); the per-check "Execute" is disabled for partitioned checks. Our gates
check one chunk, so such a run has nothing to check: it must succeed without an evaluation (Dagster then records
the checks as skipped), never fail (recorded as "Execution failed" over every check of the asset). A run of the
checks alone *for a chunk* re-evaluates that chunk.

The tests on the `ui` fixture make the UI's own GraphQL calls (the Checks tab's query, its "Execute all" launch,
"Report evaluation") against the code location `dagster dev` loads (llm_assets/definitions.py); the others run
the chunk job's checks alone, as that button's run does, with and without a chunk partition.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.loader import LoadingContextForTest
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionResolvedStatus,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster_graphql.test.utils import execute_dagster_graphql

from llm_assets.checks import blocked_partitions
from llm_assets.pipeline_assets import (
    asset_key,
    chunk_job_name,
    pipeline_definitions,
    register,
    spec_layout,
)
from llm_assets.spec import PipelineSpec, load_pipeline

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
REVIEWS = ROOT / "pipelines" / "reviews.yaml"
JOB = "reviews__chunk_job"  # chunk_job_name(spec)
INVARIANT_ERROR = "Cannot access partition_key for a non-partitioned run"
SYNC_LAUNCHER = {
    "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
    "run_launcher": {
        "module": "dagster._core.launcher.sync_in_memory_run_launcher",
        "class": "SyncInMemoryRunLauncher",
    },
}
"""Runs launched through GraphQL start at once (no queue daemon) and execute in this process before the launch
returns."""


@pytest.fixture
def sim(spec_sim):
    return spec_sim


def _gate_keys(defs: dg.Definitions) -> set[dg.AssetCheckKey]:
    return set(defs.resolve_job_def(JOB).asset_layer.asset_graph.asset_check_keys)


def _checks_alone(
    defs: dg.Definitions, instance: dg.DagsterInstance, partition: str | None
) -> dg.ExecuteInProcessResult:
    """The chunk job with every quality gate selected and no asset (`asset_selection=[]`), as the Checks tab's
    "Execute all" launches it; for `partition` or, as that button does, for none."""
    alone = defs.resolve_job_def(JOB).get_subset(
        asset_selection=set(), asset_check_selection=_gate_keys(defs)
    )
    return alone.execute_in_process(instance=instance, partition_key=partition, raise_on_error=False)


def _latest_for(
    instance: dg.DagsterInstance, check: dg.AssetCheckKey, partition: str | None
) -> AssetCheckExecutionRecord:
    """The latest execution record of `check` on `partition`; any partition when None (what the UI shows first)."""
    if partition is None:
        record = instance.get_latest_asset_check_evaluation_record(check)
    else:
        records = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [check], partition_filter=PartitionKeyFilter(key=partition)
        )
        record = records.get(check)
    assert record is not None, f"{check.to_user_string()} has no execution on {partition}"
    return record


def _resolved(
    instance: dg.DagsterInstance, record: AssetCheckExecutionRecord
) -> AssetCheckExecutionResolvedStatus:
    """The status the UI shows for a record: a planned one is resolved from its run's outcome."""
    return asyncio.run(record.resolve_status(LoadingContextForTest(instance)))


def _logged(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(run_id)]


def _no_invariant_error(instance: dg.DagsterInstance, run_id: str) -> None:
    entries = instance.all_logs(run_id)
    assert not [
        e for e in entries if INVARIANT_ERROR in e.user_message or INVARIANT_ERROR in str(e.error_info)
    ]


# One scenario (one registered dataset, one chunk run of the three stages) for two facts: checks run alone
# without a chunk are skipped and leave every chunk's results alone; run alone for a chunk they re-evaluate it,
# and for a chunk never materialized they are skipped.
def test_checks_run_alone_without_a_chunk_are_skipped_and_for_a_chunk_re_evaluate_it_or_skip_one_never_made(
    sim, tmp_path
):
    spec = load_pipeline(REVIEWS)
    home = tmp_path / "home"
    defs = pipeline_definitions(spec, home=home)
    gates = _gate_keys(defs)
    assert len(gates) == 11  # 5 gates on sentiment, 3 on aspects, 3 on reply_draft
    with dg.instance_for_test() as instance:
        done, not_yet = register(spec, spec.input.demo_data, instance, home).partition_keys[:2]
        key = done
        chunk_run = defs.resolve_job_def(JOB).execute_in_process(instance=instance, partition_key=key)
        real = {check: _latest_for(instance, check, key) for check in gates}
        assert {record.run_id for record in real.values()} == {chunk_run.run_id}

        # Without a chunk: skipped, and every chunk keeps its last result.
        alone = _checks_alone(defs, instance, partition=None)

        assert alone.success, [
            e.step_failure_data.error.message for e in alone.all_events if e.is_step_failure
        ]
        assert alone.get_asset_check_evaluations() == []
        _no_invariant_error(instance, alone.run_id)
        warnings = [m for m in _logged(instance, alone.run_id) if m.startswith("Nothing checked")]
        assert len(warnings) == 3  # one per stage's check step, each saying why and what to do
        assert all("no chunk partition" in m and "materialize it" in m for m in warnings)
        for check, before in real.items():
            # The chunk's latest result is the chunk run's, untouched ...
            after = _latest_for(instance, check, key)
            assert (after.id, after.run_id, after.status) == (before.id, before.run_id, before.status)
            # ... and the run alone shows as skipped, not "Execution failed", where the UI reads the latest one.
            latest = _latest_for(instance, check, None)
            assert latest.run_id == alone.run_id and latest.partition is None
            assert _resolved(instance, latest) == AssetCheckExecutionResolvedStatus.SKIPPED

        # For a chunk: re-evaluated; for a chunk never materialized: skipped.
        again = _checks_alone(defs, instance, partition=done)
        too_early = _checks_alone(defs, instance, partition=not_yet)

        assert again.success and too_early.success
        first = {e.asset_check_key: e for e in chunk_run.get_asset_check_evaluations()}
        second = {e.asset_check_key: e for e in again.get_asset_check_evaluations()}
        assert set(second) == set(first) == _gate_keys(defs)
        for check, evaluation in second.items():
            assert evaluation.partition == done
            assert (evaluation.passed, evaluation.description) == (
                first[check].passed,
                first[check].description,
            )
            # It judged the chunk's stored output: the stage's materialization of that chunk.
            (stored,) = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=check.asset_key, asset_partitions=[done]), limit=1
            ).records
            assert evaluation.target_materialization_data.storage_id == stored.storage_id
            assert _latest_for(instance, check, done).run_id == again.run_id

        assert too_early.get_asset_check_evaluations() == []
        warnings = [m for m in _logged(instance, too_early.run_id) if m.startswith("Nothing checked")]
        sentiment = asset_key(spec, "sentiment").to_user_string()
        assert any(f"{sentiment} was never materialized for chunk {not_yet}" in m for m in warnings)
        for check in _gate_keys(defs):
            latest = _latest_for(instance, check, not_yet)
            assert _resolved(instance, latest) == AssetCheckExecutionResolvedStatus.SKIPPED


# ------------------------------------------------------------------------------------------------ the UI's calls

_CHECKS_TAB = """
query ChecksTab($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      jobNames
      repository { name location { name } }
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            jobNames
            canExecuteIndividually
            partitionDefinition { description }
            executionForLatestMaterialization { status runId }
            partitionStatuses {
              ... on AssetCheckDefaultPartitionStatuses {
                succeededPartitions failedPartitions inProgressPartitions skippedPartitions executionFailedPartitions
              }
            }
          }
        }
      }
    }
  }
}
"""

_LAUNCH = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}
"""


def _graphql(workspace: WorkspaceProcessContext, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """One request, as the webserver serves it (a request context per request)."""
    with workspace.create_request_context() as context:
        return execute_dagster_graphql(context, query, variables).data


def _checks_tab(workspace: WorkspaceProcessContext, key: dg.AssetKey) -> dict[str, Any]:
    return _graphql(workspace, _CHECKS_TAB, {"assetKey": {"path": key.path}})["assetNodeOrError"]


def _launch(
    workspace: WorkspaceProcessContext, selector: dict[str, Any], tags: dict[str, str] | None = None
) -> str:
    params = {
        "mode": "default",
        "runConfigData": "{}",
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
        "selector": selector,
    }
    answer = _graphql(workspace, _LAUNCH, {"executionParams": params})["launchPipelineExecution"]
    assert answer["__typename"] == "LaunchRunSuccess", answer
    return answer["run"]["runId"]


def _execute_all(workspace: WorkspaceProcessContext, node: dict[str, Any], key: dg.AssetKey) -> str | None:
    """What the Checks tab's "Execute all" launches (dagster-webserver 1.13, `ExecuteChecksButton`): the checks
    that can execute individually, alone, in the first job of every check, with no partition and no config.
    None when the button is disabled (no such check)."""
    checks = node["assetChecksOrError"]["checks"]
    executable = [c for c in checks if c["canExecuteIndividually"] == "CAN_EXECUTE"]
    if not executable:
        return None
    common = [job for job in checks[0]["jobNames"] if all(job in c["jobNames"] for c in checks)]
    repository = node["repository"]
    selector = {
        "jobName": (common or node["jobNames"])[0],
        "repositoryLocationName": repository["location"]["name"],
        "repositoryName": repository["name"],
        "assetSelection": [],
        "assetCheckSelection": [{"assetKey": {"path": key.path}, "name": c["name"]} for c in executable],
    }
    return _launch(workspace, selector)


@pytest.fixture
def ui(sim, tmp_path, monkeypatch) -> Iterator[tuple[dg.DagsterInstance, WorkspaceProcessContext, Path]]:
    """An instance, and the code location as `dagster dev` loads it (llm_assets/definitions.py, the shipped
    specs) with its home in tmp_path: (instance, workspace, home)."""
    home = tmp_path / "home"
    monkeypatch.setenv("CHUNKWISE_HOME", str(home))
    # Dagster caches a loaded python_file by module name and path: built again here, with this test's home.
    monkeypatch.delitem(sys.modules, "definitions", raising=False)
    location = InProcessWorkspaceLoadTarget(
        InProcessCodeLocationOrigin(
            LoadableTargetOrigin(
                python_file=str(ROOT / "llm_assets" / "definitions.py"),
                attribute="defs",
                working_directory=str(ROOT),
            ),
            location_name="chunkwise",
        )
    )
    with (
        dg.instance_for_test(overrides=SYNC_LAUNCHER) as instance,
        WorkspaceProcessContext(instance, location) as workspace,
    ):
        yield instance, workspace, home


def _launch_chunk(workspace: WorkspaceProcessContext, spec: PipelineSpec, key: str) -> str:
    """The Launchpad: the pipeline's chunk job for one chunk partition."""
    repository = _checks_tab(workspace, asset_key(spec, spec.stages[0].name))["repository"]
    selector = {
        "jobName": chunk_job_name(spec),
        "repositoryLocationName": repository["location"]["name"],
        "repositoryName": repository["name"],
    }
    return _launch(workspace, selector, tags={"dagster/partition": key})


def test_execute_all_on_a_checks_tab_succeeds_and_every_check_keeps_its_chunks_results(ui):
    instance, workspace, home = ui
    spec = load_pipeline(REVIEWS)
    stages = [asset_key(spec, stage.name) for stage in spec.stages]
    key = register(spec, spec.input.demo_data, instance, home).partition_keys[0]
    chunk_run = _launch_chunk(workspace, spec, key)
    assert instance.get_run_by_id(chunk_run).status == dg.DagsterRunStatus.SUCCESS

    launched = []
    for stage in stages:
        node = _checks_tab(workspace, stage)
        for check in node["assetChecksOrError"]["checks"]:
            # Partitioned: Dagster's UI disables the per-check "Execute" ("not yet supported").
            assert check["partitionDefinition"] is not None, check["name"]
            assert check["partitionStatuses"]["succeededPartitions"] == [key], check["name"]
        run_id = _execute_all(workspace, node, stage)
        assert run_id is not None  # offered: Dagster 1.13 enables it for checks that can subset
        launched.append(run_id)
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        _no_invariant_error(instance, run_id)

        for check in _checks_tab(workspace, stage)["assetChecksOrError"]["checks"]:
            name = f"{stage.to_user_string()}:{check['name']}"
            latest = check["executionForLatestMaterialization"]
            assert latest["runId"] == run_id and latest["status"] == "SKIPPED", name
            statuses = check["partitionStatuses"]
            assert statuses["succeededPartitions"] == [key], name
            assert statuses["executionFailedPartitions"] == statuses["failedPartitions"] == [], name
    assert len(set(launched)) == len(stages)


_REPORT_EVALUATION = """
mutation ReportEvaluation($eventParams: ReportAssetCheckEvaluationsParams!) {
  reportAssetCheckEvaluations(eventParams: $eventParams) {
    __typename
    ... on Error { message }
  }
}
"""


def test_a_chunk_a_gate_blocked_stays_blocked_through_execute_all_until_a_person_reports_it_passed(ui, sim):
    instance, workspace, home = ui
    spec = load_pipeline(REVIEWS)  # sentiment's success_rate: min 0.95, ERROR (blocking)
    sentiment = asset_key(spec, "sentiment")
    layout = spec_layout(spec)
    sim.set_faults(refusal=0.3)
    key = register(spec, spec.input.demo_data, instance, home).partition_keys[0]
    chunk_run = _launch_chunk(workspace, spec, key)
    assert instance.get_run_by_id(chunk_run).status == dg.DagsterRunStatus.FAILURE
    assert blocked_partitions(instance, [key], layout) == [key]

    run_id = _execute_all(workspace, _checks_tab(workspace, sentiment), sentiment)
    assert run_id is not None and instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
    assert blocked_partitions(instance, [key], layout) == [key]  # neither cleared nor failed again

    # A person accepts the chunk's rows as they are: "Report evaluation" on the gate, for that partition.
    # Dagster decides whether a report (which has no run) targets the latest materialization by comparing the
    # materialization's timestamp with the check row's create_timestamp, which SQLite stores to the whole second. A
    # report in the same second as the materialization would read as older than it; a person clicking in the UI is
    # never that fast, so the test waits for the next second as they would.
    (latest,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=sentiment, asset_partitions=[key]), limit=1
    ).records
    time.sleep(max(0.0, int(latest.timestamp) + 1.05 - time.time()))
    params = {
        "assetKey": {"path": sentiment.path},
        "checkName": "success_rate",
        "passed": True,
        "severity": "ERROR",
        "partitionKeys": [key],
        "description": "accepted by hand: the refusals were the provider's, the answers we have are good",
    }
    reported = _graphql(workspace, _REPORT_EVALUATION, {"eventParams": params})["reportAssetCheckEvaluations"]
    assert reported["__typename"] == "ReportAssetCheckEvaluationsSuccess", reported
    assert blocked_partitions(instance, [key], layout) == []
    (rate,) = [
        c
        for c in _checks_tab(workspace, sentiment)["assetChecksOrError"]["checks"]
        if c["name"] == "success_rate"
    ]
    # The UI shows the report as the gate's latest execution; Dagster ties a report to no materialization, so its
    # partition grid no longer counts the chunk as failed (nor as passed: "not evaluated").
    assert rate["executionForLatestMaterialization"]["status"] == "SUCCEEDED"
    assert rate["partitionStatuses"]["failedPartitions"] == []
