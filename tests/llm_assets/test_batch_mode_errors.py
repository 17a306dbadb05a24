"""Batch mode where lines fail: mixed per-line errors end where the online taxonomy says (item-permanent ->
dead letters; retryable, expired and schema failures -> a follow-up round, up to the attempt limit), an expired
batch's lines run out of attempts as `expired` dead letters, and a person's cancel (`python -m scripts.cancel_batch`)
keeps the partial results."""

from __future__ import annotations

import collections
import time

import dagster as dg
import pytest
from batch_support import batch_defs, drive_batches, latest_meta, latest_observation, provider_spec

from io_managers.parquet_files import read_parquet
from resources.dead_letters import DeadLetterStore
from scripts import cancel_batch
from sensors.batches import find_pending_batches
from tests.spec_pipelines import layout_of, point_at, register_file, run_chunk

pytestmark = pytest.mark.slow

CLASSIFIED = dg.AssetKey(["banking77", "classified"])


def _write(path, n: int, markers: dict[int, str]) -> list[str]:
    import csv

    ids = []
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "team"])
        for i in range(n):
            ids.append(f"item-{i:04d}")
            w.writerow(
                [ids[-1], f"my card payment number {i} was declined {markers.get(i, '')}".strip(), "red"]
            )
    return ids


def _landing(instance, home, dataset, key):
    frame = read_parquet(latest_meta(instance, CLASSIFIED, key)["uri"])
    dead = DeadLetterStore(str(home / "dead_letters")).query(dataset.dataset_id)
    return frame, dead[dead["stage"] == "classified"]


def _lines_per_item(sim) -> collections.Counter:
    return collections.Counter(r["custom_id"] for r in sim.requests() if r["endpoint"] == "batch_line")


def test_mixed_line_errors_end_where_the_taxonomy_says(start_sim, monkeypatch, tmp_path):
    sim = start_sim(
        {
            "seed": 11,
            "batch": {"complete_after_s": 0.5},
            "faults": {"server_error": 0.15, "schema_violation": 0.1, "batch_expire_rate": 0.1},
        }
    )
    point_at(sim, monkeypatch)
    ids = _write(tmp_path / "d.csv", 40, {3: "[[poison]]", 17: "[[refuse]]"})
    home = tmp_path / "home"
    spec = provider_spec(sim.base_url, "openai", "batch", route="none", max_attempts=4)
    defs = batch_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "d.csv", instance, home, chunk_size=40)
        key = dataset.partition_keys[0]
        assert run_chunk(defs, spec, instance, key).success
        drive_batches(defs, instance)
        frame, dead = _landing(instance, home, dataset, key)
        meta = latest_meta(instance, CLASSIFIED, key)

    landed = collections.Counter([*frame["item_id"], *dead["item_id"]])
    assert sorted(landed) == sorted(ids) and set(landed.values()) == {1}  # each item exactly once
    by_class = dict(zip(dead["item_id"], dead["error_class"], strict=True))
    assert by_class["item-0003"] == "invalid_prompt" and by_class["item-0017"] == "refusal"
    assert set(by_class.values()) <= {
        "invalid_prompt",
        "refusal",
        "schema_invalid",
        "retries_exhausted",
        "expired",
    }
    assert meta["batch_rounds"] >= 2  # retryable, expired and schema-repair lines went into follow-up rounds
    assert meta["items_succeeded"] == len(frame) and meta["items_failed"] == len(dead)
    lines = _lines_per_item(sim)
    assert max(lines.values()) <= 4  # never past the attempt limit
    assert lines[[c for c in lines if "item-0003" in c][0]] == 1  # item-permanent: never resent
    assert sim.stats()["batches"]["created"] == meta["batches"]
    assert meta["cost_usd"] == pytest.approx(sim.stats()["billed_usd"], abs=1e-6)


