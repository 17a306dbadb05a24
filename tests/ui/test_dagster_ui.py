"""The Dagster UI on a demo instance, in a real browser (Chromium from Debian, driven by Playwright), as a person
uses it after `make demo` and `make ui`: the lineage shows the stage assets; an asset's plots show its cost per
partition; the checks tab shows the gates' results; a 1-partition materialization launched from the UI finishes
with success; the Overview timeline shows the demo's runs; a model trial's asset plots accuracy and cost per
candidate. A screenshot of each step lands in
`<tmp_path>/screenshots` (the error of a failing step names the folder)."""

from __future__ import annotations

import math
import re
import time
from typing import Any

import pytest

from llm_assets.partitions import chunk_key
from llm_assets.spec import load_pipeline
from llm_assets.trials import candidate_labels
from tests.spec_pipelines import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.browser]

UI_TIMEOUT_MS = 90_000  # a page of the UI on a busy 2-core machine (two test workers, dagster dev, Chromium)
# The run launched from the UI: queued, launched by the daemon in its own process, 100 items via the simulator.
RUN_TIMEOUT_S = 600.0
STAGES = ("classified", "enriched")
RUNS_QUERY = """{ runsOrError { ... on Runs { results { runId pipelineName status
    repositoryOrigin { repositoryLocationName } tags { key value } } } } }"""
RUN_QUERY = """query Run($runId: ID!) { runOrError(runId: $runId) { __typename
    ... on Run { status pipelineName assetSelection { path } tags { key value } } } }"""
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
LAUNCH_MUTATION = """mutation Launch($executionParams: ExecutionParams!) {
    launchPipelineExecution(executionParams: $executionParams) { __typename
        ... on LaunchRunSuccess { run { runId } }
        ... on PythonError { message }
        ... on RunConfigValidationInvalid { errors { message } }
        ... on InvalidSubsetError { message } } }"""
TRIAL_SAMPLE = 100  # of the demo's 300 rows


def _operation(response: Any) -> str | None:
    """The GraphQL operation a browser response answers (None for anything else)."""
    if "/graphql" not in response.url or response.request.method != "POST":
        return None
    try:
        return (response.request.post_data_json or {}).get("operationName")
    except ValueError:
        return None


