"""Batch mode of the LLM resource against the simulator's batch endpoints: round trips for both providers,
outputs equal to online mode, half the cost and equal to the simulator's ledger, the budget reservation."""

from __future__ import annotations

import pytest
from llm_batch_support import FAST_BATCHES, journal_at, run_to_completion, submit, wait_ended
from llm_support import LONG_SYSTEM, SCHEMA, make_resource, texts

from resources.llm import BatchJournal, BudgetScope, JobFatalError, LLMRequest
from resources.llm.batch import batch_custom_id


def _items(n: int, seed: int = 0) -> list[LLMRequest]:
    return [LLMRequest(f"ds|item-{seed}-{i}|classify|v1|m", t) for i, t in enumerate(texts(n, seed))]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_round_trip_matches_online_outputs_at_half_the_cost(start_sim, tmp_path, provider):
    model = "gpt-6.2-sol" if provider == "openai" else "claude-sonnet-5-5"
    items = _items(60)
    online_sim = start_sim({})
    online = make_resource(online_sim, provider, model=model, state_dir=str(tmp_path / "online")).run_prompts(
        items,
        system_prompt=LONG_SYSTEM,
        schema=SCHEMA,
        schema_name="intent",
        scope=BudgetScope("r", "ds"),
        stage="classify",
    )
    batch_sim = start_sim(FAST_BATCHES)
    resource = make_resource(
        batch_sim, provider, model=model, state_dir=str(tmp_path / "batch"), budget_dataset_usd=20.0
    )
    journal = journal_at(tmp_path)
    handles = submit(resource, items, journal, system_prompt=LONG_SYSTEM)
    assert len(handles) == 1 and handles[0].batch_id and handles[0].status == "submitted"
    assert BatchJournal(journal.path).handles[0].batch_id == handles[0].batch_id, "recorded durably"
    status = resource.poll_batch(handles[0])
    assert status.total == 60 and status.state in ("in_progress", "ended")
    wait_ended(resource, handles)
    seen = []
    got = resource.collect_batch(journal.pending[0], schema=SCHEMA, on_result=seen.append)

    assert got.to_resubmit == [] and len(got.results) == 60 == len(seen)
    assert all(r.ok and r.usage.mode == "batch" for r in got.results)
    online_out = {r.key: r.output for r in online.results}
    assert {r.key: r.output for r in got.results} == online_out
    stats = batch_sim.stats()
    assert stats["billed_usd_online"] == 0
    assert round(got.summary.cost_usd, 2) == round(stats["billed_usd"], 2)
    assert got.summary.cost_usd == pytest.approx(stats["billed_usd"], rel=1e-9)
    assert sum(r.usage.cost_usd for r in got.results) == pytest.approx(got.summary.cost_usd, rel=1e-9)
    # Half of online for the same items (caching identical: both runs hit the same prefix rules).
    online_cost = online_sim.stats()["billed_usd"]
    assert got.summary.cost_usd == pytest.approx(online_cost / 2, rel=0.02)
    # The budget reservation was reconciled to the actual cost.
    spent, reserved, _ = resource._shared_store().spend("dataset:ds")
    assert spent == pytest.approx(stats["billed_usd"], rel=1e-9) and reserved == 0
    assert BatchJournal(journal.path).pending == []
    # custom_id per line, once each
    lines = [r for r in batch_sim.requests() if r["endpoint"] == "batch_line"]
    assert sorted(r["custom_id"] for r in lines) == sorted(batch_custom_id(provider, i.key) for i in items)


def test_budget_too_small_for_the_worst_case_fails_before_anything_is_uploaded(start_sim, tmp_path):
    sim = start_sim(FAST_BATCHES)
    resource = make_resource(sim, model="gpt-6.2-sol", state_dir=str(tmp_path), budget_dataset_usd=0.001)
    journal = journal_at(tmp_path)
    with pytest.raises(JobFatalError) as info:
        submit(resource, _items(50), journal)
    assert info.value.reason == "budget"
    assert "budgets.dataset_usd" in str(info.value.description)
    assert journal.handles == [] and not journal.path.exists()
    assert sim.requests() == [] and sim.stats()["batches"]["created"] == 0


def test_budget_holds_the_batch_worst_case_until_collection_then_the_actual_cost(start_sim, tmp_path):
    sim = start_sim(FAST_BATCHES)
    resource = make_resource(sim, model="gpt-6.2-sol", state_dir=str(tmp_path), budget_dataset_usd=1.0)
    journal = journal_at(tmp_path)
    handles = submit(resource, _items(20), journal)
    store = resource._shared_store()
    held = store.spend("dataset:ds")[0]
    assert held == pytest.approx(handles[0].reserved_usd) and held > 0
    # The worst case is priced at batch rates: half of the same request's online worst case.
    price = resource.price()
    assert price.worst_case_usd(1000, 64, batch=True) == pytest.approx(price.worst_case_usd(1000, 64) / 2)
    wait_ended(resource, handles)
    got = resource.collect_batch(journal.pending[0], schema=SCHEMA)
    assert got.summary.cost_usd < held
    assert store.spend("dataset:ds")[0] == pytest.approx(sim.stats()["billed_usd"], rel=1e-9)


def test_items_with_empty_text_are_never_sent_and_fail_as_empty_input(start_sim, tmp_path):
    sim = start_sim(FAST_BATCHES)
    resource = make_resource(sim, state_dir=str(tmp_path))
    items = _items(3) + [LLMRequest("ds|blank|classify|v1|m", "   ")]
    finished, _ = run_to_completion(resource, items, journal_at(tmp_path))
    assert finished["ds|blank|classify|v1|m"].error_class == "empty_input"
    assert sum(r.ok for r in finished.values()) == 3
    assert len([r for r in sim.requests() if r["endpoint"] == "batch_line"]) == 3


def test_a_submission_over_the_provider_line_limit_is_split_into_parts(start_sim, tmp_path, monkeypatch):
    from resources.llm.providers.openai_batches import OpenAIBatches

    monkeypatch.setattr(OpenAIBatches, "max_lines", 4)  # the real limit is 50,000 lines
    sim = start_sim(FAST_BATCHES)
    resource = make_resource(sim, state_dir=str(tmp_path))
    items = _items(10)
    journal = journal_at(tmp_path)
    finished, collected = run_to_completion(resource, items, journal)
    assert [len(h.keys) for h in journal.handles] == [4, 4, 2]
    assert [h.submission_id for h in journal.handles] == [f"ds:p0:classify:1:{n}" for n in range(3)]
    assert len(finished) == 10 and all(r.ok for r in finished.values())
    assert sim.stats()["batches"]["created"] == 3


def test_the_journal_never_holds_the_api_key(start_sim, tmp_path):
    sim = start_sim(FAST_BATCHES)
    resource = make_resource(sim, state_dir=str(tmp_path))
    journal = journal_at(tmp_path)
    run_to_completion(resource, _items(3), journal)
    assert sim.api_key not in journal.path.read_text()
    assert sim.api_key not in repr(journal) + repr(journal.handles)
