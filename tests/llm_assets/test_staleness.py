"""Staleness is visible (issue 13, item 5): a chunk's stage partition is unsynced in Dagster when an earlier
stage's partition of the same chunk was re-made with other answers, or when its own prompt or model changed; the
opt-in `<pipeline>__refresh_stale` automation re-runs exactly those partitions.

Statuses come from Dagster's own resolver (`CachingStaleStatusResolver`, what the UI's GraphQL `staleStatus`
and `staleStatusByPartition` call) on a real instance after real runs against the simulator; the automation
condition is evaluated by `dg.evaluate_automation_conditions` on the same instance.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster_graphql.test.utils import execute_dagster_graphql

from llm_assets.pipeline_assets import pipeline_definitions, refresh_stale_sensor_name
from tests.llm_assets.test_spec_versions import _output, _write
from tests.spec_pipelines import point_at, register_file, run_chunk, spec_defs, test_spec

pytestmark = pytest.mark.slow

CLASSIFIED = dg.AssetKey(["banking77", "classified"])
ENRICHED = dg.AssetKey(["banking77", "enriched"])
FRESH, STALE = StaleStatus.FRESH, StaleStatus.STALE


def _resolver(defs: dg.Definitions, instance: dg.DagsterInstance) -> CachingStaleStatusResolver:
    """A new resolver per question: it caches what it read, as the UI's does within one request."""
    return CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))


def _statuses(
    defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey, partitions: list[str]
) -> dict[str, StaleStatus]:
    resolver = _resolver(defs, instance)
    return {p: resolver.get_status(key, p) for p in partitions}


def _root_causes(
    defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> list[tuple[dg.AssetKey, str | None, str]]:
    causes = _resolver(defs, instance).get_stale_root_causes(key, partition)
    return [(c.asset_key, c.partition_key, c.reason) for c in causes]


def _remake(defs, spec, instance, key: str, asset: dg.AssetKey) -> None:
    """One stage of one chunk re-materialized on its own, as a person does from the UI."""
    assert run_chunk(defs, spec, instance, key, asset_selection=[asset]).success


def _forget_checkpoint(home: Path, dataset_id: str, key: str, stage: str) -> None:
    """Without its checkpoint a re-run asks the model again (and pays again)."""
    shutil.rmtree(home / "checkpoints" / dataset_id / key / stage)


def _labels(instance: dg.DagsterInstance, key: str) -> dict[str, str]:
    rows = _output(instance, CLASSIFIED, key)
    return dict(zip(rows["item_id"], rows["label"], strict=True))


def test_a_chunk_re_made_with_other_answers_makes_only_that_chunks_later_stage_unsynced(
    sim, tmp_path, monkeypatch
):
    point_at(sim, monkeypatch)
    home, data = tmp_path / "home", tmp_path / "s.csv"
    _write(data, 12)
    spec = test_spec(stages={"enriched": {"route": "all"}})
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, data, instance, home, chunk_size=4)
        keys = dataset.partition_keys
        for key in keys:
            assert run_chunk(defs, spec, instance, key).success
        assert _statuses(defs, instance, ENRICHED, keys) == dict.fromkeys(keys, FRESH)
        before = {key: _labels(instance, key) for key in keys}

        # Chunk 2 re-made from its checkpoint: the same answers, so nothing downstream is out of date.
        _remake(defs, spec, instance, keys[2], CLASSIFIED)
        # Chunks 0 and 1 re-made without their checkpoints while the model answers differently.
        sim.set_faults(degrade_rate=1.0)
        for key in keys[:2]:
            _forget_checkpoint(home, dataset.dataset_id, key, "classified")
            _remake(defs, spec, instance, key, CLASSIFIED)
        assert all(_labels(instance, k) != before[k] for k in keys[:2])
        assert _labels(instance, keys[2]) == before[keys[2]]

        assert _statuses(defs, instance, CLASSIFIED, keys) == dict.fromkeys(keys, FRESH)
        assert _statuses(defs, instance, ENRICHED, keys) == {keys[0]: STALE, keys[1]: STALE, keys[2]: FRESH}
        assert _root_causes(defs, instance, ENRICHED, keys[0]) == [
            (CLASSIFIED, keys[0], "has a new data version")
        ]

        # Re-made on the new answers, the chunk's enriched is in sync again; the other one is still not.
        sim.set_faults(degrade_rate=0.0)
        _remake(defs, spec, instance, keys[0], ENRICHED)
        assert _statuses(defs, instance, ENRICHED, keys) == {keys[0]: FRESH, keys[1]: STALE, keys[2]: FRESH}


