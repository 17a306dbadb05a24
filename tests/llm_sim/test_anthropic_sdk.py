"""The official anthropic SDK, pointed at the simulator (base_url = server root), completes real calls."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import pytest

LABEL_SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["card_arrival", "cash_withdrawal", "exchange_rate"]}},
    "required": ["label"],
    "additionalProperties": False,
}


EXAMPLES = """- where is my card => card_arrival
- my card has not arrived => card_arrival
- I took cash from the machine => cash_withdrawal
- withdrawal at the atm => cash_withdrawal
- what exchange rate do you use => exchange_rate
- the rate for converting euros => exchange_rate
"""


def client(sim, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=sim.base_url, api_key=kw.pop("api_key", sim.api_key), max_retries=0, **kw
    )


def test_messages_call_returns_text_and_usage(sim):
    message = client(sim).messages.create(
        model="claude-haiku-5-5",
        max_tokens=100,
        system=[{"type": "text", "text": "Answer briefly."}],
        messages=[{"role": "user", "content": "The ATM kept my card. What now?"}],
    )
    assert message.stop_reason == "end_turn"
    assert message.content[0].text == "The ATM kept my card."
    assert message.usage.output_tokens > 0
    assert message.usage.cache_read_input_tokens == 0


def test_structured_output_via_output_config(sim):
    message = client(sim).messages.create(
        model="claude-sonnet-5-5",
        max_tokens=100,
        system=EXAMPLES,
        messages=[{"role": "user", "content": "I took cash from the machine twice today"}],
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": LABEL_SCHEMA}}},
    )
    assert json.loads(message.content[0].text) == {"label": "cash_withdrawal"}


def test_output_cap_truncates_with_max_tokens_stop_reason(sim):
    message = client(sim).messages.create(
        model="claude-haiku-5-5",
        max_tokens=3,
        messages=[
            {"role": "user", "content": "Please explain the exchange rates applied to my transfer last week."}
        ],
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens <= 3


def test_wrong_key_raises_authentication_error(sim):
    with pytest.raises(anthropic.AuthenticationError) as info:
        client(sim, api_key="sk-wrong").messages.create(
            model="claude-haiku-5-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 401
    assert info.value.body["error"]["type"] == "authentication_error"


def test_bearer_auth_and_new_version_rejects_sampling_params(sim):
    headers = {"Authorization": f"Bearer {sim.api_key}", "anthropic-version": "2026-10-21"}
    body = {"model": "claude-haiku-5-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    ok = httpx.post(sim.base_url + "/v1/messages", headers=headers, json=body)
    assert ok.status_code == 200
    rejected = httpx.post(sim.base_url + "/v1/messages", headers=headers, json={**body, "temperature": 0.2})
    assert rejected.status_code == 400
    assert rejected.json()["error"]["type"] == "invalid_request_error"
    assert "temperature" in rejected.json()["error"]["message"]
    old = httpx.post(
        sim.base_url + "/v1/messages",
        headers={"x-api-key": sim.api_key, "anthropic-version": "2023-06-01"},
        json={**body, "temperature": 0.2},
    )
    assert old.status_code == 200


def test_rate_limit_surfaces_as_rate_limit_error_with_headers(start_sim):
    sim = start_sim({"models": {"claude-haiku-5-5": {"limits": {"otpm": 100, "per": "minute"}}}})
    api = client(sim)
    api.messages.create(model="claude-haiku-5-5", max_tokens=60, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.RateLimitError) as info:
        api.messages.create(
            model="claude-haiku-5-5", max_tokens=60, messages=[{"role": "user", "content": "hi"}]
        )
    error = info.value
    assert error.body["error"]["type"] == "rate_limit_error"
    headers = error.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["anthropic-ratelimit-output-tokens-limit"] == "100"
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "40"
    assert headers["anthropic-ratelimit-output-tokens-reset"].endswith("Z")
    assert headers["request-id"].startswith("req_")


def test_message_batch_round_trip(start_sim):
    sim = start_sim({"batch": {"complete_after_s": 0.5}})
    api = client(sim)
    texts = ["where is my card", "need cash from an atm", "what exchange rate", "please [[refuse]] this"]
    batch = api.messages.batches.create(
        requests=[
            {
                "custom_id": f"item-{i}",
                "params": {
                    "model": "claude-haiku-5-5",
                    "max_tokens": 50,
                    "system": EXAMPLES,
                    "messages": [{"role": "user", "content": text}],
                    "output_config": {"format": {"type": "json_schema", "schema": LABEL_SCHEMA}},
                },
            }
            for i, text in enumerate(texts)
        ]
    )
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 4
    deadline = time.monotonic() + 15
    while batch.processing_status != "ended" and time.monotonic() < deadline:
        time.sleep(0.1)
        batch = api.messages.batches.retrieve(batch.id)
    assert batch.processing_status == "ended"
    assert batch.request_counts.succeeded == 4
    results = {r.custom_id: r.result for r in api.messages.batches.results(batch.id)}
    assert set(results) == {"item-0", "item-1", "item-2", "item-3"}
    labels = {k: json.loads(r.message.content[0].text)["label"] for k, r in results.items() if k != "item-3"}
    assert labels == {"item-0": "card_arrival", "item-1": "cash_withdrawal", "item-2": "exchange_rate"}
    assert results["item-3"].message.stop_reason == "refusal"
    billed = [r for r in sim.requests() if r["endpoint"] == "batch_line"]
    assert sorted(r["custom_id"] for r in billed) == sorted(results)


def test_message_batch_cancel_keeps_partial_results(start_sim):
    sim = start_sim({"batch": {"complete_after_s": 2.0}})
    api = client(sim)
    batch = api.messages.batches.create(
        requests=[
            {
                "custom_id": f"c{i}",
                "params": {
                    "model": "claude-haiku-5-5",
                    "max_tokens": 20,
                    "messages": [{"role": "user", "content": f"q {i}"}],
                },
            }
            for i in range(20)
        ]
    )
    time.sleep(1.0)
    api.messages.batches.cancel(batch.id)
    deadline = time.monotonic() + 10
    while batch.processing_status != "ended" and time.monotonic() < deadline:
        time.sleep(0.05)
        batch = api.messages.batches.retrieve(batch.id)
    counts = batch.request_counts
    assert 0 < counts.succeeded < 20
    assert counts.succeeded + counts.canceled == 20
    kinds = [r.result.type for r in api.messages.batches.results(batch.id)]
    assert kinds.count("succeeded") == counts.succeeded and kinds.count("canceled") == counts.canceled
    assert batch.cancel_initiated_at is not None