def test_expired_batch_lines_are_resubmitted_then_dead_lettered_as_expired(start_sim, monkeypatch, tmp_path):
    sim = start_sim({"seed": 4, "batch": {"complete_after_s": 0.6, "expire": True}})
    point_at(sim, monkeypatch)
    ids = _write(tmp_path / "d.csv", 24, {})
    home = tmp_path / "home"
    spec = provider_spec(sim.base_url, "openai", "batch", route="none", max_attempts=2)
    defs = batch_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "d.csv", instance, home, chunk_size=24)
        key = dataset.partition_keys[0]
        assert run_chunk(defs, spec, instance, key).success
        drive_batches(defs, instance)
        frame, dead = _landing(instance, home, dataset, key)
        meta = latest_meta(instance, CLASSIFIED, key)

    assert meta["batch_rounds"] == 2  # the expired half went again once (max_attempts=2), then stopped
    assert sorted([*frame["item_id"], *dead["item_id"]]) == sorted(ids)
    assert len(frame) > 0 and len(dead) > 0
    assert set(dead["error_class"]) == {"expired"}
    assert sim.stats()["batches"]["expired"] == 2
    lines = _lines_per_item(sim)  # expired lines never ran, so they are not in the request log
    assert set(lines.values()) == {1} and sorted(k.split("|")[1] for k in lines) == sorted(frame["item_id"])
    assert meta["cost_usd"] == pytest.approx(sim.stats()["billed_usd"], abs=1e-6)


def test_cancel_keeps_partial_results_and_sends_nothing_more(start_sim, monkeypatch, capsys, tmp_path):
    sim = start_sim({"seed": 9, "batch": {"complete_after_s": 6}})
    point_at(sim, monkeypatch)
    ids = _write(tmp_path / "d.csv", 30, {})
    home = tmp_path / "home"
    spec = provider_spec(sim.base_url, "anthropic", "batch", route="none")
    defs = batch_defs(spec, home)
    # What a person running `python -m scripts.cancel_batch` on this deployment has: BANKING77's shipped spec
    # (its default --pipeline) on Anthropic's wire format at the simulator, reading the same home.
    monkeypatch.setenv("CHUNKWISE_HOME", str(home))
    monkeypatch.setenv("CHUNKWISE_LLM_PROVIDER", "anthropic")
    monkeypatch.setenv("CHUNKWISE_LLM_BASE_URL", sim.base_url)
    monkeypatch.setenv("CHUNKWISE_CLASSIFY_MODEL", "claude-haiku-5-5")
    monkeypatch.setenv("CHUNKWISE_ENRICH_MODEL", "claude-sonnet-5-5")
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "d.csv", instance, home, chunk_size=30)
        key = dataset.partition_keys[0]
        assert run_chunk(defs, spec, instance, key).success
        time.sleep(2.0)  # about a third of the lines have run
        capsys.readouterr()
        assert cancel_batch.main([key, "--stage", "classified"]) == 0
        printed = capsys.readouterr().out.splitlines()
        assert len(printed) == 2 and "lines finished and kept" in printed[0]  # one batch, cancelled
        assert printed[-1].startswith(f"cancelled classified of {key}")
        assert [c.partition_key for c in find_pending_batches(home, [layout_of(spec)])] == [key]
        drive_batches(defs, instance)
        frame, dead = _landing(instance, home, dataset, key)
        meta = latest_meta(instance, CLASSIFIED, key)
        observed = latest_observation(instance, CLASSIFIED, key)

    assert observed["batch_status"] == "submitted"  # the last observation before the partition materialized
    assert 0 < len(frame) < len(ids)  # the lines that ran before the cancel are kept
    assert sorted([*frame["item_id"], *dead["item_id"]]) == sorted(ids)
    assert set(dead["error_class"]) == {"canceled"}
    assert meta["batch_canceled"] is True and meta["batches"] == 1
    stats = sim.stats()
    assert stats["batches"]["created"] == 1 and stats["batches"]["cancelled"] == 1  # nothing resubmitted
    assert meta["cost_usd"] == pytest.approx(stats["billed_usd"], abs=1e-6)