def test_a_changed_prompt_makes_every_chunk_of_its_stage_unsynced_and_later_stages_only_if_answers_change(
    sim, tmp_path, monkeypatch
):
    point_at(sim, monkeypatch)
    home, data = tmp_path / "home", tmp_path / "p.csv"
    _write(data, 8)
    old = test_spec(stages={"enriched": {"route": "all"}})
    new_prompt = old.stage("classified").system_prompt + "\nWhen unsure, prefer the more specific intent."
    new = test_spec(stages={"enriched": {"route": "all"}, "classified": {"system_prompt": new_prompt}})
    old_defs, new_defs = spec_defs(old, home), spec_defs(new, home)
    with dg.instance_for_test() as instance:
        keys = register_file(old, data, instance, home, chunk_size=4).partition_keys
        for key in keys:
            assert run_chunk(old_defs, old, instance, key).success
        before = _labels(instance, keys[0])

        # Loaded with the new prompt: every chunk of `classified` is unsynced, for its code version; `enriched`
        # has not changed and its input has not either.
        assert _statuses(new_defs, instance, CLASSIFIED, keys) == dict.fromkeys(keys, STALE)
        assert _root_causes(new_defs, instance, CLASSIFIED, keys[1]) == [
            (CLASSIFIED, keys[1], "has a new code version")
        ]
        assert _statuses(new_defs, instance, ENRICHED, keys) == dict.fromkeys(keys, FRESH)

        # Chunk 0 re-made under the new prompt: paid again, and the simulator gives the same labels, so the
        # data version (a digest of the answers) is unchanged and `enriched` stays in sync.
        _remake(new_defs, new, instance, keys[0], CLASSIFIED)
        assert _labels(instance, keys[0]) == before
        assert _statuses(new_defs, instance, CLASSIFIED, keys) == {keys[0]: FRESH, keys[1]: STALE}
        assert _statuses(new_defs, instance, ENRICHED, keys) == dict.fromkeys(keys, FRESH)


