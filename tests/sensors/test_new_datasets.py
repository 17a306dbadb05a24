"""The new-dataset sensor on a real folder: a file still being written never registers; a settled file is
registered by a `<pipeline>__register_job` run (never by the tick: the tick does not even open the file), and a
later tick adds its chunk partitions through Dagster (`dynamic_partitions_requests`) and requests one run per
chunk, once, however often the file is seen; the dataset ends with its report.

The pipeline is BANKING77's spec with the sensors the code location builds for it (recovery_support): its
`banking77__new_dataset_sensor` watches the test's inbox in chunks of the spec's `input.chunk_size`."""

import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recovery_support import (  # noqa: E402
    BACKFILL,
    COMPLETION,
    evaluate,
    is_registration,
    launch,
    recovery_location,
    recovery_spec,
    register_landed,
    tick,
    write_labelled_dataset,
)

from llm_assets.datasets import list_datasets  # noqa: E402
from llm_assets.run_liveness import HOST_TAG, PID_TAG, process_tags  # noqa: E402
from sensors.new_datasets import (  # noqa: E402
    RUN_KEY_TAG,
    SENSOR_NAME_TAG,
    NewDatasetCursor,
    registration_run_key,
)
from sensors.registration import REGISTERED_DATASET_TAG  # noqa: E402
from tests.spec_pipelines import layout_of, point_at  # noqa: E402

WATCHER = "banking77__new_dataset_sensor"

pytestmark = pytest.mark.slow


def _append_later(path: Path, extra: str) -> None:
    time.sleep(0.02)  # a writer still at work: the size (and mtime) moves
    with path.open("a") as f:
        f.write(extra)


_opened: list[str] = []
_watching: set[str] = set()


def _record_opens(event: str, args: tuple) -> None:
    # Python's audit hook sees every open() of a path, whoever calls it (the sensor, pandas, the csv reader).
    if event == "open" and args and isinstance(args[0], str | Path) and str(args[0]) in _watching:
        _opened.append(str(args[0]))


sys.addaudithook(_record_opens)


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

        # Unchanged over two ticks: settled. The tick asks for a registration run; it registers nothing itself.
        [registration], cursor, _ = tick(watcher, instance, defs, cursor)
        assert registration.job_name == "banking77__register_job"
        assert (
            registration.run_key.startswith(f"register:{landing.resolve()}:")
            and registration.partition_key is None
        )
        assert list_datasets(home) == [] and instance.get_dynamic_partitions(chunks) == []
        # Not launched yet (the daemon submits after the tick): the next tick asks for the same run key again.
        [again], cursor, skip = tick(watcher, instance, defs, cursor)
        assert again.run_key == registration.run_key
        run = launch(defs, instance, watcher, registration)
        assert run.success and run.dagster_run.tags[REGISTERED_DATASET_TAG].startswith("banking77-tickets-")
        assert instance.get_dynamic_partitions(chunks) == []  # the run wrote the manifest, added no partition

        # The next tick reads the run's outcome: partitions through Dagster, one run per chunk.
        data = evaluate(watcher, instance, defs, cursor)
        cursor, requests = data.cursor, list(data.run_requests)
        keys = [r.partition_key for r in requests]
        dataset_id = keys[0].split("__c")[0]
        assert len(keys) == 2 and dataset_id == run.dagster_run.tags[REGISTERED_DATASET_TAG]
        [added] = data.dynamic_partitions_requests
        assert isinstance(added, dg.AddDynamicPartitionsRequest)
        assert added.partitions_def_name == chunks and sorted(added.partition_keys) == sorted(keys)
        assert sorted(instance.get_dynamic_partitions(chunks)) == sorted(keys)  # applied as the daemon does
        assert {r.run_key for r in requests} == {f"{k}:attempt-1" for k in keys}
        assert {r.tags["chunkwise/dataset"] for r in requests} == {dataset_id}
        assert {r.tags["chunkwise/provider"] for r in requests} == {"openai"}
        assert all(launch(defs, instance, watcher, r).success for r in requests)

        again, cursor, _ = tick(watcher, instance, defs, cursor)
        assert again == []
        # A restarted daemon that lost its cursor sees the file anew: its registration run key is used already,
        # the tick finds that run and requests the same chunk run keys: nothing is launched twice.
        fresh = recovery_location(spec, home, watch=str(inbox))[1][WATCHER]
        _, lost, _ = tick(fresh, instance, defs, None)
        [reregistration], lost, _ = tick(fresh, instance, defs, lost)
        assert reregistration.run_key == registration.run_key
        assert launch(defs, instance, fresh, reregistration) is None
        data = evaluate(fresh, instance, defs, lost)
        assert sorted(r.run_key for r in data.run_requests) == sorted(r.run_key for r in requests)
        assert not data.dynamic_partitions_requests  # every chunk partition exists already
        assert [launch(defs, instance, fresh, r) for r in data.run_requests] == [None, None]
        assert sorted(instance.get_dynamic_partitions(chunks)) == sorted(keys)

        # A file with a _SUCCESS marker is complete at once.
        write_labelled_dataset(inbox / "refunds.csv", 20, seed=11)
        (inbox / "refunds.csv._SUCCESS").write_text("")
        requested, cursor, _ = tick(watcher, instance, defs, cursor)
        marked, cursor, _ = register_landed(watcher, instance, defs, cursor, requested)
        assert [r.partition_key.split("__c")[0].startswith("banking77-refunds-") for r in marked] == [True]
        assert all(launch(defs, instance, watcher, r).success for r in marked)

        finished, _, _ = tick(completion, instance, defs, None)
        assert len(finished) == 2
        assert all(launch(defs, instance, completion, r).success for r in finished)
        assert (home / "reports" / dataset_id / "completion_report.json").exists()
        assert (home / "reports" / dataset_id / "completion_report.md").exists()


