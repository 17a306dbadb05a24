"""The shared backend's checkpoints (resources/checkpoints_pg.py) against a real PostgreSQL server: the contract
of the file backend (load, record, replace, one writer, remove), a writer killed with kill -9 (everything it
was told was recorded is there, and its lock is released by the server within the stated bound), and an
unreachable server (one message naming the setting, no password). The kill -9 of a whole chunk run, re-paying at
most what was in flight, runs on both backends in tests/llm_assets/test_crash_resume.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from resources.checkpoints import CheckpointError, CheckpointInUse, ChunkCheckpoint
from resources.checkpoints_pg import PostgresChunkCheckpoint, open_checkpoint, remove_checkpoints
from resources.state_url import KEEPALIVE_COUNT, KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, STATE_URL_ENV

ROOT = Path(__file__).resolve().parents[2]


def checkpoint(url: str, partition: str = "ds__c00000", stage: str = "classified") -> PostgresChunkCheckpoint:
    return PostgresChunkCheckpoint(url, "ds", partition, stage)


def test_records_load_back_replace_by_key_and_survive_a_new_object(postgres_dsn):
    first = checkpoint(postgres_dsn)
    assert first.load() == {}
    first.record("a", {"ok": True, "output": {"label": "x"}, "n": 1})
    first.record("b", {"ok": False, "error": "schema_invalid"})
    first.record("a", {"ok": True, "output": {"label": "y"}, "n": 2})  # the last value wins
    assert first.load() == {
        "a": {"ok": True, "output": {"label": "y"}, "n": 2},
        "b": {"ok": False, "error": "schema_invalid"},
    }
    first.close()
    with pytest.raises(CheckpointError, match="closed"):
        first.record("c", {})
    again = checkpoint(postgres_dsn)
    assert set(again.load()) == {"a", "b"}
    assert checkpoint(postgres_dsn, stage="enriched").load() == {}  # another stage is another checkpoint
    with pytest.raises(TypeError, match="JSON"):
        again.record("c", {"bad": object()})
    again.close()


def test_one_writer_at_a_time_and_remove_waits_for_none(postgres_dsn):
    writer = checkpoint(postgres_dsn)
    writer.record("a", {"ok": True})
    other = checkpoint(postgres_dsn)
    with pytest.raises(CheckpointInUse, match="another process"):
        other.record("b", {"ok": True})
    assert other.load() == {"a": {"ok": True}}  # reading never needs the lock
    writer.close()
    third = checkpoint(postgres_dsn)
    third.record("b", {"ok": True})
    third.close()
    third.remove()
    assert checkpoint(postgres_dsn).load() == {}
    third.remove()  # idempotent


def test_completion_removes_the_succeeded_chunks_checkpoints_only(postgres_dsn):
    for partition in ("ds__c00000", "ds__c00001"):
        for stage in ("classified", "enriched"):
            with checkpoint(postgres_dsn, partition, stage) as c:
                c.record("a", {"ok": True})
    assert remove_checkpoints(postgres_dsn, "ds", {"ds__c00000"}) == (2, 2)
    assert checkpoint(postgres_dsn, "ds__c00000").load() == {}
    assert checkpoint(postgres_dsn, "ds__c00001").load() == {"a": {"ok": True}}


def test_the_setting_chooses_the_backend(postgres_dsn, monkeypatch, tmp_path):
    monkeypatch.delenv(STATE_URL_ENV, raising=False)
    assert isinstance(open_checkpoint(tmp_path, "ds", "ds__c00000", "classified"), ChunkCheckpoint)
    monkeypatch.setenv(STATE_URL_ENV, postgres_dsn)
    assert isinstance(open_checkpoint(tmp_path, "ds", "ds__c00000", "classified"), PostgresChunkCheckpoint)


CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from resources.checkpoints_pg import PostgresChunkCheckpoint
    c = PostgresChunkCheckpoint(sys.argv[1], "ds", "ds__c00000", "classified")
    i = 0
    while True:
        c.record(f"item-{i:06d}", {"ok": True, "i": i})
        print(f"recorded item-{i:06d}", flush=True)  # only after record() returned
        i += 1
    """
)