def test_refresh_stale_requests_exactly_the_unsynced_chunks_and_is_off_by_default(sim, tmp_path, monkeypatch):
    point_at(sim, monkeypatch)
    home, data = tmp_path / "home", tmp_path / "r.csv"
    _write(data, 16)
    old = test_spec(stages={"enriched": {"route": "all"}})
    new_prompt = old.stage("classified").system_prompt + "\nWhen unsure, prefer the more specific intent."
    new = test_spec(stages={"enriched": {"route": "all"}, "classified": {"system_prompt": new_prompt}})
    old_defs, new_defs = spec_defs(old, home), spec_defs(new, home)

    sensor = {s.name: s for s in pipeline_definitions(old, home=home).sensors}[refresh_stale_sensor_name(old)]
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert set(sensor.asset_selection.resolve(old_defs.resolve_asset_graph())) == {CLASSIFIED, ENRICHED}

    def requested(result: dg.EvaluateAutomationConditionsResult) -> dict[dg.AssetKey, set[str | None]]:
        return {key: set(result.get_requested_partitions(key)) for key in (CLASSIFIED, ENRICHED)}

    with dg.instance_for_test() as instance:
        dataset = register_file(old, data, instance, home, chunk_size=4)
        keys = dataset.partition_keys
        ran, never_run = keys[:3], keys[3]
        for key in ran:
            assert run_chunk(old_defs, old, instance, key).success
        tick = dg.evaluate_automation_conditions(old_defs, instance)
        assert tick.total_requested == 0  # the first tick only remembers where things stand

        # Chunk 0's classified re-made with other answers, chunk 1's with the same: only chunk 0's enriched.
        _remake(old_defs, old, instance, keys[1], CLASSIFIED)
        sim.set_faults(degrade_rate=1.0)
        _forget_checkpoint(home, dataset.dataset_id, keys[0], "classified")
        _remake(old_defs, old, instance, keys[0], CLASSIFIED)
        sim.set_faults(degrade_rate=0.0)
        tick = dg.evaluate_automation_conditions(old_defs, instance, cursor=tick.cursor)
        assert requested(tick) == {CLASSIFIED: set(), ENRICHED: {keys[0]}}
        assert _statuses(old_defs, instance, ENRICHED, keys[:3]) == {
            keys[0]: STALE,
            keys[1]: FRESH,
            keys[2]: FRESH,
        }

        # Requested once: the next tick does not ask again; once it has run, nothing is left to do.
        tick = dg.evaluate_automation_conditions(old_defs, instance, cursor=tick.cursor)
        assert tick.total_requested == 0
        _remake(old_defs, old, instance, keys[0], ENRICHED)
        tick = dg.evaluate_automation_conditions(old_defs, instance, cursor=tick.cursor)
        assert tick.total_requested == 0

        # A new prompt: every chunk `classified` was made for, never the chunk no run has started yet (that is
        # the sensors' job), and not `enriched` before `classified` has new answers.
        tick = dg.evaluate_automation_conditions(new_defs, instance, cursor=tick.cursor)
        assert requested(tick) == {CLASSIFIED: set(ran), ENRICHED: set()}
        assert never_run not in tick.get_requested_partitions(CLASSIFIED)


# ------------------------------------------------------------------------------------------------ the UI's calls

ROOT = Path(__file__).resolve().parents[2]
LOCATION = """import os
from pathlib import Path

from llm_assets.pipeline_assets import pipeline_definitions
from tests.spec_pipelines import test_spec

defs = pipeline_definitions(test_spec(stages={"enriched": {"route": "all"}}), home=Path(os.environ["CHUNKWISE_HOME"]))
"""
"""A code location with one pipeline, its sensor included (as it will be once llm_assets/location.py adds it)."""

_STALENESS = """
query Staleness($assetKey: AssetKeyInput!, $partition: String!, $partitions: [String!]) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      staleStatus
      onePartition: staleStatus(partition: $partition)
      staleCauses(partition: $partition) { key { path } partitionKey reason dependency { path } dependencyPartitionKey }
      staleStatusByPartition(partitions: $partitions)
      automationCondition { label }
    }
  }
}
"""

_SENSORS = """
query Sensors {
  repositoriesOrError { ... on RepositoryConnection { nodes { sensors { name sensorType defaultStatus } } } }
}
"""


