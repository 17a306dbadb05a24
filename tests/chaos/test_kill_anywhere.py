"""kill -9 the real demo at 12 seeded random points over a 3,000-row job, resume, and count from the provider.

The simulator's request log is the witness: what it billed, for which text and model, and which replies it was
still holding when each kill landed. Chunkwise's own counters are only compared against it. A failed check keeps
its evidence (both ledgers, the kill points, the report) in a folder its message names; CHUNKWISE_CHAOS_SEED runs
the same checks on other kill points.
"""

from __future__ import annotations

import os
import sqlite3

import dagster as dg
import pandas as pd
import pytest

from bench.chaos import run_chaos

pytestmark = pytest.mark.slow

ROWS = 3_000
KILLS = 12
SEED = int(os.environ.get("CHUNKWISE_CHAOS_SEED", "20261130"))


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory):
    return run_chaos(tmp_path_factory.mktemp("chaos"), rows=ROWS, kills=KILLS, seed=SEED)


def test_the_job_finishes_after_every_kill(chaos) -> None:
    assert len(chaos.kills) >= 10, f"only {len(chaos.kills)} kills landed before the job finished"
    assert {k.trigger for k in chaos.kills} == {"timer", "between_chunks", "completion"}
    assert chaos.final_exit_code == 0, chaos.final_output[-3000:]
    assert "Traceback" not in chaos.final_output
    assert chaos.report["total_items"] == ROWS


def test_kill_anywhere_repays_at_most_the_requests_in_flight(chaos) -> None:
    summary = chaos.summary()
    assert summary["repaid_requests"] <= summary["in_flight_at_kills"], chaos.keep_evidence(
        f"{summary['repaid_requests']} re-paid > {summary['in_flight_at_kills']} in flight"
    )


def test_report_cost_is_the_simulator_bill_less_only_replies_killed_in_flight(chaos) -> None:
    unseen = chaos.unseen_replies()
    # Every reply that reached Chunkwise is in its spend ledger; only replies in flight at a kill can be missing:
    # billed before the killed process's requests stopped arriving, and let go of when that process could still
    # have left it unread (within the run's longest reply-handling lag; bench/chaos.py, `Kill.held`).
    for reply in unseen:
        assert any(k.held(reply) for k in chaos.kills), chaos.keep_evidence(
            f"unseen reply not in flight at any kill: {reply}"
        )
    assert len(unseen) <= chaos.in_flight_total(), chaos.keep_evidence(
        f"{len(unseen)} unseen replies > {chaos.in_flight_total()} in flight"
    )
    simulator = sum(r["billed_usd"] for r in chaos.billed)
    report = float(chaos.report["total_cost_usd"])
    assert report + sum(r["billed_usd"] for r in unseen) == pytest.approx(simulator, abs=1e-6), (
        chaos.keep_evidence(f"report ${report:.6f} + unseen != simulator ${simulator:.6f}")
    )
    # The report says how many attempts were sent and never settled: at least the ones the provider billed.
    assert chaos.report["unsettled_requests"] >= len(unseen), chaos.keep_evidence(
        f"report unsettled_requests {chaos.report['unsettled_requests']} < {len(unseen)} unseen"
    )


def test_no_item_lost_or_duplicated(chaos) -> None:
    outputs = chaos.home / "outputs" / "banking77" / "enriched"
    frames = [pd.read_parquet(p) for p in sorted(outputs.glob("*.parquet"))]
    enriched = pd.concat(frames, ignore_index=True)
    assert not enriched["item_id"].duplicated().any()
    dead = set()
    for path in (chaos.home / "dead_letters").glob("**/*.parquet"):
        dead |= set(pd.read_parquet(path)["item_id"].astype(str))
    assert set(enriched["item_id"].astype(str)) | dead == {f"r{i:07d}" for i in range(ROWS)}
    assert chaos.report["succeeded"] == len(enriched)


def test_no_run_is_left_started(chaos) -> None:
    instance = dg.DagsterInstance.from_config(str(chaos.home / "dagster"))
    unfinished = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.NOT_STARTED,
            ]
        )
    )
    assert unfinished == []


def test_every_request_the_provider_saw_was_in_the_spend_ledger_first(chaos) -> None:
    ledger = chaos.home / "dagster" / "storage" / "chunkwise" / "spend_ledger.sqlite"
    with sqlite3.connect(ledger) as conn:
        sent = conn.execute("SELECT COUNT(*) FROM attempts WHERE event = 'sent'").fetchone()[0]
        unsettled = conn.execute(
            "SELECT COUNT(*) FROM attempts s WHERE s.event = 'sent' AND NOT EXISTS "
            "(SELECT 1 FROM attempts o WHERE o.attempt_id = s.attempt_id AND o.event != 'sent')"
        ).fetchone()[0]
    # `sent` is written before the request leaves, so the provider never sees a request the ledger does not.
    assert sent >= len(chaos.sim_records)
    # Attempts without an outcome are those cut off by a kill: at most the engine's concurrency per kill.
    assert unsettled <= 32 * len(chaos.kills)