def test_a_killed_writer_loses_nothing_it_recorded_and_its_lock_is_released(postgres_dsn):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, postgres_dsn, str(ROOT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    promised = []
    assert child.stdout is not None
    while len(promised) < 300:
        line = child.stdout.readline().decode()
        assert line, f"the writer ended early: {child.stderr.read().decode()[-2000:]}"
        promised.append(line.split()[1])
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    child.stderr.close()

    records = checkpoint(postgres_dsn).load()
    assert set(promised) <= set(records), "an item the writer was told was recorded is missing"
    assert all(records[k] == {"ok": True, "i": int(k.split("-")[1])} for k in records)

    # The server ends the dead writer's session, and its lock with it: on loopback the socket closes at once;
    # across a network the keepalives bound it.
    bound_s = KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT
    deadline = time.monotonic() + bound_s
    while True:
        resumed = checkpoint(postgres_dsn)
        try:
            resumed.record("after", {"ok": True})
            break
        except CheckpointInUse:
            assert time.monotonic() < deadline, f"the killed writer's lock outlived {bound_s} s"
            time.sleep(0.2)
    resumed.close()


def test_an_unreachable_server_names_the_setting_and_never_the_password(postgres_server):
    closed_port = postgres_server.port + 1 if postgres_server.port < 65535 else 1
    url = f"postgresql://chunkwise:s3cret-pw@127.0.0.1:{closed_port}/nope"
    with pytest.raises(CheckpointError) as error:
        checkpoint(url).load()
    message = str(error.value)
    assert STATE_URL_ENV in message and "127.0.0.1" in message
    assert "s3cret-pw" not in message and "s3cret-pw" not in repr(error.value)
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_a_pipeline_on_the_shared_backend_checkpoints_in_the_table_and_completion_clears_it(
    postgres_dsn, start_sim, monkeypatch, tmp_path
):
    """Chunk runs for real (Dagster, the simulator) with CHUNKWISE_STATE_URL set: the stages' checkpoints are rows,
    no checkpoint file is written, and the completion job removes the succeeded chunks' rows."""
    import csv

    import dagster as dg
    import psycopg2

    from tests.spec_pipelines import point_at, register_file, run_chunk, run_completion, spec_defs, test_spec

    point_at(start_sim({"seed": 3}), monkeypatch)
    monkeypatch.setenv(STATE_URL_ENV, postgres_dsn)
    data = tmp_path / "tickets.csv"
    with (
        (ROOT / "data" / "banking77" / "test.csv").open(newline="") as src,
        data.open("w", newline="") as dst,
    ):
        rows = csv.DictReader(src)
        out = csv.writer(dst)
        out.writerow(["id", "text", "team", "label"])
        for i, row in zip(range(60), rows, strict=False):
            out.writerow([f"item-{i:03d}", row["text"], "cards", row["category"]])
    spec = test_spec()
    home = tmp_path / "home"

    def rows_by_chunk() -> dict[str, int]:
        with psycopg2.connect(postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT partition_key, count(*) FROM chunkwise_checkpoints GROUP BY partition_key")
            return dict(cur.fetchall())

    with dg.instance_for_test() as instance:
        dataset = register_file(spec, data, instance, home, chunk_size=30)
        defs = spec_defs(spec, home)
        for key in dataset.partition_keys:
            assert run_chunk(defs, spec, instance, key).success
        before = rows_by_chunk()
        assert set(before) == set(dataset.partition_keys)
        assert all(n >= 30 for n in before.values())  # every item of `classified`, plus the routed `enriched`
        assert not (home / "checkpoints").exists()
        assert run_completion(defs, spec, instance, dataset.dataset_id).success
    assert rows_by_chunk() == {}