def _graphql(workspace: WorkspaceProcessContext, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """One request, as the webserver serves it (a request context per request)."""
    with workspace.create_request_context() as context:
        return execute_dagster_graphql(context, query, variables).data


def test_the_ui_shows_the_unsynced_chunk_on_its_partition_and_the_refresh_sensor_off(
    sim, tmp_path, monkeypatch
):
    point_at(sim, monkeypatch)
    home, data = tmp_path / "home", tmp_path / "u.csv"
    monkeypatch.setenv("CHUNKWISE_HOME", str(home))
    _write(data, 8)
    module = tmp_path / "staleness_location.py"
    module.write_text(LOCATION)
    spec = test_spec(stages={"enriched": {"route": "all"}})
    defs = pipeline_definitions(spec, home=home)
    origin = LoadableTargetOrigin(python_file=str(module), attribute="defs", working_directory=str(ROOT))
    location = InProcessWorkspaceLoadTarget(InProcessCodeLocationOrigin(origin, location_name="staleness"))
    with dg.instance_for_test() as instance, WorkspaceProcessContext(instance, location) as workspace:
        dataset = register_file(spec, data, instance, home, chunk_size=4)
        keys = dataset.partition_keys
        for key in keys:
            assert run_chunk(defs, spec, instance, key).success
        sim.set_faults(degrade_rate=1.0)
        _forget_checkpoint(home, dataset.dataset_id, keys[0], "classified")
        _remake(defs, spec, instance, keys[0], CLASSIFIED)

        variables = {"assetKey": {"path": ENRICHED.path}, "partition": keys[0], "partitions": keys}
        node = _graphql(workspace, _STALENESS, variables)["assetNodeOrError"]
        # The partition's page: "Unsynced", because classified's partition of the same chunk has new answers.
        assert node["onePartition"] == "STALE"
        assert node["staleCauses"] == [
            {
                "key": {"path": CLASSIFIED.path},
                "partitionKey": keys[0],
                "reason": "has a new data version",
                "dependency": None,
                "dependencyPartitionKey": None,
            }
        ]
        assert node["staleStatusByPartition"] == ["STALE", "FRESH"]
        # Asked for the asset as a whole (the graph, the catalog), Dagster says a partitioned asset is fresh.
        assert node["staleStatus"] == "FRESH"
        assert node["automationCondition"]["label"] == "refresh_stale"

        nodes = _graphql(workspace, _SENSORS, {})["repositoriesOrError"]["nodes"]
        sensors = {s["name"]: s for n in nodes for s in n["sensors"]}
        # Evaluated by the daemon (the UI's Automation page lists it), not in the code server.
        assert sensors[refresh_stale_sensor_name(spec)]["sensorType"] == "AUTO_MATERIALIZE"
        assert sensors[refresh_stale_sensor_name(spec)]["defaultStatus"] == "STOPPED"


def test_a_later_stage_reading_earlier_answers_asks_again_for_the_items_whose_message_changed(
    sim, tmp_path, monkeypatch
):
    """A stage whose user message quotes an earlier stage's answer (as the reviews spec's `reply_draft` quotes
    `{sentiment.reason}`) keeps its checkpoint until the dataset completes; re-made after that earlier stage
    answered differently, it sends again exactly the items whose message changed, counted at the simulator."""
    point_at(sim, monkeypatch)
    home, data = tmp_path / "home", tmp_path / "s.csv"
    _write(data, 8)
    template = "{text}\nIntent so far: {classified.label}"
    spec = test_spec(stages={"enriched": {"route": "all", "user_template": template}})
    defs = spec_defs(spec, home)

    def billed() -> int:
        return sum(1 for r in sim.requests() if r["status"] == "200")

    with dg.instance_for_test() as instance:
        [key] = register_file(spec, data, instance, home, chunk_size=8).partition_keys
        assert run_chunk(defs, spec, instance, key).success
        before, sent = _labels(instance, key), billed()

        _remake(defs, spec, instance, key, ENRICHED)  # same messages: everything from the checkpoint
        assert billed() == sent

        sim.set_faults(degrade_rate=1.0)
        _forget_checkpoint(
            home, register_file(spec, data, instance, home, chunk_size=8).dataset_id, key, "classified"
        )
        _remake(defs, spec, instance, key, CLASSIFIED)
        changed = sum(1 for item, label in _labels(instance, key).items() if label != before[item])
        assert changed > 0
        sim.set_faults(degrade_rate=0.0)
        sent = billed()
        _remake(defs, spec, instance, key, ENRICHED)
        assert billed() == sent + changed  # the enriched requests: one per changed message
        assert _statuses(defs, instance, ENRICHED, [key]) == {key: FRESH}