@pytest.mark.timeout(1800)
def test_the_ui_shows_the_demo_and_launches_a_chunk(demo_ui, page, screens):
    from playwright.sync_api import expect

    page.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)  # assertions wait as long as actions (their own default is 5 s)
    partitions = [chunk_key(demo_ui.dataset_id, n) for n in range(demo_ui.n_chunks)]
    assert demo_ui.demo_run_ids, "the demo left no runs in the instance"

    with screens.step(1, "lineage"):
        # The global lineage with the banking77 group open (groups start collapsed when there are several).
        page.goto(demo_ui.url("/asset-groups?expanded=global@global:banking77"))
        graph = page.locator("svg foreignObject")
        for stage in STAGES:
            expect(graph.get_by_text(stage, exact=True).first).to_be_visible()

    with screens.step(2, "cost-plot"):
        page.goto(demo_ui.url("/assets/banking77/classified?view=overview"))
        expect(page.get_by_role("button", name="Plots")).to_be_visible()
        # The plot is a canvas: its points are the partitions' latest materializations this query returns.
        with page.expect_response(lambda r: _operation(r) == "AssetPartitionEventsQuery") as answered:
            page.get_by_role("button", name="Plots").click()
        events = answered.value.json()["data"]["assetNodeOrError"]["latestMaterializationByPartition"]
        points = _float_points([e for e in events if e], "cost_usd")
        assert sorted(points) == partitions, (
            f"cost_usd plotted for {sorted(points)}, materialized {partitions}"
        )
        assert all(math.isfinite(cost) and cost > 0 for cost in points.values()), points
        plot = (
            page.locator("div")
            .filter(has=page.get_by_text("cost_usd", exact=True))
            .filter(has=page.locator("canvas"))
        )
        expect(plot.last).to_be_visible()
        plot.last.scroll_into_view_if_needed()

    with screens.step(3, "checks"):
        page.goto(demo_ui.url("/assets/banking77/classified?view=checks&checkDetail=success_rate"))
        # The list: each gate with its status; the pane: success_rate's latest evaluation.
        rows = page.locator("[class*='AssetChecks_checkRow__']")
        expect(rows.filter(has_text="success_rate")).to_contain_text("Succeeded")
        # Every gate of the stage has a result (a row reads "<name> <name> <status>").
        statuses = {text.split()[0]: text.splitlines()[-1] for text in rows.all_inner_texts()}
        unevaluated = {k: v for k, v in statuses.items() if v in ("Not evaluated", "In progress")}
        assert len(statuses) > 1 and not unevaluated, f"gates of banking77/classified: {statuses}"
        expect(page.get_by_text("Evaluation result")).to_be_visible()
        expect(page.get_by_text("Passed", exact=True).first).to_be_visible()

    with screens.step(4, "launch-one-partition"):
        partition = partitions[-1]
        page.goto(demo_ui.url("/assets/banking77/classified?view=partitions"))
        page.get_by_role("button", name=re.compile(r"Materialize…$")).click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_text("Partition selection")).to_be_visible()
        dialog.get_by_text(re.compile(r"^Select a partition")).click()  # opens the picker, with a search box
        picker = dialog.locator(".dagster-popover")
        picker.get_by_placeholder("Filter partitions").fill(partition)
        picker.locator("label").filter(has_text=partition).first.click()
        dialog.get_by_text(re.compile(r"^Launch runs to materialize")).click()  # the title: closes the picker
        launch = dialog.get_by_role("button", name="Launch 1 run")
        expect(launch).to_be_enabled()
        expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
        screens.shot("4-launch-dialog")
        with page.expect_response(lambda r: _operation(r) == "LaunchPipelineExecution") as launched:
            launch.click()
        result = launched.value.json()["data"]["launchPipelineExecution"]
        ui_launch = launched.value.request.post_data_json["variables"]["executionParams"]
        assert "run" in result, f"the UI could not launch the run: {result}"
        run_id = result["run"]["id"]
        run = _wait_for_run(demo_ui, run_id)
        page.goto(demo_ui.url(f"/runs/{run_id}"))
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()  # the run's status tag
        expect(page.get_by_text("RUN_SUCCESS", exact=True)).to_be_visible()  # its event log, loaded
        assert run["status"] == "SUCCESS", f"run {run_id} ended {run['status']}; `make ui` log: {demo_ui.log}"
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert tags.get("dagster/partition") == partition, tags
        assert run["assetSelection"] == [{"path": ["banking77", "classified"]}], run["assetSelection"]

    with screens.step(5, "overview-timeline"):
        page.goto(demo_ui.url("/overview/activity/timeline"))
        # The run launched in step 4 is drawn at least: wait for the bars, not for a spinner to go.
        expect(page.locator(".chunk-popover-target").first).to_be_visible()
        shown = _timeline_run_ids(page)
        row_names = page.locator("[class*='RunTimeline_rowName__']").all_inner_texts()
        runs = {r["runId"]: r for r in demo_ui.graphql(RUNS_QUERY)["runsOrError"]["results"]}
        missing = [runs[run_id] for run_id in demo_ui.demo_run_ids if run_id not in shown]
        assert not missing, (
            f"the timeline (rows {row_names}) does not show {len(missing)} of the demo's runs: {missing}"
        )
        # Each chunk run came from the code location, names its partition and the sensor that launched it.
        chunk_runs = [
            runs[run_id]
            for run_id in demo_ui.demo_run_ids
            if runs[run_id]["pipelineName"] == "banking77__chunk_job"
        ]
        assert len(chunk_runs) == demo_ui.n_chunks, [r["pipelineName"] for r in runs.values()]
        for run in chunk_runs:
            tags = {t["key"]: t["value"] for t in run["tags"]}
            assert run["repositoryOrigin"] == {"repositoryLocationName": "llm_assets.definitions"}, run
            assert tags.get("dagster/sensor_name") == "banking77__new_dataset_sensor", tags
            assert tags.get("dagster/partition", "").startswith(demo_ui.dataset_id), tags

    with screens.step(6, "trial-plots"):
        # The trial of `classified`'s candidates, one run per candidate partition, launched through the same
        # GraphQL call the UI made in step 4 (the Launchpad's config editor is not what is tested here); the
        # second run reuses the answers the first bought. Then its plots, in the browser: a point per candidate.
        spec = load_pipeline(ROOT / "pipelines" / "banking77.yaml", require_secrets=False)
        labels = candidate_labels(spec.stage("classified"))
        key = ["trials", "banking77", "classified"]
        for label in labels:
            params = {
                **ui_launch,
                "selector": {**ui_launch["selector"], "assetSelection": [{"path": key}], "assetCheckSelection": []},
                "runConfigData": {"ops": {"trials__banking77__classified": {"config": {
                    "dataset_id": demo_ui.dataset_id, "sample_size": TRIAL_SAMPLE}}}},
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": label}]},
            }  # fmt: skip
            launched = demo_ui.graphql(LAUNCH_MUTATION, {"executionParams": params})[
                "launchPipelineExecution"
            ]
            assert "run" in launched, f"the trial of {label} did not launch: {launched}"
            run = _wait_for_run(demo_ui, launched["run"]["runId"])
            assert run["status"] == "SUCCESS", f"the trial of {label} ended {run['status']}: {demo_ui.log}"
        page.goto(demo_ui.url("/assets/trials/banking77/classified?view=overview"))
        with page.expect_response(lambda r: _operation(r) == "AssetPartitionEventsQuery") as answered:
            page.get_by_role("button", name="Plots").click()
        events = [
            e
            for e in answered.value.json()["data"]["assetNodeOrError"]["latestMaterializationByPartition"]
            if e
        ]
        accuracy = _float_points(events, "accuracy")
        cost = _float_points(events, "cost_per_1k_usd")
        assert sorted(accuracy) == sorted(cost) == sorted(labels), (accuracy, cost)
        cheap, strong = labels  # the spec lists the cheap model first
        # The simulator's answer key makes the cheap model 75% and the strong one 92% accurate.
        assert 0.6 < accuracy[cheap] < accuracy[strong] <= 1.0 and 0 < cost[cheap] < cost[strong], (
            accuracy,
            cost,
        )
        for name in ("accuracy", "cost_per_1k_usd"):
            plot = (
                page.locator("div")
                .filter(has=page.get_by_text(name, exact=True))
                .filter(has=page.locator("canvas"))
            )
            expect(plot.last).to_be_visible()
        page.get_by_text("accuracy", exact=True).first.scroll_into_view_if_needed()


