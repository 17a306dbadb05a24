"""The new-dataset sensor on a real folder: a file still being written never registers; a settled file
registers once, requests one run per chunk, and the dataset ends with its report.

The pipeline is BANKING77's spec with the sensors the code location builds for it (recovery_support): its
`banking77__new_dataset_sensor` watches the test's inbox in chunks of the spec's `input.chunk_size`."""

import sys
import time
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recovery_support import (  # noqa: E402
    COMPLETION,
    launch,
    recovery_location,
    recovery_spec,
    tick,
    write_labelled_dataset,
)

from sensors.new_datasets import NewDatasetCursor  # noqa: E402
from tests.spec_pipelines import layout_of, point_at  # noqa: E402

WATCHER = "banking77__new_dataset_sensor"

pytestmark = pytest.mark.slow


def _append_later(path: Path, extra: str) -> None:
    time.sleep(0.02)  # a writer still at work: the size (and mtime) moves
    with path.open("a") as f:
        f.write(extra)


def test_a_dropped_file_registers_once_when_settled_runs_its_chunks_and_gets_a_report(
    start_sim, tmp_path, monkeypatch
):
    sim = start_sim({"seed": 5})
    point_at(sim, monkeypatch)
    home, inbox = tmp_path / "home", tmp_path / "inbox"
    inbox.mkdir()
    write_labelled_dataset(tmp_path / "full.csv", 40)
    full = (tmp_path / "full.csv").read_text()
    half = len(full) // 2
    landing = inbox / "tickets.csv"
    landing.write_text(full[:half])
    (inbox / ".tickets.csv.part").write_text("ignored")  # a writer's temp file

    spec = recovery_spec(input={"chunk_size": 20})
    chunks = layout_of(spec).chunks_partitions
    defs, sensors = recovery_location(spec, home, watch=str(inbox))
    watcher, completion = sensors[WATCHER], sensors[COMPLETION]
    with dg.instance_for_test() as instance:
        requests, cursor, skip = tick(watcher, instance, defs, None)
        assert requests == [] and "1 still being written" in skip
        _append_later(landing, full[half:])
        requests, cursor, _ = tick(watcher, instance, defs, cursor)
        assert requests == []  # changed since the last tick: still being written
        assert instance.get_dynamic_partitions(chunks) == []

        requests, cursor, _ = tick(watcher, instance, defs, cursor)  # unchanged over two ticks: settled
        keys = [r.partition_key for r in requests]
        dataset_id = keys[0].split("__c")[0]
        assert len(keys) == 2 and dataset_id.startswith("banking77-tickets-")
        assert {r.tags["chunkwise/dataset"] for r in requests} == {dataset_id}
        assert {r.tags["chunkwise/provider"] for r in requests} == {"openai"}
        assert all(launch(defs, instance, watcher, r).success for r in requests)

        again, cursor, _ = tick(watcher, instance, defs, cursor)
        assert again == []
        # A restarted daemon that lost its cursor sees the file anew: registered again (idempotent), the same
        # run keys requested, none launched twice.
        fresh = recovery_location(spec, home, watch=str(inbox))[1][WATCHER]
        tick(fresh, instance, defs, None)
        repeated, _, _ = tick(fresh, instance, defs, NewDatasetCursor(seen={str(landing.resolve()): [
            landing.stat().st_size, landing.stat().st_mtime]}).to_json())  # fmt: skip
        assert sorted(r.run_key for r in repeated) == sorted(r.run_key for r in requests)
        assert [launch(defs, instance, fresh, r) for r in repeated] == [None, None]
        assert sorted(instance.get_dynamic_partitions(chunks)) == sorted(keys)

        # A file with a _SUCCESS marker is complete at once.
        write_labelled_dataset(inbox / "refunds.csv", 20, seed=11)
        (inbox / "refunds.csv._SUCCESS").write_text("")
        marked, cursor, _ = tick(watcher, instance, defs, cursor)
        assert [r.partition_key.split("__c")[0].startswith("banking77-refunds-") for r in marked] == [True]
        assert all(launch(defs, instance, watcher, r).success for r in marked)

        finished, _, _ = tick(completion, instance, defs, None)
        assert len(finished) == 2
        assert all(launch(defs, instance, completion, r).success for r in finished)
        assert (home / "reports" / dataset_id / "completion_report.json").exists()
        assert (home / "reports" / dataset_id / "completion_report.md").exists()


def test_a_file_that_cannot_be_registered_is_reported_and_skipped_until_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", "sk-x")  # nothing is called: no run is launched
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    bad = inbox / "notes.csv"
    bad.write_text("id,body\n1,hello\n")
    (inbox / "notes.csv._SUCCESS").write_text("")
    defs, sensors = recovery_location(recovery_spec(), tmp_path / "home", watch=str(inbox))
    watcher = sensors[WATCHER]
    with dg.instance_for_test() as instance:
        requests, cursor, _ = tick(watcher, instance, defs, None)
        assert requests == []
        rejected = NewDatasetCursor.from_json(cursor).rejected[str(bad.resolve())]
        assert "no text column 'text'" in rejected["error"]
        requests, cursor, _ = tick(watcher, instance, defs, cursor)
        assert requests == [] and NewDatasetCursor.from_json(cursor).seen == {}


def test_a_stopped_provider_holds_new_chunk_runs_until_a_person_clears_it(start_sim, tmp_path, monkeypatch):
    from resources.llm.resource import spend_ledger_for
    from sensors.halts import clear_provider

    sim = start_sim({"seed": 5})
    point_at(sim, monkeypatch)
    home, inbox = tmp_path / "home", tmp_path / "inbox"
    inbox.mkdir()
    spec = recovery_spec(input={"chunk_size": 20})
    chunks = layout_of(spec).chunks_partitions
    defs, sensors = recovery_location(spec, home, watch=str(inbox))
    watcher = sensors[WATCHER]
    with dg.instance_for_test() as instance:
        # What a run writes when the provider answers 401 (resources/llm/runner.py).
        ledger = spend_ledger_for(instance.storage_directory())
        ledger.halt(f"openai|{sim.openai_base_url}|key:0123456789ab", "auth", "authentication failed (401)")
        write_labelled_dataset(inbox / "tickets.csv", 40)
        (inbox / "tickets.csv._SUCCESS").write_text("")
        requests, cursor, skip = tick(watcher, instance, defs, None)
        assert requests == []
        assert "2 chunk runs held: provider openai is stopped (auth" in skip
        assert len(instance.get_dynamic_partitions(chunks)) == 2  # registered, not launched
        requests, cursor, _ = tick(watcher, instance, defs, cursor)
        assert requests == []

        assert clear_provider(instance, "openai") == ["auth"]
        assert ledger.halts() == []
        requests, cursor, _ = tick(watcher, instance, defs, cursor)
        assert sorted(r.partition_key for r in requests) == sorted(instance.get_dynamic_partitions(chunks))
        assert tick(watcher, instance, defs, cursor)[0] == []
