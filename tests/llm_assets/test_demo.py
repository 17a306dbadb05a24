"""`make demo` (BANKING77's spec) on a small file: the daemon's sensors launch its runs through the run queue, it
finishes with a completion report, and a second run spends nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import dagster as dg
import pytest
from pipeline_support import POISON

from scripts import demo
from scripts.demo_daemon import DEMO_MAX_RUNS

pytestmark = pytest.mark.slow

BANKING = Path(__file__).resolve().parents[2] / "data" / "banking77" / "test.csv"
# What the demo sets (or a shipped spec reads): removed here so monkeypatch restores them after the test.
DEMO_ENV = (
    "CHUNKWISE_LLM_BASE_URL", "CHUNKWISE_LLM_API_KEY", "CHUNKWISE_ANTHROPIC_BASE_URL", "CHUNKWISE_ANTHROPIC_API_KEY",
    "DAGSTER_HOME", "CHUNKWISE_MODE", "CHUNKWISE_OUTPUTS_URI",
)  # fmt: skip


def _write_banking_file(path: Path, n: int, poison_every: int) -> dict[str, int]:
    """n BANKING77 rows in the spec's own format (`text,category`; ids come from the row number, teams from the
    label); every `poison_every`-th text carries the poison marker. Returns how many rows are `ok` / `poison`."""
    with BANKING.open(newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    counts = {"ok": 0, "poison": 0}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        for i, row in enumerate(rows):
            poisoned = i % poison_every == poison_every - 1
            w.writerow([f"{row['text']} {POISON}" if poisoned else row["text"], row["category"]])
            counts["poison" if poisoned else "ok"] += 1
    return counts


def test_demo_writes_a_report_and_a_second_run_sends_nothing(tmp_path, monkeypatch, capsys):
    counts = _write_banking_file(tmp_path / "tiny.csv", 90, poison_every=30)
    monkeypatch.setenv("CHUNKWISE_HOME", str(tmp_path / "home"))
    for name in DEMO_ENV:
        monkeypatch.delenv(name, raising=False)
    assert demo.main(["--data", str(tmp_path / "tiny.csv"), "--chunk-size", "30"]) == 0
    first = capsys.readouterr().out.strip().splitlines()
    report_path = Path(first[-1])
    report = json.loads(report_path.read_text())
    assert report["dataset_id"].startswith("banking77-tiny-")  # the demo ran BANKING77's spec
    assert any(
        line.startswith(f"pipeline banking77: dataset {report['dataset_id']}: 90 items") for line in first
    )
    for field in ("dataset_id", "total_items", "succeeded", "failed", "dead_lettered", "retried",
                  "wall_clock_s", "total_cost_usd", "cost_per_item_usd", "failed_items_uri"):  # fmt: skip
        assert field in report
    assert report["total_items"] == 90
    assert report["succeeded"] == counts["ok"]
    assert report["dead_lettered"] == counts["poison"]
    assert report["total_cost_usd"] > 0
    assert report["buckets"] == {
        "succeeded": counts["ok"], "dead_lettered": counts["poison"], "quarantined": 0, "not_processed": 0,
    }  # fmt: skip
    parts = ("useful_cost_usd", "repaid_usd", "wasted_usd", "quality_checks_usd")
    assert sum(report[p] for p in parts) == pytest.approx(report["total_cost_usd"], abs=1e-9)
    assert "0 quarantined, 0 not processed); threshold" in "\n".join(first)
    # The spec's gold labels are scored (no judge spend) and its teams come from teams.json.
    assert report["checks"]["sampled_accuracy"]["scored"] > 0 and report["quality_checks_usd"] == 0
    assert set(report["cost_by_team"]) <= {"cards", "payments", "cash", "fx", "accounts", "general"}

    # Through the daemon: one run per chunk, launched by the new-dataset sensor through the run queue, several at
    # once and never more than the demo's queue allows.
    with dg.DagsterInstance.from_config(str(tmp_path / "home" / "dagster")) as instance:
        records = instance.get_run_records(filters=dg.RunsFilter(job_name="banking77__chunk_job"))
    assert len(records) == 3
    assert {r.dagster_run.tags["dagster/sensor_name"] for r in records} == {"banking77__new_dataset_sensor"}
    spans = [(r.start_time, r.end_time) for r in records]
    at_once = max(sum(1 for start, end in spans if start <= t < end) for t, _ in spans)
    assert 2 <= at_once <= DEMO_MAX_RUNS, spans

    monkeypatch.delenv("CHUNKWISE_LLM_BASE_URL")  # a new `make demo` starts a new simulator
    assert demo.main(["--data", str(tmp_path / "tiny.csv"), "--chunk-size", "30"]) == 0
    second = capsys.readouterr().out
    assert "nothing to send" in second
    assert "billed this process: $0.0000" in second
    assert second.strip().splitlines()[-1] == str(report_path)
    assert json.loads(report_path.read_text())["total_cost_usd"] == report["total_cost_usd"]
