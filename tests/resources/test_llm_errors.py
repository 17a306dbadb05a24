"""Each error class maps to its behaviour, against the simulator's faults and poison markers."""

from __future__ import annotations

import hashlib
import re

import pytest
from llm_support import SCHEMA, SHORT_SYSTEM, make_resource, texts

from resources.llm import BudgetScope, ChunkRetryableError, JobFatalError, LLMRequest


def _run(resource, items, scope=("run", "ds"), schema=SCHEMA, on_result=None):
    return resource.run_prompts(
        items,
        system_prompt=SHORT_SYSTEM,
        schema=schema,
        schema_name="intent",
        scope=BudgetScope(*scope),
        stage="classify",
        on_result=on_result,
    )


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_poison_and_refusal_are_item_failures_and_the_chunk_goes_on(start_sim, tmp_path, provider):
    sim = start_sim({})
    items = [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(20))]
    items[3] = LLMRequest("k3", "please [[poison]] this")
    items[7] = LLMRequest("k7", "please [[refuse]] this")
    items.append(LLMRequest("empty", "   "))
    seen = []
    outcome = _run(make_resource(sim, provider, state_dir=str(tmp_path)), items, on_result=seen.append)
    failed = {r.key: r.error_class for r in outcome.results if not r.ok}
    assert failed == {"k3": "invalid_prompt", "k7": "refusal", "empty": "empty_input"}
    assert outcome.summary.items_succeeded == 18 and outcome.summary.items_failed == 3
    assert sorted(r.key for r in seen) == sorted(i.key for i in items)
    # item-permanent: exactly one request each, no retries; the empty item was never sent
    log = sim.requests()
    assert sum(1 for r in log if r["user_sha256"] == _sha("please [[poison]] this")) == 1
    assert len(log) == 20 and outcome.summary.retries == 0


def test_schema_violation_gets_one_repair_then_dead_letters(start_sim, tmp_path):
    sim = start_sim({"faults": {"schema_violation": 1.0}})
    outcome = _run(make_resource(sim, state_dir=str(tmp_path)), [LLMRequest("a", "where is my card")])
    (result,) = outcome.results
    assert not result.ok and result.error_class == "schema_invalid" and result.attempts == 2
    assert "not one of the allowed values" in result.error_message
    # both attempts were billed and are in the item's cost row
    assert (
        result.usage.cost_usd == pytest.approx(sim.stats()["billed_usd"], abs=1e-9)
        and result.usage.cost_usd > 0
    )
    assert [str(r["status"]) for r in sim.requests()] == ["200", "200"]


def test_malformed_json_is_repaired_when_the_repair_succeeds(start_sim, tmp_path):
    sim = start_sim({"faults": {"malformed_json": 0.5}, "seed": 11})
    outcome = _run(
        make_resource(sim, state_dir=str(tmp_path)), [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(40))]
    )
    repaired = [r for r in outcome.results if r.ok and r.attempts == 2]
    assert repaired, "some items needed and passed the one repair attempt"
    assert all(r.ok or r.error_class == "schema_invalid" for r in outcome.results)
    assert all(r.attempts <= 2 for r in outcome.results)


@pytest.mark.slow
def test_transient_5xx_timeouts_and_drops_are_retried_until_success(start_sim, tmp_path):
    sim = start_sim(
        {
            "faults": {"server_error": 0.15, "unavailable": 0.1, "drop": 0.1, "timeout": 0.05, "hang_s": 5},
            "seed": 5,
        }
    )
    resource = make_resource(sim, state_dir=str(tmp_path), timeout_s=0.5, max_attempts=8)
    outcome = _run(resource, [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(40))])
    assert outcome.summary.items_succeeded == 40
    assert outcome.summary.retries > 0 and outcome.summary.requests == 40 + outcome.summary.retries


def test_rate_limit_429_is_retried_after_retry_after(start_sim, tmp_path):
    sim = start_sim({"faults": {"rate_limit": 0.2}, "seed": 2})
    outcome = _run(
        make_resource(sim, state_dir=str(tmp_path)), [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(20))]
    )
    assert outcome.summary.items_succeeded == 20
    assert outcome.summary.rate_limited == sum(1 for r in sim.requests() if str(r["status"]) == "429") > 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_401_stops_after_at_most_the_requests_in_flight(start_sim, tmp_path, provider):
    sim = start_sim({"keys": ["sk-the-real-one"]})
    resource = make_resource(
        sim, provider, state_dir=str(tmp_path), max_concurrency=4, api_key="sk-not-the-key"
    )
    seen = []
    with pytest.raises(JobFatalError) as info:
        _run(resource, [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(200))], on_result=seen.append)
    assert info.value.reason == "auth" and info.value.allow_retries is False
    assert (
        "CHUNKWISE_LLM_API_KEY" in info.value.description
        and "0 of 200 items succeeded" in info.value.description
    )
    assert sim.stats()["requests_total"] <= 4
    assert seen == []


