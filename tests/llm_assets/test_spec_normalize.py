"""A stage's `normalize` fixes what a server's grammar cannot: against a server that writes a [0, 1] confidence
as a percentage (the simulator's `percent_numbers`, what llama.cpp's grammar lets Gemma 3 270M do), BANKING77's
`classified` dead-letters every item as `schema_invalid`; with `normalize: {"$.confidence": percent_to_unit}`
in the spec every item succeeds, each change recorded. Counted from the simulator's request log."""

from __future__ import annotations

import csv
from pathlib import Path

import dagster as dg
import pytest

from io_managers.parquet_files import read_parquet
from llm_assets.spec import PipelineSpecError
from resources.dead_letters import DeadLetterStore
from tests.spec_pipelines import point_at, register_file, run_chunk, spec_defs, test_spec

ROWS = 12


def _write(path: Path) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "text", "team"])
        for i in range(ROWS):
            out.writerow([f"n-{i:03d}", f"my card number {i} was charged twice for one coffee", "cards"])


def _run(spec, sim, tmp_path: Path, name: str):
    home = tmp_path / name
    data = tmp_path / f"{name}.csv"
    _write(data)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, data, instance, home, chunk_size=ROWS)
        key = dataset.partition_keys[0]
        result = run_chunk(spec_defs(spec, home), spec, instance, key, raise_on_error=False)
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(["banking77", "classified"]), asset_partitions=[key]),
            limit=1,
        ).records
        rows = read_parquet(str(records[0].asset_materialization.metadata["uri"].value)) if records else None
        dead = DeadLetterStore(str(home / "dead_letters")).query(dataset.dataset_id)
    return result, rows, dead


def test_normalize_in_the_spec_turns_percent_confidences_into_valid_rows(start_sim, tmp_path, monkeypatch):
    sim = start_sim({"server": {"percent_numbers": True}})
    point_at(sim, monkeypatch)
    stages = {"enriched": {"route": "none"}, "classified": {"gates": {"sampled_quality": None}}}

    plain = test_spec(stages=stages)
    _, _, dead = _run(plain, sim, tmp_path, "plain")
    assert set(dead["error_class"]) == {"schema_invalid"} and len(dead) == ROWS
    assert "$.confidence: above maximum 1" in dead["error_message"].iloc[0]

    fixed = test_spec(
        stages={
            **stages,
            "classified": {**stages["classified"], "normalize": {"$.confidence": "percent_to_unit"}},
        }
    )
    assert fixed.stage("classified").version() != plain.stage("classified").version()
    sent_before = len(sim.requests())
    result, rows, dead = _run(fixed, sim, tmp_path, "fixed")
    assert result.success and dead.empty
    assert len(rows) == ROWS and rows["confidence"].between(0, 1).all()
    classify = [r for r in sim.requests()[sent_before:] if r["model"] == fixed.stage("classified").model]
    assert len(classify) == ROWS  # one request per item: no repair round trips


def test_a_normalize_rule_the_schema_cannot_take_is_a_load_error_naming_the_field(monkeypatch):
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", "sk-unused")
    with pytest.raises(PipelineSpecError) as caught:
        test_spec(stages={"classified": {"normalize": {"$.label": "clamp"}}})
    message = str(caught.value)
    assert "stages[0].normalize" in message and "needs a minimum or maximum" in message
    with pytest.raises(
        PipelineSpecError, match=r"stages\[0\]\.normalize: normalize applies to online stages only"
    ):
        test_spec(stages={"classified": {"mode": "batch", "normalize": {"$.confidence": "clamp"}}})
