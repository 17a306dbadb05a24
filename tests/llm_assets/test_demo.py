"""`make demo` on a small file: it finishes with a completion report, and a second run spends nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_support import write_dataset

from scripts import demo

pytestmark = pytest.mark.slow


def test_demo_writes_a_report_and_a_second_run_sends_nothing(tmp_path, monkeypatch, capsys):
    kinds = write_dataset(tmp_path / "tiny.csv", 90, poison_every=30)
    monkeypatch.setenv("CHUNKWISE_HOME", str(tmp_path / "home"))
    for name in ("CHUNKWISE_LLM_BASE_URL", "CHUNKWISE_LLM_API_KEY", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)  # the demo sets them; monkeypatch restores them after
    assert demo.main(["--data", str(tmp_path / "tiny.csv"), "--chunk-size", "30"]) == 0
    first = capsys.readouterr().out.strip().splitlines()
    report_path = Path(first[-1])
    report = json.loads(report_path.read_text())
    for field in ("dataset_id", "total_items", "succeeded", "failed", "dead_lettered", "retried",
                  "wall_clock_s", "total_cost_usd", "cost_per_item_usd", "failed_items_uri"):  # fmt: skip
        assert field in report
    assert report["total_items"] == 90
    assert report["succeeded"] == len(kinds["ok"])
    assert report["dead_lettered"] == len(kinds["poison"])
    assert report["total_cost_usd"] > 0
    assert report["buckets"] == {
        "succeeded": len(kinds["ok"]), "dead_lettered": len(kinds["poison"]), "quarantined": 0, "not_processed": 0,
    }  # fmt: skip
    parts = ("useful_cost_usd", "repaid_usd", "wasted_usd", "quality_checks_usd")
    assert sum(report[p] for p in parts) == pytest.approx(report["total_cost_usd"], abs=1e-9)
    assert "0 quarantined, 0 not processed); threshold" in "\n".join(first)

    monkeypatch.delenv("CHUNKWISE_LLM_BASE_URL")  # a new `make demo` starts a new simulator
    assert demo.main(["--data", str(tmp_path / "tiny.csv"), "--chunk-size", "30"]) == 0
    second = capsys.readouterr().out
    assert "nothing to send" in second
    assert "billed this process: $0.0000" in second
    assert json.loads(report_path.read_text())["total_cost_usd"] == report["total_cost_usd"]
