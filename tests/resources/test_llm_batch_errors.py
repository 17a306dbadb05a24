"""Per-line errors of provider batches end where the online taxonomy says: item-permanent to dead letters,
schema failures repaired once in the next round, retryable and expired lines resubmitted up to the attempt
limit, cancel keeps partial results."""

from __future__ import annotations

import collections

import pytest
from llm_batch_support import FAST_BATCHES, journal_at, run_to_completion, submit, wait_ended
from llm_support import SCHEMA, make_resource, texts

from resources.llm import LLMRequest
from resources.llm.batch import batch_custom_id

POISON = {"poison": {"[[boom]]": "server_error", "[[bad]]": "schema_violation"}}


def _mixed() -> list[LLMRequest]:
    good = [LLMRequest(f"ds|ok-{i}|c|v|m", t) for i, t in enumerate(texts(6))]
    return good + [
        LLMRequest("ds|poison|c|v|m", "my card [[poison]] please"),
        LLMRequest("ds|refuse|c|v|m", "[[refuse]] refund me"),
        LLMRequest("ds|boom|c|v|m", "top up [[boom]] failed"),
        LLMRequest("ds|bad|c|v|m", "exchange [[bad]] rate"),
    ]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_mixed_line_errors_end_exactly_where_the_taxonomy_says(start_sim, tmp_path, provider):
    sim = start_sim({**FAST_BATCHES, **POISON})
    resource = make_resource(sim, provider, state_dir=str(tmp_path), max_attempts=3)
    items = _mixed()
    finished, collections_ = run_to_completion(resource, items, journal_at(tmp_path))

    assert all(finished[f"ds|ok-{i}|c|v|m"].ok for i in range(6))
    assert finished["ds|poison|c|v|m"].error_class == "invalid_prompt"
    assert finished["ds|poison|c|v|m"].attempts == 1
    assert finished["ds|refuse|c|v|m"].error_class == "refusal"
    # Retryable (500) every round: resubmitted until the attempt limit.
    boom = finished["ds|boom|c|v|m"]
    assert (boom.ok, boom.error_class, boom.attempts) == (False, "retries_exhausted", 3)
    # Schema violation: one repair round, then item-permanent; both rounds billed and counted on the item.
    bad = finished["ds|bad|c|v|m"]
    assert (bad.ok, bad.error_class, bad.attempts) == (False, "schema_invalid", 2)
    assert "after one repair" in bad.error_message

    ran = collections.Counter(r["custom_id"] for r in sim.requests() if r["endpoint"] == "batch_line")
    cid = lambda key: batch_custom_id(provider, key)  # noqa: E731
    assert ran[cid("ds|boom|c|v|m")] == 3 and ran[cid("ds|bad|c|v|m")] == 2 and ran[cid("ds|ok-0|c|v|m")] == 1
    assert len(collections_) == 3, "rounds: all items, then boom+bad, then boom"
    # Cost: every billed line (including the failed schema attempt) is counted, equal to the ledger.
    total = sum(c.summary.cost_usd for c in collections_)
    assert total == pytest.approx(sim.stats()["billed_usd"], rel=1e-9)
    assert sum(r.usage.cost_usd for r in finished.values()) == pytest.approx(total, rel=1e-9)
    assert bad.usage.attempts == 2 and bad.usage.cost_usd > 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_expired_batch_lines_are_resubmitted_then_fail_as_expired_at_the_limit(start_sim, tmp_path, provider):
    sim = start_sim({"batch": {"complete_after_s": 0.6, "expire": True}})
    resource = make_resource(sim, provider, state_dir=str(tmp_path), max_attempts=2)
    items = [LLMRequest(f"ds|{i}|c|v|m", t) for i, t in enumerate(texts(10))]
    journal = journal_at(tmp_path)
    handles = submit(resource, items, journal)
    wait_ended(resource, handles)
    first = resource.collect_batch(journal.pending[0], schema=SCHEMA)
    assert first.results and first.to_resubmit, "about half ran, the rest expired"
    assert len(first.results) + len(first.to_resubmit) == 10
    assert all(r.ok for r in first.results)
    assert first.summary.items_unfinished == len(first.to_resubmit)
    billed_first = sim.stats()["billed_usd"]
    assert first.summary.cost_usd == pytest.approx(billed_first, rel=1e-9), "expired lines are not billed"

    again = [r for r in items if r.key in first.to_resubmit]
    handles = submit(resource, again, journal, round_=2)
    wait_ended(resource, handles)
    second = resource.collect_batch(journal.pending[0], schema=SCHEMA)
    expired = [r for r in second.results if not r.ok]
    assert expired and all(r.error_class == "expired" and r.attempts == 2 for r in expired)
    assert second.to_resubmit == [], "the attempt limit ends it"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_cancel_keeps_partial_results_and_resubmits_the_rest(start_sim, tmp_path, provider):
    sim = start_sim({"batch": {"complete_after_s": 3.0}})
    resource = make_resource(sim, provider, state_dir=str(tmp_path))
    items = [LLMRequest(f"ds|{i}|c|v|m", t) for i, t in enumerate(texts(20))]
    journal = journal_at(tmp_path)
    handles = submit(resource, items, journal)
    import time

    time.sleep(1.2)
    status = resource.cancel_batch(handles[0])
    assert status.state in ("cancelling", "ended")
    assert journal.handles[0].status == "cancelled"
    wait_ended(resource, handles)
    got = resource.collect_batch(journal.pending[0], schema=SCHEMA)
    assert 0 < len(got.results) < 20 and all(r.ok for r in got.results)
    assert sorted(got.to_resubmit + [r.key for r in got.results]) == sorted(i.key for i in items)
    assert got.summary.cost_usd == pytest.approx(sim.stats()["billed_usd"], rel=1e-9)
    assert journal.pending == []
