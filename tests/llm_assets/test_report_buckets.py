"""The completion report's accounting: every input row in exactly one bucket with a reason, and every dollar from
the spend ledger (total = useful + re-paid + wasted + quality checks == the simulator's bill). Real Dagster, the
real simulator, BANKING77's spec and its `banking77__completion_job`, the job the completion sensor requests."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from pipeline_support import WORDS

from io_managers.parquet_files import read_parquet
from llm_assets.spec import PipelineSpec
from scripts import demo
from tests.spec_pipelines import (
    layout_of,
    point_at,
    register_file,
    run_chunk,
    run_completion,
    spec_defs,
    test_spec,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sensors"))
from recovery_support import write_labelled_dataset  # noqa: E402

pytestmark = pytest.mark.slow

JUDGE_MODEL = "gpt-6.2-sol"  # the shipped spec's judge


def _write_unlabelled(path: Path, n: int, empty: tuple[int, ...] = ()) -> None:
    """n rows `id,text,team` without gold labels; the rows at `empty` have a blank text (invalid input)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "team"])
        for i in range(n):
            words = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(6 + i % 5))
            text = "  " if i in empty else f"Why is my {words} not working, item {i}?"
            w.writerow([f"item-{i:04d}", text, "red" if i % 2 else "blue"])


@pytest.fixture
def at_sim(start_sim, monkeypatch):
    """`at_sim(seed)`: a simulator the shipped spec's provider profile points at."""

    def start(seed: int):
        sim = start_sim({"seed": seed})
        point_at(sim, monkeypatch)
        return sim

    return start


def _spec(route: str | None = None, **gates: dict[str, Any]) -> PipelineSpec:
    """BANKING77 with `gates` merged into the gates of both stages (`sampled_quality` into classified's only)
    and, when given, enriched's `route`."""
    classified = dict(gates)
    enriched = {name: gate for name, gate in gates.items() if name != "sampled_quality"}
    return test_spec(
        stages={
            "classified": {"gates": classified},
            "enriched": {"gates": enriched, **({"route": route} if route else {})},
        }
    )


def _complete(
    defs: dg.Definitions, spec: PipelineSpec, instance: dg.DagsterInstance, dataset_id: str, home: Path
):
    """The pipeline's completion job (cost_ledger + completion_report); returns (report JSON, Markdown, ledger)."""
    result = run_completion(defs, spec, instance, dataset_id)
    assert result.success
    (ledger,) = [
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == layout_of(spec).ledger_key
    ]
    folder = home / "reports" / dataset_id
    report = json.loads((folder / "completion_report.json").read_text())
    return (
        report,
        (folder / "completion_report.md").read_text(),
        read_parquet(str(ledger.metadata["uri"].value)),
    )


def _assert_accounts_add_up(report: dict, ledger, billed_usd: float) -> None:
    buckets = report["buckets"]
    assert sum(buckets.values()) == report["total_items"]
    assert (buckets["succeeded"], buckets["dead_lettered"]) == (report["succeeded"], report["dead_lettered"])
    assert (buckets["quarantined"], buckets["not_processed"]) == (
        report["quarantined"],
        report["not_processed"],
    )
    assert report["failed"] == report["total_items"] - report["succeeded"]
    assert sum(report["dead_lettered_by_reason"].values()) == report["dead_lettered"]
    assert sum(report["quarantined_by_gate"].values()) == report["quarantined"]
    assert sum(report["not_processed_by_reason"].values()) == report["not_processed"]
    parts = ("useful_cost_usd", "repaid_usd", "wasted_usd", "quality_checks_usd")
    assert sum(report[p] for p in parts) == pytest.approx(report["total_cost_usd"], abs=1e-9)
    assert report["total_cost_usd"] == pytest.approx(billed_usd, abs=1e-6)  # the provider's bill
    assert ledger["cost_usd"].sum() == pytest.approx(billed_usd, abs=1e-6)
    assert report["ledger_cost_usd"] == pytest.approx(report["total_cost_usd"], abs=1e-9)
    for by in ("cost_by_team", "cost_by_stage", "cost_by_model", "cost_by_mode", "cost_by_day"):
        assert sum(report[by].values()) == pytest.approx(billed_usd, abs=1e-6), by
    assert "(failed items)" not in report["cost_by_team"]


