"""The cost ledger asset: one row per billed attempt, from the spend ledger, adding up to the provider's bill.

The pipeline is BANKING77's spec, every item enriched (`route: all`), run as the recovery tests run it."""

import sys
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sensors"))
from recovery_support import recovery_spec, write_labelled_dataset  # noqa: E402

from io_managers.parquet_files import read_parquet  # noqa: E402
from llm_assets.cost_ledger import SPEND_KINDS, rollup  # noqa: E402
from tests.spec_pipelines import layout_of, point_at, register_file, run_chunk, run_completion, spec_defs  # noqa: E402

pytestmark = pytest.mark.slow


def test_ledger_has_one_row_per_billed_attempt_and_adds_up_to_the_simulator_bill(
    start_sim, tmp_path, monkeypatch
):
    sim = start_sim({"seed": 4})
    point_at(sim, monkeypatch)
    home = tmp_path / "home"
    # item 5 is billed, then refused and dead-lettered: its attempt is wasted spend, not an item's useful cost.
    write_labelled_dataset(tmp_path / "nightly.csv", 40, markers={5: "[[refuse]]"})
    spec = recovery_spec()
    layout = layout_of(spec)
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "nightly.csv", instance, home, chunk_size=20)
        for key in dataset.partition_keys:
            assert run_chunk(defs, spec, instance, key).success
        result = run_completion(defs, spec, instance, dataset.dataset_id, asset_selection=[layout.ledger_key])
        assert result.success
        meta = result.asset_materializations_for_node(layout.ledger_key.to_python_identifier())[0].metadata
        ledger = read_parquet(str(meta["uri"].value))

    billed = sim.stats()
    assert ledger["cost_usd"].sum() == pytest.approx(billed["billed_usd"], rel=1e-9)
    assert len(ledger) == billed["requests_billed"]  # one row per billed attempt, nothing estimated
    assert ledger["output_tokens"].sum() == billed["tokens"]["output"]
    assert ledger["provider_request_id"].notna().all()
    # 39 items classified and enriched (route: all), each paid once: useful. The refusal: wasted.
    useful = ledger[ledger["kind"] == "useful"]
    assert (
        len(useful[useful["stage"] == "classified"]) == 39
        and len(useful[useful["stage"] == "enriched"]) == 39
    )
    assert useful["idempotency_key"].is_unique and set(useful["outcome"]) == {"ok"}
    wasted = ledger[ledger["kind"] == "wasted"]
    assert wasted["item_id"].tolist() == ["item-0005"] and wasted["outcome"].tolist() == ["refusal"]
    assert wasted["cost_usd"].iloc[0] > 0 and wasted["team"].iloc[0] == "cards"
    assert set(ledger["kind"]) == {"useful", "wasted"}  # nothing re-paid, no judge (gold labels)
    assert set(ledger["model"]) == {"gpt-6-luna", "gpt-6.2-sol"}
    assert set(ledger["day"]) and all(len(d) == 10 for d in ledger["day"])
    by_team = rollup(ledger, "team")
    assert set(by_team) == {"cards", "payments"}  # the refused item's spend is billed to its own team
    for team, usd in by_team.items():
        assert meta[f"team_cost_usd/{team}"].value == round(usd, 6)
    for kind in SPEND_KINDS:
        assert meta[f"{kind}_usd"].value == round(ledger.loc[ledger["kind"] == kind, "cost_usd"].sum(), 6)
    # Metadata is rounded to the millionth of a dollar (readable, still a number the UI plots); the table is exact.
    assert meta["cost_usd"].value == round(ledger["cost_usd"].sum(), 6)
    assert meta["cost_usd"].value == pytest.approx(billed["billed_usd"], abs=1e-6)
    for by in ("cost_by_kind", "cost_by_model", "cost_by_stage", "cost_by_team", "cost_by_day"):
        values = meta[by].value.values()
        assert all(v == round(v, 6) for v in values), by
        assert sum(values) == pytest.approx(billed["billed_usd"], abs=1e-5), by
