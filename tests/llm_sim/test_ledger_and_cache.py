"""Billing reconciles with usage x price (cached and batch discounts included) and caching follows each
provider's reporting rules. Prices are restated here from the brief, on purpose: the test pins them."""

from __future__ import annotations

import time

import httpx
import pytest

# USD per million tokens: input, cache read, cache write (5 m), output.
PRICES = {
    "gpt-6-luna": (0.10, 0.01, 0.125, 0.50),
    "gpt-6.2-sol": (2.00, 0.10, 2.50, 10.00),
    "claude-haiku-5-5": (0.10, 0.01, 0.125, 0.50),
    "claude-sonnet-5-5": (2.00, 0.20, 2.50, 10.00),
}
LONG_POLICY = (
    "Policy clause: refunds need a receipt, cards ship in five days, and fees are listed online. " * 110
)


def openai_cost(model: str, usage: dict, bills_cache_write: bool = False, multiplier: float = 1.0) -> float:
    price_in, price_read, price_write, price_out = PRICES[model]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    written = usage["prompt_tokens_details"].get("cache_write_tokens", 0) if bills_cache_write else 0
    uncached = usage["prompt_tokens"] - cached - written
    return (
        (
            uncached * price_in
            + cached * price_read
            + written * price_write
            + usage["completion_tokens"] * price_out
        )
        * multiplier
        / 1e6
    )


def anthropic_cost(model: str, usage: dict, multiplier: float = 1.0) -> float:
    price_in, price_read, price_write, price_out = PRICES[model]
    return (
        (
            usage["input_tokens"] * price_in
            + usage["cache_read_input_tokens"] * price_read
            + usage["cache_creation_input_tokens"] * price_write
            + usage["output_tokens"] * price_out
        )
        * multiplier
        / 1e6
    )


def openai_chat(
    client: httpx.Client, model: str, user: str, system: str | None = None, **extra
) -> httpx.Response:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    return client.post("/v1/chat/completions", json={"model": model, "messages": messages, **extra})


def anthropic_message(
    client: httpx.Client, model: str, user: str, system: list | None = None
) -> httpx.Response:
    body = {"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": user}]}
    if system:
        body["system"] = system
    return client.post("/v1/messages", json=body)


@pytest.fixture
def clients(sim):
    openai_client = httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {sim.api_key}"})
    anthropic_client = httpx.Client(
        base_url=sim.base_url, headers={"x-api-key": sim.api_key, "anthropic-version": "2023-06-01"}
    )
    yield openai_client, anthropic_client
    openai_client.close()
    anthropic_client.close()


def test_openai_caches_longest_seen_prefix_in_128_token_steps_inside_prompt_tokens(sim, clients):
    client, _ = clients
    first = openai_chat(client, "gpt-6-luna", "Where is my card?", system=LONG_POLICY).json()["usage"]
    second = openai_chat(client, "gpt-6-luna", "What fees apply?", system=LONG_POLICY).json()["usage"]
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 1024 and cached % 128 == 0
    assert cached <= second["prompt_tokens"] < cached + 128 + 20  # everything but the differing tail
    assert "cache_write_tokens" not in second["prompt_tokens_details"]
    other_model = openai_chat(client, "gpt-6.2-sol", "Where is my card?", system=LONG_POLICY).json()["usage"]
    assert other_model["prompt_tokens_details"]["cached_tokens"] == 0


def test_short_prefixes_are_never_cached(sim, clients):
    client, anthropic_client = clients
    for _ in range(2):
        usage = openai_chat(client, "gpt-6-luna", "Where is my card?", system="Short policy.").json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    system = [{"type": "text", "text": "Short policy.", "cache_control": {"type": "ephemeral"}}]
    for _ in range(2):
        usage = anthropic_message(anthropic_client, "claude-haiku-5-5", "hi", system).json()["usage"]
    assert usage["cache_read_input_tokens"] == usage["cache_creation_input_tokens"] == 0


def test_anthropic_caches_at_cache_control_breakpoints_apart_from_input_tokens(sim, clients):
    _, client = clients
    system = [
        {"type": "text", "text": LONG_POLICY, "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Answer in one sentence."},
    ]
    first = anthropic_message(client, "claude-sonnet-5-5", "Where is my card?", system).json()["usage"]
    second = anthropic_message(client, "claude-sonnet-5-5", "What fees apply?", system).json()["usage"]
    prefix = first["cache_creation_input_tokens"]
    assert prefix >= 1024 and first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == prefix and second["cache_creation_input_tokens"] == 0
    # input_tokens is only the part after the breakpoint: the second block and the user turn.
    assert 0 < second["input_tokens"] < 40
    no_breakpoint = [{"type": "text", "text": LONG_POLICY}]
    plain = anthropic_message(client, "claude-sonnet-5-5", "Where is my card?", no_breakpoint).json()["usage"]
    assert plain["cache_read_input_tokens"] == plain["cache_creation_input_tokens"] == 0
    assert plain["input_tokens"] > 1024


def test_cache_entries_expire_after_ttl(start_sim):
    sim = start_sim({"cache": {"ttl_s": 0.3}})
    with httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {sim.api_key}"}) as client:
        openai_chat(client, "gpt-6-luna", "one", system=LONG_POLICY)
        warm = openai_chat(client, "gpt-6-luna", "two", system=LONG_POLICY).json()["usage"]
        time.sleep(0.5)
        cold = openai_chat(client, "gpt-6-luna", "three", system=LONG_POLICY).json()["usage"]
    assert warm["prompt_tokens_details"]["cached_tokens"] > 0
    assert cold["prompt_tokens_details"]["cached_tokens"] == 0


