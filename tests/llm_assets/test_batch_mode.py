"""Batch mode end to end through Dagster against the simulator's batch endpoints, for both providers: submit
(the run ends without materializing), the batch poll sensor requests the collecting runs, the partition
materializes with the same outputs as online mode at half the price, equal to the simulator's ledger."""

from __future__ import annotations

import dagster as dg
import pytest
from batch_support import batch_defs, drive_batches, latest_meta, latest_observation, provider_spec
from pipeline_support import POISON, write_dataset

from io_managers.parquet_files import read_parquet
from resources.dead_letters import DeadLetterStore
from tests.spec_pipelines import layout_of, point_at, register_file, run_chunk

pytestmark = pytest.mark.slow

OUTPUT_COLUMNS = {
    "classified": ["item_id", "label", "confidence", "routed"],
    "enriched": ["item_id", "summary", "entities", "urgency", "routed"],
}


def _run_online(sim, tmp_path, provider):
    home = tmp_path / "online"
    spec = provider_spec(sim.base_url, provider, "online")
    layout = layout_of(spec)
    defs = batch_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=20)
        for key in dataset.partition_keys:
            assert run_chunk(defs, spec, instance, key).success
        return {
            stage: {key: latest_meta(instance, layout.key(stage), key) for key in dataset.partition_keys}
            for stage in OUTPUT_COLUMNS
        }


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_round_trip_equals_online_outputs_at_half_price_and_matches_the_ledger(
    start_sim, monkeypatch, tmp_path, provider
):
    config = {"seed": 5, "batch": {"complete_after_s": 0.5}}
    online_sim, batch_sim = start_sim(config), start_sim(config)
    point_at(batch_sim, monkeypatch)  # the API key both share; each spec names its simulator's URL
    kinds = write_dataset(tmp_path / "tiny.csv", 36, poison_every=9)
    online = _run_online(online_sim, tmp_path, provider)

    home = tmp_path / "batch"
    spec = provider_spec(batch_sim.base_url, provider, "batch")
    layout = layout_of(spec)
    defs = batch_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=20)
        keys = dataset.partition_keys
        for key in keys:
            result = run_chunk(defs, spec, instance, key)
            assert result.success
            # Submitting ends the run: nothing materialized past `items`, the UI shows "submitted".
            assert [e.asset_key for e in result.get_asset_materialization_events()] == [layout.key("items")]
            assert latest_observation(instance, layout.key("classified"), key)["batch_status"] == "submitted"
        assert not instance.get_materialized_partitions(layout.key("classified"))

        runs = drive_batches(defs, instance)
        assert all(r.success for r in runs)
        assert len(runs) == 2 * len(keys)  # one collecting run per chunk and stage
        batch = {
            stage: {key: latest_meta(instance, layout.key(stage), key) for key in keys}
            for stage in OUTPUT_COLUMNS
        }
        dead = DeadLetterStore(str(home / "dead_letters")).query(dataset.dataset_id)

    for stage, columns in OUTPUT_COLUMNS.items():
        for key in keys:
            got = (
                read_parquet(batch[stage][key]["uri"]).sort_values("item_id")[columns].reset_index(drop=True)
            )
            want = (
                read_parquet(online[stage][key]["uri"]).sort_values("item_id")[columns].reset_index(drop=True)
            )
            assert got.equals(want), f"{stage} {key}: batch outputs differ from online"
            assert batch[stage][key]["mode"] == "batch" and batch[stage][key]["batches"] >= 1
            assert batch[stage][key]["batch_rounds"] >= 1
    assert sorted(dead["item_id"]) == sorted(kinds["poison"])
    assert set(dead["error_class"]) == {"invalid_prompt"}

    batch_cost = sum(m["cost_usd"] for stage in batch.values() for m in stage.values())
    online_cost = sum(m["cost_usd"] for stage in online.values() for m in stage.values())
    stats = batch_sim.stats()
    assert stats["billed_usd_online"] == 0  # nothing went through the online endpoints
    assert batch_cost == pytest.approx(stats["billed_usd"], abs=0.005)  # to the cent (and closer)
    # Each partition's metadata is rounded to the millionth of a dollar: the sums agree to a few millionths.
    assert batch_cost == pytest.approx(stats["billed_usd"], abs=1e-5)
    assert online_cost == pytest.approx(online_sim.stats()["billed_usd"], abs=1e-5)
    assert batch_cost == pytest.approx(online_cost / 2, rel=0.02)
    assert POISON  # the marker the simulator refuses: the dead letters above