def test_two_empty_texts_in_twelve_rows_are_two_dead_letters_and_ten_successes(at_sim, tmp_path, capsys):
    sim = at_sim(2)
    _write_unlabelled(tmp_path / "twelve.csv", 12, empty=(3, 8))
    home = tmp_path / "home"
    spec = _spec(sampled_quality={"sample_size": 5})  # the shipped success_rate gate: min 0.95
    layout = layout_of(spec)
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "twelve.csv", instance, home, chunk_size=12)
        (key,) = dataset.partition_keys
        run = run_chunk(defs, spec, instance, key)
        rate = next(
            e
            for e in run.get_asset_check_evaluations()
            if e.asset_key == layout.key("classified") and e.check_name == "success_rate"
        )
        report, markdown, ledger = _complete(defs, spec, instance, dataset.dataset_id, home)

    # The gate judges the model: 10 of the 10 items that reached it succeeded; the 2 invalid inputs are apart.
    assert rate.passed
    numbers = {k: v.value for k, v in rate.metadata.items()}
    assert (numbers["items_attempted"], numbers["items_succeeded"], numbers["items_invalid_input"]) == (
        10,
        10,
        2,
    )
    assert report["buckets"] == {"succeeded": 10, "dead_lettered": 2, "quarantined": 0, "not_processed": 0}
    assert report["dead_lettered_by_reason"] == {"invalid_input": 2}
    assert report["dead_lettered_by_stage"] == {"items": 2}
    assert (report["succeeded"], report["failed"], report["total_items"]) == (10, 2, 12)
    _assert_accounts_add_up(report, ledger, sim.stats()["billed_usd"])
    headline = "10 of 12 items succeeded, 2 failed (2 dead-lettered, 0 quarantined, 0 not processed)"
    assert (
        "**10 of 12 items succeeded, 2 failed** (2 dead-lettered, 0 quarantined, 0 not processed)" in markdown
    )
    assert "| dead-lettered | 2 | invalid_input 2 |" in markdown and "| **total** | **12** |" in markdown

    demo._print_summary(report, None)
    console = capsys.readouterr().out
    assert headline in console
    assert "rows: 10 succeeded + 2 dead-lettered + 0 quarantined + 0 not processed = 12" in console
    assert "dead-lettered: invalid_input 2" in console
    assert f"${report['total_cost_usd']:.4f} billed = ${report['useful_cost_usd']:.4f} useful" in console


def test_a_chunk_failing_a_blocking_gate_keeps_its_rows_quarantined_and_its_spend(at_sim, tmp_path):
    sim = at_sim(6)
    # Item 3 is billed, then refused: with success_rate min 1.0 the first chunk fails `classified:success_rate`.
    write_labelled_dataset(tmp_path / "nightly.csv", 24, markers={3: "[[refuse]]"})
    home = tmp_path / "home"
    spec = _spec(route="all", success_rate={"min": 1.0})
    layout = layout_of(spec)
    gate = f"{layout.key('classified').to_user_string()}:success_rate"
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "nightly.csv", instance, home, chunk_size=12)
        gated, clean = dataset.partition_keys
        assert not run_chunk(defs, spec, instance, gated, raise_on_error=False).success
        assert run_chunk(defs, spec, instance, clean).success
        assert instance.get_materialized_partitions(layout.key("enriched")) == {clean}
        report, markdown, ledger = _complete(defs, spec, instance, dataset.dataset_id, home)
        kept = read_parquet(str(home / "outputs" / "banking77" / "classified" / f"{gated}.parquet"))

    assert len(kept) == 11  # paid work of the gated chunk: still on disk
    assert report["buckets"] == {"succeeded": 12, "dead_lettered": 1, "quarantined": 11, "not_processed": 0}
    assert report["quarantined_by_gate"] == {gate: len(kept)}
    assert report["dead_lettered_by_reason"] == {"refusal": 1}
    assert report["blocked_partitions"] == [gated] and report["failed_chunks"] == {
        gated: "failed_quality_gate"
    }
    _assert_accounts_add_up(report, ledger, sim.stats()["billed_usd"])
    # The quarantined rows' classification is useful work (kept, waiting for a person); the refusal is wasted.
    gated_rows = ledger[ledger["partition_key"] == gated]
    assert set(gated_rows.loc[gated_rows["item_id"].isin(kept["item_id"]), "kind"]) == {"useful"}
    assert gated_rows.loc[gated_rows["outcome"] == "refusal", "kind"].tolist() == ["wasted"]
    assert report["wasted_usd"] == pytest.approx(
        gated_rows.loc[gated_rows["outcome"] == "refusal", "cost_usd"].sum()
    )
    assert report["repaid_usd"] == 0
    assert f"| quarantined | 11 | {gate} 11 |" in markdown


