"""Batch mode where lines fail: mixed per-line errors end where the online taxonomy says (item-permanent ->
dead letters; retryable, expired and schema failures -> a follow-up round, up to the attempt limit), an expired
batch's lines run out of attempts as `expired` dead letters, and a person's cancel keeps the partial results."""

from __future__ import annotations

import collections
import time

import dagster as dg
import pytest
from batch_support import drive_batches, latest_meta, latest_observation, provider_defs
from pipeline_support import materialize_partition, register

from io_managers.parquet_files import read_parquet
from resources.dead_letters import DeadLetterStore
from scripts.cancel_batch import cancel_stage_batches
from sensors.batches import STAGE_RESOURCES, find_pending_batches

pytestmark = pytest.mark.slow


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
    frame = read_parquet(latest_meta(instance, "classified", key)["uri"])
    dead = DeadLetterStore(str(home / "dead_letters")).query(dataset.dataset_id)
    return frame, dead[dead["stage"] == "classified"]


def _lines_per_item(sim) -> collections.Counter:
    return collections.Counter(r["custom_id"] for r in sim.requests() if r["endpoint"] == "batch_line")


def test_mixed_line_errors_end_where_the_taxonomy_says(start_sim, tmp_path):
    sim = start_sim(
        {
            "seed": 11,
            "batch": {"complete_after_s": 0.5},
            "faults": {"server_error": 0.15, "schema_violation": 0.1, "batch_expire_rate": 0.1},
        }
    )
    ids = _write(tmp_path / "d.csv", 40, {3: "[[poison]]", 17: "[[refuse]]"})
    home = tmp_path / "home"
    defs = provider_defs(sim, home, "openai", "batch", llm={"max_attempts": 4}, route="none")
    with dg.instance_for_test() as instance:
        dataset = register(tmp_path / "d.csv", instance, home, chunk_size=40)
        key = dataset.partition_keys[0]
        assert materialize_partition(defs, instance, key).success
        drive_batches(defs, instance)
        frame, dead = _landing(instance, home, dataset, key)
        meta = latest_meta(instance, "classified", key)

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
    assert meta["cost_usd"] == pytest.approx(sim.stats()["billed_usd"], rel=1e-6)


def test_expired_batch_lines_are_resubmitted_then_dead_lettered_as_expired(start_sim, tmp_path):
    sim = start_sim({"seed": 4, "batch": {"complete_after_s": 0.6, "expire": True}})
    ids = _write(tmp_path / "d.csv", 24, {})
    home = tmp_path / "home"
    defs = provider_defs(sim, home, "openai", "batch", llm={"max_attempts": 2}, route="none")
    with dg.instance_for_test() as instance:
        dataset = register(tmp_path / "d.csv", instance, home, chunk_size=24)
        key = dataset.partition_keys[0]
        assert materialize_partition(defs, instance, key).success
        drive_batches(defs, instance)
        frame, dead = _landing(instance, home, dataset, key)
        meta = latest_meta(instance, "classified", key)

    assert meta["batch_rounds"] == 2  # the expired half went again once (max_attempts=2), then stopped
    assert sorted([*frame["item_id"], *dead["item_id"]]) == sorted(ids)
    assert len(frame) > 0 and len(dead) > 0
    assert set(dead["error_class"]) == {"expired"}
    assert sim.stats()["batches"]["expired"] == 2
    lines = _lines_per_item(sim)  # expired lines never ran, so they are not in the request log
    assert set(lines.values()) == {1} and sorted(k.split("|")[1] for k in lines) == sorted(frame["item_id"])
    assert meta["cost_usd"] == pytest.approx(sim.stats()["billed_usd"], rel=1e-6)


def test_cancel_keeps_partial_results_and_sends_nothing_more(start_sim, tmp_path):
    sim = start_sim({"seed": 9, "batch": {"complete_after_s": 6}})
    ids = _write(tmp_path / "d.csv", 30, {})
    home = tmp_path / "home"
    defs = provider_defs(sim, home, "anthropic", "batch", route="none")
    with dg.instance_for_test() as instance:
        dataset = register(tmp_path / "d.csv", instance, home, chunk_size=30)
        key = dataset.partition_keys[0]
        assert materialize_partition(defs, instance, key).success
        time.sleep(2.0)  # about a third of the lines have run
        with dg.build_resources({"llm": defs.resources[STAGE_RESOURCES["classified"]]}) as resources:
            lines = cancel_stage_batches(resources.llm, home, key, "classified")
        assert len(lines) == 1
        assert [c.partition_key for c in find_pending_batches(home)] == [key]
        drive_batches(defs, instance)
        frame, dead = _landing(instance, home, dataset, key)
        meta = latest_meta(instance, "classified", key)
        observed = latest_observation(instance, "classified", key)

    assert observed["batch_status"] == "submitted"  # the last observation before the partition materialized
    assert 0 < len(frame) < len(ids)  # the lines that ran before the cancel are kept
    assert sorted([*frame["item_id"], *dead["item_id"]]) == sorted(ids)
    assert set(dead["error_class"]) == {"canceled"}
    assert meta["batch_canceled"] is True and meta["batches"] == 1
    stats = sim.stats()
    assert stats["batches"]["created"] == 1 and stats["batches"]["cancelled"] == 1  # nothing resubmitted
    assert meta["cost_usd"] == pytest.approx(stats["billed_usd"], rel=1e-6)
