"""deploy/dagster-postgres.yaml as a real Dagster instance on a real PostgreSQL (scripts/postgres_server.py): it
loads with Dagster's Postgres storages and the unattended settings of deploy/dagster.yaml, a chunk of BANKING77's
pipeline runs on it against the simulator and is seen as materialized (with its cost) by another process opening
the same config, and the new-dataset sensor requests and skips on it exactly as on SQLite."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from tests.sensors.recovery_support import (
    evaluate,
    launch,
    recovery_location,
    recovery_spec,
    tick,
    write_labelled_dataset,
)
from tests.spec_pipelines import layout_of, point_at, register_file, run_chunk, spec_defs, test_spec

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
WATCHER = "banking77__new_dataset_sensor"
STAGES = ("classified", "enriched")

pytestmark = pytest.mark.slow


def test_the_postgres_config_is_the_unattended_config_with_dagsters_postgres_storage(
    postgres_instance, postgres_dsn
):
    instance = postgres_instance
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    # Everything but the storage is deploy/dagster.yaml's: the run queue, run monitoring, sensors in threads.
    single = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    shared = yaml.safe_load((DEPLOY / "dagster-postgres.yaml").read_text())
    assert "storage" not in single and {k: v for k, v in shared.items() if k != "storage"} == single
    assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
    assert instance.run_coordinator.get_run_queue_config().max_concurrent_runs == 8
    assert instance.run_monitoring_enabled and instance.get_settings("sensors")["num_workers"] == 4
    # Opening it created Dagster's tables in the test's database, not in a file under DAGSTER_HOME.
    with psycopg2.connect(postgres_dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {row[0] for row in cursor.fetchall()}
    assert {"runs", "event_logs", "jobs", "job_ticks", "dynamic_partitions"} <= tables


def test_a_chunk_run_on_the_postgres_instance_is_materialized_with_its_cost_for_every_process(
    postgres_instance, dagster_home, sim, tmp_path, monkeypatch
):
    point_at(sim, monkeypatch)
    home = tmp_path / "home"
    write_labelled_dataset(tmp_path / "tickets.csv", 20)
    spec = test_spec()
    layout = layout_of(spec)
    dataset = register_file(spec, tmp_path / "tickets.csv", postgres_instance, home, chunk_size=20)
    (key,) = dataset.partition_keys

    result = run_chunk(spec_defs(spec, home), spec, postgres_instance, key)
    assert result.success

    # Another process (the webserver, the daemon, a run worker elsewhere) opens the same config and sees it all.
    with dg.DagsterInstance.from_config(str(dagster_home)) as other:
        assert other.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
        assert other.get_dynamic_partitions(layout.chunks_partitions) == [key]
        costs = {}
        for asset in ("items", *STAGES):
            assert other.get_materialized_partitions(layout.key(asset)) == {key}, asset
        for stage in STAGES:
            [record] = other.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=layout.key(stage), asset_partitions=[key]), limit=1
            ).records
            metadata = record.asset_materialization.metadata
            assert record.run_id == result.run_id
            assert isinstance(metadata["cost_usd"], dg.FloatMetadataValue), stage
            assert metadata["items_succeeded"].value > 0, stage
            costs[stage] = metadata["cost_usd"].value
    assert costs["classified"] > 0
    # The cost stored in Postgres is the simulator's bill for this chunk.
    assert sum(costs.values()) == pytest.approx(sim.stats()["billed_usd"], abs=1e-6)


@pytest.fixture(params=["sqlite", "postgres"])
def any_instance(request):
    """The same test on Dagster's default SQLite storage and on deploy/dagster-postgres.yaml."""
    if request.param == "postgres":
        yield request.getfixturevalue("postgres_instance")
    else:
        with dg.instance_for_test() as instance:
            yield instance


def test_the_new_dataset_sensor_requests_and_skips_on_postgres_as_on_sqlite(
    any_instance, tmp_path, monkeypatch
):
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", "sk-x")  # no chunk run is launched here
    instance = any_instance
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_labelled_dataset(inbox / "tickets.csv", 40)
    (inbox / "tickets.csv._SUCCESS").write_text("")  # complete at once
    spec = recovery_spec(input={"chunk_size": 20})
    chunks = layout_of(spec).chunks_partitions
    defs, sensors = recovery_location(spec, tmp_path / "home", watch=str(inbox))
    watcher = sensors[WATCHER]

    [registration], cursor, _ = tick(watcher, instance, defs, None)
    assert registration.job_name == "banking77__register_job"
    assert launch(defs, instance, watcher, registration).success

    data = evaluate(watcher, instance, defs, cursor)
    keys = sorted(r.partition_key for r in data.run_requests)
    assert len(keys) == 2 and {r.run_key for r in data.run_requests} == {f"{k}:attempt-1" for k in keys}
    [added] = data.dynamic_partitions_requests
    assert sorted(added.partition_keys) == keys
    assert sorted(instance.get_dynamic_partitions(chunks)) == keys

    # A restarted daemon (no cursor) finds the registration run by its run key in the run storage: the file is
    # not registered again, the same chunk runs are requested, and no partition is added twice.
    fresh = recovery_location(spec, tmp_path / "home", watch=str(inbox))[1][WATCHER]
    [again], lost, _ = tick(fresh, instance, defs, None)
    assert again.run_key == registration.run_key
    assert launch(defs, instance, fresh, again) is None
    data = evaluate(fresh, instance, defs, lost)
    assert sorted(r.partition_key for r in data.run_requests) == keys
    assert not data.dynamic_partitions_requests
    assert len(instance.get_runs(filters=dg.RunsFilter(job_name="banking77__register_job"))) == 1