def test_openai_models_that_bill_cache_writes_report_them(start_sim):
    sim = start_sim({"models": {"gpt-6-luna": {"bills_cache_write": True}}})
    with httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {sim.api_key}"}) as client:
        first = openai_chat(client, "gpt-6-luna", "one", system=LONG_POLICY).json()["usage"]
        second = openai_chat(client, "gpt-6-luna", "two", system=LONG_POLICY).json()["usage"]
    written = first["prompt_tokens_details"]["cache_write_tokens"]
    assert written >= 1024 and written % 128 == 0
    assert second["prompt_tokens_details"]["cache_write_tokens"] == 0
    expected = openai_cost("gpt-6-luna", first, True) + openai_cost("gpt-6-luna", second, True)
    assert sim.stats()["billed_usd"] == pytest.approx(expected, rel=1e-12)
    assert sim.stats()["tokens"]["cache_write"] == written


def test_billed_usd_equals_usage_times_price_for_both_providers(sim, clients):
    openai_client, anthropic_client = clients
    expected = 0.0
    cached_seen = 0
    anthropic_system = [{"type": "text", "text": LONG_POLICY, "cache_control": {"type": "ephemeral"}}]
    for i in range(6):
        for model in ("gpt-6-luna", "gpt-6.2-sol"):
            usage = openai_chat(
                openai_client, model, f"Question {i} about my card", system=LONG_POLICY
            ).json()["usage"]
            expected += openai_cost(model, usage)
            cached_seen += usage["prompt_tokens_details"]["cached_tokens"]
        for model in ("claude-haiku-5-5", "claude-sonnet-5-5"):
            usage = anthropic_message(anthropic_client, model, f"Question {i}", anthropic_system).json()[
                "usage"
            ]
            expected += anthropic_cost(model, usage)
            cached_seen += usage["cache_read_input_tokens"]
    # Failures are not billed: a poisoned item, an injected 500, a 404 model, a wrong key.
    assert openai_chat(openai_client, "gpt-6-luna", "bad [[poison]]").status_code == 400
    assert anthropic_message(anthropic_client, "claude-haiku-5-5", "bad [[poison]]").status_code == 400
    assert openai_chat(openai_client, "gpt-9", "hi").status_code == 404
    sim.set_faults(server_error=1.0)
    assert openai_chat(openai_client, "gpt-6-luna", "hi").status_code == 500
    sim.set_faults(server_error=0.0)
    stats = sim.stats()
    assert cached_seen > 0
    assert stats["billed_usd"] == pytest.approx(expected, rel=1e-12)
    assert round(stats["billed_usd"], 2) == round(expected, 2)
    assert stats["requests_total"] == 24 + 4
    assert stats["requests_billed"] == 24
    assert stats["by_status"] == {"200": 24, "400": 2, "404": 1, "500": 1}
    assert sum(m["billed_usd"] for m in stats["by_model"].values()) == pytest.approx(expected, rel=1e-12)
    assert stats["tokens"]["cached_input"] == cached_seen
    log = sim.requests()
    assert sum(r["billed_usd"] for r in log) == pytest.approx(expected, rel=1e-12)
    assert all(r["billed_usd"] == 0 for r in log if r["status"] != "200")


def test_batch_lines_are_billed_at_half_price(start_sim):
    sim = start_sim({"batch": {"complete_after_s": 0.2}})
    headers = {"x-api-key": sim.api_key, "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=sim.base_url, headers=headers) as client:
        requests = [
            {
                "custom_id": f"r{i}",
                "params": {
                    "model": "claude-sonnet-5-5",
                    "max_tokens": 100,
                    "messages": [{"role": "user", "content": f"Card {i} is lost. Please block it."}],
                },
            }
            for i in range(5)
        ] + [
            {
                "custom_id": "bad",
                "params": {
                    "model": "claude-sonnet-5-5",
                    "max_tokens": 100,
                    "messages": [{"role": "user", "content": "[[poison]]"}],
                },
            }
        ]
        batch = client.post("/v1/messages/batches", json={"requests": requests}).json()
        deadline = time.monotonic() + 10
        while batch["processing_status"] != "ended" and time.monotonic() < deadline:
            time.sleep(0.05)
            batch = client.get(f"/v1/messages/batches/{batch['id']}").json()
        results = [
            httpx.Response(200, content=line).json()
            for line in client.get(batch["results_url"]).text.splitlines()
        ]
    succeeded = [r for r in results if r["result"]["type"] == "succeeded"]
    errored = [r for r in results if r["result"]["type"] == "errored"]
    assert len(succeeded) == 5 and [r["custom_id"] for r in errored] == ["bad"]
    assert errored[0]["result"]["error"]["error"]["type"] == "invalid_request_error"
    expected = sum(
        anthropic_cost("claude-sonnet-5-5", r["result"]["message"]["usage"], 0.5) for r in succeeded
    )
    stats = sim.stats()
    assert stats["billed_usd"] == pytest.approx(expected, rel=1e-12)
    assert stats["billed_usd_batch"] == stats["billed_usd"]
    assert stats["batches"]["lines_billed"] == 5
