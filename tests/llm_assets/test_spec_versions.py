"""A stage's version is its asset's code version: a partition made by an older spec is unsynced in Dagster, and a
re-materialization with the new spec pays every item again under the new prompt version, never mixing the two
(issue 12, part 2)."""

from __future__ import annotations

import csv
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from io_managers.parquet_files import read_parquet
from tests.spec_pipelines import point_at, register_file, run_chunk, spec_defs, test_spec


def _write(path: Path, n: int) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "text", "team"])
        for i in range(n):
            out.writerow([f"v-{i:03d}", f"my card payment number {i} was declined twice", "cards"])


def _status(
    defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> StaleStatus:
    resolver = CachingStaleStatusResolver(
        instance, defs.resolve_asset_graph(), LoadingContextForTest(instance)
    )
    return resolver.get_status(key, partition)


def _output(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> pd.DataFrame:
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records[0]
    return read_parquet(str(record.asset_materialization.metadata["uri"].value))


def test_a_changed_prompt_marks_the_partition_unsynced_and_never_mixes_versions(sim, tmp_path, monkeypatch):
    point_at(sim, monkeypatch)
    home = tmp_path / "home"
    data = tmp_path / "v.csv"
    _write(data, 12)
    old = test_spec(stages={"enriched": {"route": "all"}})
    new_prompt = old.stage("classified").system_prompt + "\nWhen unsure, prefer the more specific intent."
    new = test_spec(stages={"enriched": {"route": "all"}, "classified": {"system_prompt": new_prompt}})
    classified = dg.AssetKey(["banking77", "classified"])
    assert new.stage("classified").version() != old.stage("classified").version()
    assert new.stage("enriched").version() == old.stage("enriched").version()

    with dg.instance_for_test() as instance:
        dataset = register_file(old, data, instance, home, chunk_size=12)
        key = dataset.partition_keys[0]
        assert run_chunk(spec_defs(old, home), old, instance, key).success
        sent_before = len(sim.requests())

        # Loaded with the new spec, Dagster sees the old partition as made by other code.
        new_defs = spec_defs(new, home)
        assert _status(spec_defs(old, home), instance, classified, key) == StaleStatus.FRESH
        assert _status(new_defs, instance, classified, key) == StaleStatus.STALE

        # Re-materialized: every item of the changed stage is paid again under the new version (the old
        # version's checkpoint is not reused), and every output row carries one version.
        assert run_chunk(new_defs, new, instance, key).success
        resent = [r for r in sim.requests()[sent_before:] if r["model"] == new.stage("classified").model]
        assert len(resent) >= 12
        rows = _output(instance, classified, key)
        assert set(rows["prompt_version"]) == {new.stage("classified").prompt_version()}
        assert rows["item_id"].is_unique and len(rows) == 12
        assert _status(new_defs, instance, classified, key) == StaleStatus.FRESH