def test_the_tick_never_opens_the_file_registration_reads_it_in_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", "sk-x")  # no chunk run is launched here
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    landing = inbox / "tickets.csv"
    write_labelled_dataset(landing, 40)
    (inbox / "tickets.csv._SUCCESS").write_text("")
    defs, sensors = recovery_location(
        recovery_spec(input={"chunk_size": 20}), tmp_path / "home", watch=str(inbox)
    )
    watcher = sensors[WATCHER]
    _watching.add(str(landing.resolve()))
    try:
        with dg.instance_for_test() as instance:
            _opened.clear()
            [registration], cursor, _ = tick(watcher, instance, defs, None)
            assert _opened == []  # listed and stat'ed only: a multi-GB file costs the tick nothing more
            assert launch(defs, instance, watcher, registration).success
            assert _opened  # the registration run is what reads it
            _opened.clear()
            requests, _, _ = tick(watcher, instance, defs, cursor)
            assert len(requests) == 2 and _opened == []  # chunks from the manifest the run wrote
    finally:
        _watching.clear()


def test_a_file_that_cannot_be_registered_is_reported_and_skipped_until_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", "sk-x")  # nothing is called: no chunk run is launched
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    bad = inbox / "notes.csv"
    bad.write_text("id,body\n1,hello\n")
    (inbox / "notes.csv._SUCCESS").write_text("")
    defs, sensors = recovery_location(recovery_spec(), tmp_path / "home", watch=str(inbox))
    watcher = sensors[WATCHER]
    with dg.instance_for_test() as instance:
        [registration], cursor, _ = tick(watcher, instance, defs, None)
        run = launch(defs, instance, watcher, registration)
        assert not run.success
        # Refused, not retried: one step attempt, however the op's RetryPolicy would treat a storage error.
        assert len([e for e in run.all_events if e.is_step_failure]) == 1
        requests, cursor, _ = tick(watcher, instance, defs, cursor)
        assert requests == []
        rejected = NewDatasetCursor.from_json(cursor).rejected[str(bad.resolve())]
        assert "no text column 'text'" in rejected["error"] and run.run_id in rejected["error"]
        requests, cursor, _ = tick(watcher, instance, defs, cursor)
        assert requests == [] and NewDatasetCursor.from_json(cursor).seen == {}

        bad.write_text("id,text\n1,hello\n")  # fixed: a new version of the file is registered
        [fixed], cursor, _ = tick(watcher, instance, defs, cursor)
        assert is_registration(fixed) and fixed.run_key != registration.run_key


def test_a_registration_run_killed_mid_read_is_requested_again_as_a_new_attempt(tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", "sk-x")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    landing = inbox / "tickets.csv"
    write_labelled_dataset(landing, 20)
    (inbox / "tickets.csv._SUCCESS").write_text("")
    defs, sensors = recovery_location(
        recovery_spec(input={"chunk_size": 20}), tmp_path / "home", watch=str(inbox)
    )
    watcher, backfill = sensors[WATCHER], sensors[BACKFILL]
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    with dg.instance_for_test() as instance:
        [registration], cursor, _ = tick(watcher, instance, defs, None)
        # What a run worker killed by kill -9 while reading leaves: the run STARTED, tagged with its dead pid.
        instance.create_run_for_job(
            defs.resolve_job_def(registration.job_name),
            run_config=registration.run_config,
            status=dg.DagsterRunStatus.STARTED,
            tags={
                **registration.tags,
                RUN_KEY_TAG: registration.run_key,
                SENSOR_NAME_TAG: WATCHER,
                HOST_TAG: process_tags()[HOST_TAG],
                PID_TAG: gone.stdout.strip(),
            },
        )
        assert tick(watcher, instance, defs, cursor)[0] == []  # still running, as far as Dagster knows
        tick(backfill, instance, defs, None)  # the liveness sweep marks it failed
        [second], cursor, _ = tick(watcher, instance, defs, cursor)
        stat = landing.stat()
        assert second.run_key == registration_run_key(str(landing.resolve()), stat.st_size, stat.st_mtime, 2)
        requests, _, _ = register_landed(watcher, instance, defs, cursor, [second])
        assert [r.partition_key.startswith("banking77-tickets-") for r in requests] == [True]


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
        requested, cursor, _ = tick(watcher, instance, defs, None)
        requests, cursor, skip = register_landed(watcher, instance, defs, cursor, requested)
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