def test_a_chunk_failing_the_enriched_gate_has_its_good_rows_quarantined_not_failed(at_sim, tmp_path):
    sim = at_sim(11)
    write_labelled_dataset(tmp_path / "nightly.csv", 20)
    home = tmp_path / "home"
    spec = _spec(route="all")
    layout = layout_of(spec)
    gate = f"{layout.key('enriched').to_user_string()}:success_rate"
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "nightly.csv", instance, home, chunk_size=20)
        (key,) = dataset.partition_keys
        stages = [layout.key("items"), layout.key("classified")]
        assert run_chunk(defs, spec, instance, key, asset_selection=stages).success
        sim.set_faults(refusal=0.5)  # the strong model refuses half of the items: billed, then dead-lettered
        enrich = run_chunk(
            defs, spec, instance, key, asset_selection=[layout.key("enriched")], raise_on_error=False
        )
        assert not enrich.success
        sim.set_faults(refusal=0.0)
        report, markdown, ledger = _complete(defs, spec, instance, dataset.dataset_id, home)
        kept = read_parquet(str(home / "outputs" / "banking77" / "enriched" / f"{key}.parquet"))

    assert 0 < len(kept) < 19  # the good rows, below the 0.95 gate
    assert report["buckets"] == {
        "succeeded": 0, "dead_lettered": 20 - len(kept), "quarantined": len(kept), "not_processed": 0,
    }  # fmt: skip
    assert report["quarantined_by_gate"] == {gate: len(kept)}
    assert report["dead_lettered_by_stage"] == {"enriched": 20 - len(kept)}
    _assert_accounts_add_up(report, ledger, sim.stats()["billed_usd"])
    assert set(ledger.loc[ledger["outcome"] == "refusal", "kind"]) == {"wasted"}
    assert set(ledger.loc[ledger["item_id"].isin(kept["item_id"]), "kind"]) == {"useful"}
    assert f"| quarantined | {len(kept)} | {gate} {len(kept)} |" in markdown


def test_rematerializing_a_finished_chunk_from_scratch_is_repaid_spend_on_the_bill(at_sim, tmp_path):
    sim = at_sim(8)
    write_labelled_dataset(tmp_path / "nightly.csv", 20)
    home = tmp_path / "home"
    spec = _spec(route="all")
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "nightly.csv", instance, home, chunk_size=10)
        for key in dataset.partition_keys:
            assert run_chunk(defs, spec, instance, key).success
        first, _, _ = _complete(defs, spec, instance, dataset.dataset_id, home)
        assert first["repaid_usd"] == 0 and first["wasted_usd"] == 0
        # A person re-materializes one chunk from the UI after completion: nothing to resume, so it pays again.
        again = dataset.partition_keys[0]
        shutil.rmtree(home / "checkpoints" / dataset.dataset_id / again, ignore_errors=True)
        assert run_chunk(defs, spec, instance, again).success
        report, _, ledger = _complete(defs, spec, instance, dataset.dataset_id, home)

    billed = sim.stats()["billed_usd"]
    assert billed > first["total_cost_usd"]
    _assert_accounts_add_up(report, ledger, billed)
    assert report["buckets"] == first["buckets"] == {
        "succeeded": 20, "dead_lettered": 0, "quarantined": 0, "not_processed": 0,
    }  # fmt: skip
    # The first payment of each of the chunk's 20 keys (10 items x 2 stages) is re-paid; the last one is useful.
    repaid = ledger[ledger["kind"] == "repaid"]
    assert len(repaid) == 20 and set(repaid["partition_key"]) == {again}
    assert report["repaid_usd"] == pytest.approx(repaid["cost_usd"].sum()) and report["repaid_usd"] > 0
    assert len(ledger[ledger["kind"] == "useful"]) == 40  # one per item and stage


def test_judge_spend_is_its_own_quality_checks_line(at_sim, tmp_path):
    sim = at_sim(9)
    _write_unlabelled(tmp_path / "nolabels.csv", 16)
    home = tmp_path / "home"
    spec = _spec(sampled_quality={"sample_size": 6})  # the shipped judge scores items without a gold label
    assert spec.stage("classified").gates.sampled_quality.judge.model == JUDGE_MODEL
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "nolabels.csv", instance, home, chunk_size=8)
        for key in dataset.partition_keys:
            assert run_chunk(defs, spec, instance, key).success
        report, markdown, ledger = _complete(defs, spec, instance, dataset.dataset_id, home)

    judge = ledger[ledger["stage"] == "judge"]
    assert (
        len(judge) == 12 and set(judge["kind"]) == {"quality_checks"} and set(judge["model"]) == {JUDGE_MODEL}
    )
    assert (
        report["quality_checks_usd"] == pytest.approx(judge["cost_usd"].sum())
        and report["quality_checks_usd"] > 0
    )
    assert report["cost_by_team"]["(quality checks)"] == pytest.approx(report["quality_checks_usd"])
    assert report["cost_by_stage"]["judge"] == pytest.approx(report["quality_checks_usd"])
    assert report["checks"]["judge_cost_usd"] == pytest.approx(report["quality_checks_usd"], abs=1e-5)
    assert set(report["cost_by_team"]) == {"red", "blue", "(quality checks)"}
    _assert_accounts_add_up(report, ledger, sim.stats()["billed_usd"])
    assert "| quality checks (the sampled_quality judge) |" in markdown
