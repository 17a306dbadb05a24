"""The cost ledger asset: per-item rows that add up to the stages' metadata and to the provider's bill."""

import sys
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sensors"))
from recovery_support import launch, recovery_defs, write_labelled_dataset  # noqa: E402

from io_managers.parquet_files import read_parquet  # noqa: E402
from llm_assets.cost_ledger import FAILED_ITEMS, dataset_partitions, rollup  # noqa: E402
from llm_assets.datasets import DatasetSpec, register_dataset  # noqa: E402
from sensors.backfill import build_backfill_sensor  # noqa: E402
from sensors.chunk_runs import chunk_run_request  # noqa: E402

pytestmark = pytest.mark.slow


def test_ledger_rows_roll_up_to_the_metadata_and_the_simulator_bill(start_sim, tmp_path):
    sim = start_sim({"seed": 4})
    home = tmp_path / "home"
    write_labelled_dataset(
        tmp_path / "nightly.csv", 40, markers={5: "[[refuse]]"}
    )  # billed, then dead-lettered
    sensor = build_backfill_sensor()
    defs = recovery_defs(sim.base_url, sim.api_key, home, [sensor])
    with dg.instance_for_test() as instance:
        dataset = register_dataset(
            DatasetSpec(uri=str(tmp_path / "nightly.csv"), chunk_size=20), instance, home
        )
        for key in dataset.partition_keys:
            assert launch(defs, instance, sensor, chunk_run_request(key, 1, "openai", "test")).success
        instance.add_dynamic_partitions(dataset_partitions.name, [dataset.dataset_id])
        result = dg.materialize(
            [a for a in defs.assets if getattr(a, "key", None) == dg.AssetKey("cost_ledger")],
            instance=instance,
            partition_key=dataset.dataset_id,
            resources=defs.resources,
            selection=["cost_ledger"],
        )
        assert result.success
        meta = result.asset_materializations_for_node("cost_ledger")[0].metadata
        ledger = read_parquet(str(meta["uri"].value))
        stage_cost = 0.0
        stage_output_tokens = 0
        for stage in ("classified", "enriched"):
            for key in dataset.partition_keys:
                m = (
                    instance.fetch_materializations(
                        dg.AssetRecordsFilter(asset_key=dg.AssetKey(stage), asset_partitions=[key]), limit=1
                    )
                    .records[0]
                    .asset_materialization.metadata
                )
                stage_cost += m["cost_usd"].value
                stage_output_tokens += m["output_tokens"].value

    billed = sim.stats()
    assert ledger["cost_usd"].sum() == pytest.approx(stage_cost, rel=1e-9)
    assert ledger["cost_usd"].sum() == pytest.approx(billed["billed_usd"], rel=1e-9)
    assert ledger["output_tokens"].sum() == stage_output_tokens == billed["tokens"]["output"]
    # One row per item per stage that produced output, plus the refused item's spend on a (failed items) row.
    items = ledger[ledger["item_id"] != ""]
    assert len(items[items["stage"] == "classified"]) == 39 and items["item_id"].is_unique is False
    failed = ledger[ledger["team"] == FAILED_ITEMS]
    assert len(failed) == 1 and failed["stage"].tolist() == ["classified"] and failed["cost_usd"].iloc[0] > 0
    assert set(ledger["model"]) == {"gpt-6-luna", "gpt-6.2-sol"}
    assert set(ledger["day"]) and all(len(d) == 10 for d in ledger["day"])
    by_team = rollup(ledger, "team")
    assert set(by_team) == {"cards", "payments", FAILED_ITEMS}
    for team, usd in by_team.items():
        assert meta[f"team_cost_usd/{team}"].value == pytest.approx(usd)
    assert meta["cost_usd"].value == pytest.approx(stage_cost, rel=1e-9)
    assert sum(meta["cost_by_model"].value.values()) == pytest.approx(stage_cost, rel=1e-9)
    assert sum(meta["cost_by_stage"].value.values()) == pytest.approx(stage_cost, rel=1e-9)
