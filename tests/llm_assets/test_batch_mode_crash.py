"""A run killed in the middle of submitting a batch (after the upload, and after the provider created the batch
but before the journal recorded it): the chunk's next run resumes the submission and no item is sent twice."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from batch_support import batch_defs, drive_batches, latest_meta, provider_spec
from pipeline_support import write_dataset

from resources.llm import BatchJournal
from sensors.batches import find_pending_batches
from tests.spec_pipelines import layout_of, point_at, register_file, run_chunk

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("step", ["uploaded", "created"])
def test_crash_mid_submission_resumes_without_submitting_an_item_twice(
    start_sim, monkeypatch, tmp_path, step
):
    sim = start_sim({"seed": 8, "batch": {"complete_after_s": 0.5}})
    point_at(sim, monkeypatch)  # the child inherits the key
    write_dataset(tmp_path / "tiny.csv", 16)
    home, instance_dir = tmp_path / "home", tmp_path / "instance"
    instance_dir.mkdir()
    spec = provider_spec(sim.base_url, "openai", "batch", route="none")  # what the child runs
    layout = layout_of(spec)
    with dg.DagsterInstance.local_temp(tempdir=str(instance_dir)) as instance:
        key = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=16).partition_keys[0]

    child = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("batch_crash_child.py")), sim.base_url, str(home),
         str(instance_dir), key, step],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == 17, child.stderr.decode()[-2000:]
    [journal_path] = list(home.glob("checkpoints/*/*/classified/batches.json"))
    [handle] = BatchJournal(journal_path).handles
    assert handle.status == "submitting"  # the kill came before the batch id was recorded
    assert sim.stats()["batches"]["created"] == (1 if step == "created" else 0)

    defs = batch_defs(spec, home)
    with dg.DagsterInstance.local_temp(tempdir=str(instance_dir)) as instance:
        for record in instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/partition": key})):
            # What Dagster's run monitoring does for a run whose process died.
            instance.report_run_failed(record.dagster_run)
        assert run_chunk(defs, spec, instance, key).success  # resumes the submission
        assert [c.partition_key for c in find_pending_batches(home, [layout])] == [key]
        drive_batches(defs, instance)
        meta = latest_meta(instance, layout.key("classified"), key)

    assert meta["items_succeeded"] == 16 and meta["batches"] == 1
    assert sim.stats()["batches"]["created"] == 1
    lines = collections.Counter(r["custom_id"] for r in sim.requests() if r["endpoint"] == "batch_line")
    assert len(lines) == 16 and set(lines.values()) == {1}  # every item sent exactly once