def _float_points(events: list[dict[str, Any]], label: str) -> dict[str, float]:
    """partition -> the float metadata entry `label` of its latest materialization (what the plots draw)."""
    points = {}
    for event in events:
        for entry in event["metadataEntries"]:
            if entry["label"] == label and entry["__typename"] == "FloatMetadataEntry":
                points[event["partition"]] = entry["floatValue"]
    return points


def _wait_for_run(demo_ui, run_id: str) -> dict[str, Any]:
    """The run once it has ended (polled through the webserver's GraphQL)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = demo_ui.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
        if run.get("status") in TERMINAL:
            return run
        time.sleep(2.0)
    raise AssertionError(f"run {run_id} did not end within {RUN_TIMEOUT_S:.0f}s (last seen: {run})")


def _timeline_run_ids(page) -> set[str]:
    """The ids of the runs the timeline draws: each bar's hover card links every run it stands for."""
    shown: set[str] = set()
    bars = page.locator(".chunk-popover-target")
    cards = page.locator(".bp5-popover-content")
    for i in range(bars.count()):
        bars.nth(i).hover()
        card = cards.filter(has=page.locator("a[href^='/runs/']"))
        card.wait_for(state="visible")
        for href in card.locator("a[href^='/runs/']").evaluate_all("els => els.map(e => e.href)"):
            shown.add(href.rsplit("/runs/", 1)[1].split("?")[0])
        page.mouse.move(0, 0)
        cards.first.wait_for(state="detached")  # one card at a time: the next bar's is the only one
    return shown
