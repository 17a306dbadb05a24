"""`make demo MODE=batch` (BANKING77's spec, every stage in batch mode) on a small file: every chunk goes through
the batch APIs, the demo collects them as the daemon's batch poll sensor would, and the report shows the batch
cost, equal to the simulator's ledger. The file's columns are `id,text,team`: the spec derives its own ids and
finds no gold labels, so the quality judge scores the sample (online)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pipeline_support import write_dataset

from scripts import demo

pytestmark = pytest.mark.slow


def test_demo_in_batch_mode_goes_through_the_batch_apis_and_reports_the_batch_cost(
    tmp_path, monkeypatch, capsys
):
    kinds = write_dataset(tmp_path / "tiny.csv", 60, poison_every=30)
    monkeypatch.setenv("CHUNKWISE_HOME", str(tmp_path / "home"))
    for name in ("CHUNKWISE_LLM_BASE_URL", "CHUNKWISE_LLM_API_KEY", "DAGSTER_HOME", "CHUNKWISE_MODE"):
        monkeypatch.setenv(name, "")  # recorded, so monkeypatch restores what the demo sets
        monkeypatch.delenv(name)
    assert demo.main(["--data", str(tmp_path / "tiny.csv"), "--chunk-size", "30", "--mode", "batch"]) == 0
    out = capsys.readouterr().out
    report = json.loads(Path(out.strip().splitlines()[-1]).read_text())
    assert "batch submitted" in out and "collected" in out
    assert report["succeeded"] == len(kinds["ok"]) and report["dead_lettered"] == len(kinds["poison"])
    # The stages ran as batches; only the quality judge (no gold labels here) is online.
    by_mode = report["cost_by_mode"]
    assert by_mode["batch"] == pytest.approx(
        report["cost_by_stage"]["classified"] + report["cost_by_stage"]["enriched"]
    )
    assert by_mode.get("online", 0.0) == pytest.approx(report["cost_by_stage"].get("judge", 0.0))
    billed = float(out.split("billed this process: $")[1].split()[0])
    assert billed == pytest.approx(report["total_cost_usd"], abs=0.00005)  # the printed ledger, 4 decimals
    assert "CHUNKWISE_MODE" not in os.environ  # the demo leaves the environment as it found it
