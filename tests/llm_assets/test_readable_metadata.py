"""What a person reads in the UI and the completion report (issue #13 item 4, issue #16): rounded numbers that stay
numbers, one total per chunk, dead letters previewed where they are, no path to a place that does not exist, the
quality gates per chunk, and a stage priced at $0 by `allow_unpriced` named as such.

One run for the whole module: BANKING77's spec with `classified` on `local-llama`, a model with no price row whose
profile sets `allow_unpriced: true` (the simulator serves it free), every item enriched by the priced model, and
two datasets on one instance: `clean` (2 chunks, nothing dead-lettered) and `refused` (1 chunk whose item 3 the
provider refuses: a dead letter, and the chunk fails its blocking success_rate gate)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from pipeline_support import raw_meta

from io_managers.parquet_files import read_parquet
from llm_assets.layout import PipelineLayout
from llm_sim.launcher import launch_sim
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

LOCAL_MODEL = "local-llama"
FREE = {"provider": "openai", "input": 0.0, "cached_input": 0.0, "cache_write": 0.0, "output": 0.0}


@dataclass
class Finished:
    instance: dg.DagsterInstance
    layout: PipelineLayout
    home: Path
    chunks: dict[str, list[str]]
    """dataset name (`clean`, `refused`) -> its chunk partitions."""
    reports: dict[str, dict[str, Any]]
    markdown: dict[str, str]
    completion_meta: dict[str, dict[str, dg.MetadataValue]]
    ledger_meta: dict[str, dict[str, dg.MetadataValue]]
    ledgers: dict[str, Any]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Any:
    tmp = tmp_path_factory.mktemp("readable")
    sim = launch_sim({"seed": 12, "models": {LOCAL_MODEL: FREE}})
    with pytest.MonkeyPatch.context() as monkeypatch, dg.instance_for_test() as instance:
        point_at(sim, monkeypatch)
        spec = test_spec(
            stages={
                "classified": {"model": LOCAL_MODEL},
                # A ceiling no chunk meets: this WARN gate warns on every chunk, and nothing stops.
                "enriched": {"route": "all", "gates": {"cost_per_item": {"max_usd": 0.00001}}},
            },
            providers={"default": {"allow_unpriced": True}},
        )
        layout = layout_of(spec)
        home = tmp / "home"
        defs = spec_defs(spec, home)
        write_labelled_dataset(tmp / "clean.csv", 20)
        write_labelled_dataset(tmp / "refused.csv", 10, seed=3, markers={3: "[[refuse]]"})
        chunks, reports, markdown, completion_meta, ledger_meta, ledgers = {}, {}, {}, {}, {}, {}
        for name in ("clean", "refused"):
            dataset = register_file(spec, tmp / f"{name}.csv", instance, home, chunk_size=10)
            chunks[name] = dataset.partition_keys
            for key in dataset.partition_keys:
                run_chunk(defs, spec, instance, key, raise_on_error=False)
            result = run_completion(defs, spec, instance, dataset.dataset_id)
            assert result.success
            events = {
                e.asset_key: e.event_specific_data.materialization.metadata
                for e in result.get_asset_materialization_events()
            }
            completion_meta[name] = dict(events[layout.completion_key])
            ledger_meta[name] = dict(events[layout.ledger_key])
            ledgers[name] = read_parquet(str(events[layout.ledger_key]["uri"].value))
            folder = home / "reports" / dataset.dataset_id
            reports[name] = json.loads((folder / "completion_report.json").read_text())
            markdown[name] = (folder / "completion_report.md").read_text()
        yield Finished(
            instance, layout, home, chunks, reports, markdown, completion_meta, ledger_meta, ledgers
        )
    sim.stop()


def _decimals_at_most(value: float, decimals: int) -> bool:
    return value == round(value, decimals)


# ---------------------------------------------------------------------------------------------- the numbers


def test_stage_metadata_rounds_usd_and_seconds_and_stays_numeric(finished):
    for key in finished.chunks["clean"]:
        for stage in finished.layout.stages:
            meta = raw_meta(finished.instance, finished.layout, stage, key)
            for name in ("cost_usd", "cache_savings_usd"):
                assert isinstance(meta[name], dg.FloatMetadataValue), (stage, name)
                assert _decimals_at_most(meta[name].value, 6), (stage, name, meta[name].value)
            assert _decimals_at_most(meta["cost_per_item_usd"].value, 8), stage
            for name in ("duration_s", "latency_p50_s", "latency_p95_s"):
                assert isinstance(meta[name], dg.FloatMetadataValue), (stage, name)
                assert _decimals_at_most(meta[name].value, 2), (stage, name, meta[name].value)
    enriched = raw_meta(finished.instance, finished.layout, "enriched", finished.chunks["clean"][0])
    assert enriched["cost_usd"].value > 0  # the priced model: something to round


def test_completion_and_ledger_metadata_round_usd_and_seconds_while_the_report_keeps_every_digit(finished):
    report, meta = finished.reports["clean"], finished.completion_meta["clean"]
    for name in ("total_cost_usd", "useful_cost_usd", "repaid_usd", "wasted_usd", "quality_checks_usd"):
        assert isinstance(meta[name], dg.FloatMetadataValue)
        assert meta[name].value == round(report[name], 6), name
    assert meta["cost_per_item_usd"].value == round(report["cost_per_item_usd"], 8)
    assert meta["wall_clock_s"].value == round(report["wall_clock_s"], 2)
    ledger, ledger_meta = finished.ledgers["clean"], finished.ledger_meta["clean"]
    assert ledger_meta["cost_usd"].value == round(ledger["cost_usd"].sum(), 6) > 0
    assert report["total_cost_usd"] == pytest.approx(ledger["cost_usd"].sum(), abs=1e-12)  # unrounded


def test_the_last_stage_carries_one_total_cost_per_chunk_and_no_duplicate_row_count(finished):
    """Needs the llm_assets/pipeline_assets.py and io_managers/chunk_parquet.py changes of this item."""
    instance, layout = finished.instance, finished.layout
    for key in finished.chunks["clean"]:
        per_stage = {s: raw_meta(instance, layout, s, key) for s in layout.stages}
        assert "total_cost_usd" not in per_stage["classified"]
        total = per_stage["enriched"]["total_cost_usd"]
        assert isinstance(total, dg.FloatMetadataValue) and _decimals_at_most(total.value, 6)
        assert total.value == pytest.approx(sum(m["cost_usd"].value for m in per_stage.values()), abs=2e-6)
        for stage in ("items", *layout.stages):
            meta = raw_meta(instance, layout, stage, key)
            assert "row_count" not in meta and meta["dagster/row_count"].value > 0, stage


# ---------------------------------------------------------------------------------------------- dead letters


def test_a_dead_letter_is_previewed_on_its_stage_and_no_path_points_at_nothing(finished):
    """Needs the llm_assets/pipeline_assets.py change of this item (`write_dead_letters`)."""
    instance, layout = finished.instance, finished.layout
    (key,) = finished.chunks["refused"]
    classified = raw_meta(instance, layout, "classified", key)
    assert classified["dead_letters"].value == 1
    preview = classified["dead_letters_preview"]
    assert isinstance(preview, dg.TableMetadataValue)
    assert [c.name for c in preview.schema.columns] == ["item_id", "stage", "reason", "error", "attempts"]
    (row,) = [r.data for r in preview.records]
    assert (row["item_id"], row["stage"], row["reason"]) == ("item-0003", "classified", "refusal")
    assert row["attempts"] >= 1 and 0 < len(row["error"]) <= 160
    file = Path(classified["dead_letters_uri"].value)
    assert file.is_file() and len(read_parquet(str(file))) == 1
    # Where nothing was dead-lettered there is no file, so no path and no table.
    items = raw_meta(instance, layout, "items", key)
    assert items["dead_letters"].value == 0
    assert "dead_letters_uri" not in items and "dead_letters_preview" not in items
    for clean in finished.chunks["clean"]:
        for stage in ("items", *layout.stages):
            meta = raw_meta(instance, layout, stage, clean)
            assert meta["dead_letters"].value == 0
            assert "dead_letters_uri" not in meta and "dead_letters_preview" not in meta, (stage, clean)


def test_a_report_without_dead_letters_names_no_dead_letter_folder(finished):
    clean, refused = finished.reports["clean"], finished.reports["refused"]
    assert clean["dead_lettered"] == 0 and clean["failed_items_uri"] is None
    assert "- Failed items: none (no dead letters)" in finished.markdown["clean"]
    assert "dead_letters" not in finished.markdown["clean"]
    assert finished.completion_meta["clean"]["summary"].value["failed_items_uri"] is None
    # With a dead letter the folder exists, and the report points at it.
    assert refused["dead_lettered"] == 1 and Path(refused["failed_items_uri"]).is_dir()
    assert f"- Failed items: `{refused['failed_items_uri']}`" in finished.markdown["refused"]


# ---------------------------------------------------------------------------------------------- quality gates


def test_the_report_lists_every_quality_gate_per_chunk_and_the_sampled_accuracy(finished):
    clean, refused = finished.chunks["clean"], finished.chunks["refused"]
    markdown = finished.markdown["clean"]
    assert "## Quality gates" in markdown
    assert "| gate | blocking | passed | warned | failed | not evaluated | chunks not passing |" in markdown
    assert "| banking77/classified:success_rate | yes | 2 | 0 | 0 | 0 | - |" in markdown
    warned = ", ".join(f"`{k}`" for k in clean)
    assert f"| banking77/enriched:cost_per_item | no | 0 | 2 | 0 | 0 | {warned} |" in markdown
    sampled = finished.reports["clean"]["checks"]["sampled_accuracy"]
    assert sampled["scored"] == 20
    assert (
        f"Sampled accuracy {sampled['accuracy']:.3f}: {sampled['correct']:,} of 20 sampled items right over 2 "
        "chunks" in markdown
    )
    # A blocking gate that failed: the chunk's enriched stage never ran, so its gates were not evaluated.
    gated = finished.markdown["refused"]
    assert f"| banking77/classified:success_rate | yes | 0 | 0 | 1 | 0 | `{refused[0]}` |" in gated
    assert "| banking77/enriched:outputs_valid | yes | 0 | 0 | 0 | 1 | - |" in gated


# ---------------------------------------------------------------------------------------------- priced at $0


def test_a_stage_priced_at_zero_by_allow_unpriced_is_named_in_the_report(finished):
    report, ledger = finished.reports["clean"], finished.ledgers["clean"]
    local = ledger[ledger["model"] == LOCAL_MODEL]
    assert len(local) >= 20 and local["cost_usd"].sum() == 0  # it ran, and was billed nothing
    assert report["priced_at_zero"] == [
        {
            "stage": "classified",
            "provider": "openai",
            "model": LOCAL_MODEL,
            "requests_billed": len(local),
            "input_tokens": int(local["input_tokens"].sum()),
            "output_tokens": int(local["output_tokens"].sum()),
            "price_source": "allow_unpriced (zero price)",
        }
    ]
    assert report["cost_by_model"][LOCAL_MODEL] == 0 and report["total_cost_usd"] > 0  # enriched is priced
    markdown = finished.markdown["clean"]
    assert "**Priced at $0 (`allow_unpriced`)**" in markdown
    assert (
        f"- stage `classified` (model `{LOCAL_MODEL}`, provider openai): no price row, and its provider profile "
        f"sets `allow_unpriced: true`, so its {len(local):,} billed requests" in markdown
    )
    summary = finished.completion_meta["clean"]["summary"].value
    assert summary["priced_at_zero"] == report["priced_at_zero"]
    assert f"priced at $0 by allow_unpriced (no price row): classified ({LOCAL_MODEL})" in summary["text"]


def test_the_console_summary_names_the_zero_priced_stage_and_no_missing_folder(finished, capsys):
    """Needs the scripts/demo.py change of this item (`_print_summary`)."""
    demo._print_summary(finished.reports["clean"], None)
    console = capsys.readouterr().out
    assert f"priced at $0: stage classified (model {LOCAL_MODEL}, provider " in console
    assert "no price row, and its provider profile sets allow_unpriced: true" in console
    assert "failed items" not in console and "dead_letters" not in console
    demo._print_summary(finished.reports["refused"], None)
    assert f"failed items: {finished.reports['refused']['failed_items_uri']}" in capsys.readouterr().out
