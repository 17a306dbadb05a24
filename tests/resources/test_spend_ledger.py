"""The spend ledger: every attempt announced before it leaves, every bill recorded before its result is used,
equal to the provider's bill; a job-fatal answer halts every resource sharing the ledger."""

from __future__ import annotations

import pytest
from llm_support import SCHEMA, SHORT_SYSTEM, make_resource, texts

from resources.llm import BudgetScope, JobFatalError, LLMRequest
from resources.llm.spend_ledger import AttemptContext, Billed, SpendLedger, attempt_summary


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_every_billed_reply_is_in_the_ledger_and_adds_up_to_the_simulator_bill(start_sim, tmp_path, provider):
    sim = start_sim(
        {
            "seed": 4,
            "faults": {"server_error": 0.1, "rate_limit": 0.05, "malformed_json": 0.1, "refusal": 0.05},
        }
    )
    resource = make_resource(sim, provider, state_dir=str(tmp_path), max_attempts=10)
    requests = [LLMRequest(f"d|i{i}|classify|v1|m", t, team=f"team{i % 3}") for i, t in enumerate(texts(80))]
    resource.run_prompts(
        requests,
        system_prompt=SHORT_SYSTEM,
        schema=SCHEMA,
        schema_name="intent",
        scope=BudgetScope("run-1", "d", partition_key="d__c00000"),
        stage="classify",
    )
    rows = resource.spend_ledger().rows("d")
    log = sim.requests()
    billed = rows[rows["event"] == "billed"]
    assert len(rows[rows["event"] == "sent"]) == len(log)
    assert sorted(billed["provider_request_id"]) == sorted(r["reply_id"] for r in log if r["status"] == "200")
    assert billed["cost_usd"].sum() == pytest.approx(sim.stats()["billed_usd"], abs=1e-12)
    assert set(billed["outcome"]) >= {"ok", "invalid"}  # malformed replies are billed too, marked invalid
    assert set(billed["team"]) == {"team0", "team1", "team2"}
    assert set(billed["partition_key"]) == {"d__c00000"} and set(billed["run_id"]) == {"run-1"}
    summary = attempt_summary(rows)
    assert summary["unsettled_requests"] == 0
    assert summary["billed_usd"] == pytest.approx(sim.stats()["billed_usd"], abs=1e-12)


def test_a_401_halts_every_resource_sharing_the_ledger_until_cleared(start_sim, tmp_path):
    sim = start_sim({"seed": 2})
    batch = [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(50))]

    def run(resource):
        return resource.run_prompts(
            batch, system_prompt=SHORT_SYSTEM, schema=SCHEMA, schema_name="intent",
            scope=BudgetScope("r", "d"), stage="classify",
        )  # fmt: skip

    first = make_resource(sim, state_dir=str(tmp_path), api_key="sk-revoked-0000", max_concurrency=4)
    with pytest.raises(JobFatalError):
        run(first)
    refused = len(sim.requests())
    assert 0 < refused <= 4  # what was in flight when the first 401 arrived

    # Another resource (another chunk run) with the same key sends nothing at all.
    second = make_resource(sim, state_dir=str(tmp_path), api_key="sk-revoked-0000", max_concurrency=4)
    with pytest.raises(JobFatalError, match="halted since"):
        run(second)
    assert len(sim.requests()) == refused
    halts = second.spend_ledger().halts()
    assert [h.reason for h in halts] == ["auth"]
    assert "sk-revoked" not in halts[0].scope + halts[0].message  # the key is named by a hash, never stored

    # A fixed key is another scope: it runs. A person's clear lifts the old key's halt.
    good = make_resource(sim, state_dir=str(tmp_path))
    assert all(r.ok for r in run(good).results)
    assert [h.reason for h in good.spend_ledger().clear_halts("openai")] == ["auth"]


def test_a_batch_line_collected_twice_is_billed_once(tmp_path):
    ledger = SpendLedger(tmp_path / "spend.sqlite")
    ctx = AttemptContext("d|i1|classify|v|m", dataset_id="d", stage="classify", mode="batch")
    usage = Billed(input_tokens=100, output_tokens=10, cost_usd=0.5)
    assert ledger.billed("a1", ctx, 1, usage, "ok", provider_request_id="i1", dedupe_key="batch:b1:i1")
    assert not ledger.billed("a2", ctx, 1, usage, "ok", provider_request_id="i1", dedupe_key="batch:b1:i1")
    assert ledger.billed_usd("d") == pytest.approx(0.5)


def test_an_attempt_sent_and_never_settled_is_reported_with_its_worst_case(tmp_path):
    ledger = SpendLedger(tmp_path / "spend.sqlite")
    ctx = AttemptContext("d|i1|classify|v|m", dataset_id="d")
    ledger.sent("a1", ctx, 1, worst_case_usd=0.02)
    ledger.billed("a1", ctx, 1, Billed(cost_usd=0.01), "ok")
    ledger.sent("a2", ctx, 2, worst_case_usd=0.03)  # the process died here
    ledger.sent("a3", ctx, 3, worst_case_usd=0.04)
    ledger.not_billed("a3", ctx, 3, "server_error")
    summary = attempt_summary(ledger.rows("d"))
    assert summary == {
        "requests_billed": 1,
        "billed_usd": pytest.approx(0.01),
        "unsettled_requests": 1,
        "unsettled_max_usd": pytest.approx(0.03),
    }
