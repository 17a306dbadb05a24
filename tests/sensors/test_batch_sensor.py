"""The batch poll sensor against a real instance and the simulator's batch endpoints: it records where each
chunk's batches stand, requests nothing until they end, then one collecting run per chunk stage (run key = batch
ids) that a restarted daemon with a lost cursor cannot launch twice."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "llm_assets"))
from batch_support import batch_defs, latest_meta, launch, provider_spec, tick  # noqa: E402
from pipeline_support import write_dataset  # noqa: E402

from sensors.batches import BATCH_STAGE_TAG, find_pending_batches  # noqa: E402
from tests.spec_pipelines import layout_of, point_at, register_file, run_chunk  # noqa: E402

pytestmark = pytest.mark.slow


def test_sensor_reports_status_then_requests_one_collecting_run_per_batch(start_sim, monkeypatch, tmp_path):
    sim = start_sim({"seed": 2, "batch": {"complete_after_s": 2.5}})
    point_at(sim, monkeypatch)
    write_dataset(tmp_path / "tiny.csv", 12)
    home = tmp_path / "home"
    spec = provider_spec(sim.base_url, "openai", "batch")
    layout = layout_of(spec)
    defs = batch_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=12)
        key = dataset.partition_keys[0]
        assert run_chunk(defs, spec, instance, key).success
        [pending] = find_pending_batches(home, [layout])
        assert (pending.partition_key, pending.stage) == (key, "classified")

        # Not ended yet: the status is recorded, nothing is launched.
        requests, cursor, events = tick(defs, instance, None)
        assert requests == []
        assert [e.metadata["batch_status"].value for e in events] in (["submitted"], ["in_progress"])
        assert {e.asset_key for e in events} == {layout.key("classified")}
        # The next tick records an observation only if the status changed.
        state = events[0].metadata["batch_status"].value
        requests, cursor2, events = tick(defs, instance, cursor)
        state2 = json.loads(cursor2)[f"{key}/classified"]
        assert [e.metadata["batch_status"].value for e in events] == ([] if state2 == state else [state2])

        deadline = time.monotonic() + 30
        while not requests and time.monotonic() < deadline:
            time.sleep(0.3)
            requests, cursor2, events = tick(defs, instance, cursor2)
        [request] = requests
        assert request.partition_key == key and request.tags[BATCH_STAGE_TAG] == "classified"
        assert request.job_name == layout.chunk_job
        assert pending.pending[0].batch_id in request.run_key
        assert set(request.asset_selection) == {layout.key("classified"), layout.key("enriched")}
        assert any(e.metadata["batch_status"].value == "ended" for e in events)

        assert launch(defs, instance, request).success
        assert latest_meta(instance, layout.key("classified"), key)["mode"] == "batch"
        # A restarted daemon with a lost cursor sees the enriched batch, never the collected one again.
        requests, _, _ = tick(defs, instance, None)
        assert all(r.tags[BATCH_STAGE_TAG] == "enriched" for r in requests)
        assert launch(defs, instance, request) is None  # the run key was used: Dagster would not launch it

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not requests:
            time.sleep(0.3)
            requests, _, _ = tick(defs, instance, None)
        [enrich_request] = requests
        assert launch(defs, instance, enrich_request).success
        assert latest_meta(instance, layout.key("enriched"), key)["items_succeeded"] == 12
        assert find_pending_batches(home, [layout]) == []
        assert tick(defs, instance, None)[0] == []
        assert sim.stats()["batches"]["created"] == 2  # one per stage: nothing submitted twice