def test_insufficient_quota_is_job_fatal(start_sim, tmp_path):
    sim = start_sim({"faults": {"insufficient_quota": 1.0}})
    with pytest.raises(JobFatalError) as info:
        _run(
            make_resource(sim, state_dir=str(tmp_path)),
            [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(30))],
        )
    assert info.value.reason == "quota"
    assert sim.stats()["requests_total"] <= 8


def test_outage_trips_the_breaker_and_the_chunk_is_retryable(start_sim, tmp_path):
    sim = start_sim({"faults": {"outage": True}})
    resource = make_resource(sim, state_dir=str(tmp_path), circuit_breaker_failures=10)
    resource_fast = resource.model_copy()
    with pytest.raises(ChunkRetryableError) as info:
        _run(resource_fast, [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(50))])
    assert "circuit breaker" in str(info.value) and "0 of 50 items succeeded" in str(info.value)
    assert info.value.outcome.summary.items_succeeded == 0
    assert sim.stats()["requests_total"] < 10 + 8  # the breaker count plus what was in flight


def test_items_that_exhaust_their_attempts_fail_the_chunk_after_the_rest_finished(start_sim, tmp_path):
    sim = start_sim({"faults": {"server_error": 0.5}, "seed": 9})
    resource = make_resource(sim, state_dir=str(tmp_path), max_attempts=2, circuit_breaker_failures=1000)
    seen = []
    with pytest.raises(ChunkRetryableError) as info:
        _run(resource, [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(30))], on_result=seen.append)
    summary = info.value.outcome.summary
    assert summary.items_unfinished > 0 and summary.items_succeeded == len(seen) > 0
    assert f"{summary.items_succeeded} of 30 items succeeded" in str(info.value)
    assert "retry the partition" in str(info.value)


def test_budget_exhausted_is_job_fatal_with_what_to_raise(start_sim, tmp_path):
    sim = start_sim({})
    resource = make_resource(sim, state_dir=str(tmp_path), budget_dataset_usd=0.0002)
    with pytest.raises(JobFatalError) as info:
        _run(resource, [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(100))], scope=("r1", "tickets"))
    assert info.value.reason == "budget"
    assert "budget for dataset tickets exhausted" in info.value.description
    assert "raise `budgets.dataset_usd` in the pipeline spec" in info.value.description
    assert sim.stats()["billed_usd"] <= 0.0002


def test_a_provider_at_its_limit_slows_the_run_down_instead_of_failing_it(start_sim, tmp_path):
    """No limit in the profile, and a provider whose token bucket holds about 10 requests and refills 10 a
    second: the run's first wave of 32 empties it and most of the wave gets 429. That used to open the circuit
    breaker (25 refusals in a row, in a tenth of a second) and fail the chunk. Now a 429 halves the send window,
    a storm of them holds every send until the retry-after and spaces the sends that follow (SendWindow): every
    item finishes, and the provider refused fewer than two requests per answer (counted in its own request
    log)."""
    sim = start_sim({"limits": {"tpm": 3000, "per": "second"}, "seed": 5})
    resource = make_resource(sim, state_dir=str(tmp_path), max_concurrency=32)
    outcome = _run(resource, [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(100))])
    statuses = [str(r["status"]) for r in sim.requests()]
    assert outcome.summary.items_succeeded == 100 == statuses.count("200")
    refused = statuses.count("429")
    # About one refusal per answer at this bucket (102-107 for 100, 3 runs on one machine; under 100 on
    # another): the window probes upwards after every reply, and the bucket refuses each probe's extra send.
    assert 0 < refused == outcome.summary.rate_limited < 2 * 100


def test_refusals_that_never_end_open_the_breaker_after_its_time(start_sim, tmp_path):
    """Every request refused with 429: no item gives up on its attempts (a 429 is no attempt), and the run stops
    once `circuit_breaker_rate_limited_s` passed without a reply, as a retryable chunk failure."""
    sim = start_sim({"faults": {"rate_limit": 1.0}, "seed": 5})
    resource = make_resource(sim, state_dir=str(tmp_path), max_attempts=2, circuit_breaker_rate_limited_s=3.0)
    with pytest.raises(ChunkRetryableError) as info:
        _run(resource, [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(10))])
    stopped = re.search(r"rate limited \(429\) for (\d+)s without a reply", str(info.value))
    assert stopped and int(stopped.group(1)) >= 3, str(info.value)
    assert info.value.outcome.summary.items_failed == 0  # nothing dead-lettered: the chunk is retried whole
    assert sim.stats()["requests_total"] > 2 * 10 // 8  # more than max_attempts for the items in flight
