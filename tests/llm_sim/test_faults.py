"""Every fault kind appears at its configured rate (binomial, 4 sigma) and the poison rule is exact."""

from __future__ import annotations

import json
import math
from collections import Counter

import httpx
import pytest

from llm_sim.faults import FAULT_KINDS

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["card_arrival", "exchange_rate"]}},
    "required": ["label"],
}
OPENAI_KINDS = list(FAULT_KINDS)


def openai_call(client: httpx.Client, text: str) -> httpx.Response | None:
    body = {
        "model": "gpt-6-luna",
        "messages": [{"role": "user", "content": text}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "label", "strict": True, "schema": SCHEMA},
        },
    }
    try:
        response = client.post("/v1/chat/completions", json=body)
        response.read()
        return response
    except httpx.TransportError:
        return None


def anthropic_call(client: httpx.Client, text: str) -> httpx.Response | None:
    body = {
        "model": "claude-haiku-5-5",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": text}],
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
    }
    try:
        response = client.post("/v1/messages", json=body)
        response.read()
        return response
    except httpx.TransportError:
        return None


def content_class(text: str | None) -> str:
    try:
        value = json.loads(text or "")
    except json.JSONDecodeError:
        return "malformed_json"
    return "ok" if value.get("label") in SCHEMA["properties"]["label"]["enum"] else "schema_violation"


def classify_openai(response: httpx.Response | None) -> str:
    """What the client saw, in the words of the fault it reveals (unavailable and overloaded both are 503)."""
    if response is None:
        return "drop"
    body = response.json()
    if response.status_code == 429:
        code = body["error"]["code"]
        assert ("retry-after" in response.headers) == (code == "rate_limit_exceeded")
        return {"rate_limit_exceeded": "rate_limit", "insufficient_quota": "insufficient_quota"}[code]
    if response.status_code != 200:
        assert body["error"]["type"]
        if response.status_code == 400:
            assert body["error"]["code"] == "invalid_prompt"
        return {400: "invalid_prompt", 500: "server_error", 503: "unavailable_or_overloaded", 504: "timeout"}[
            response.status_code
        ]
    choice = body["choices"][0]
    if choice["message"]["refusal"]:
        assert choice["message"]["content"] is None
        return "refusal"
    if choice["finish_reason"] == "content_filter":
        return "content_filter"
    return content_class(choice["message"]["content"])


def classify_anthropic(response: httpx.Response | None) -> str:
    if response is None:
        return "drop"
    body = response.json()
    if response.status_code != 200:
        assert body["type"] == "error"
        kind = body["error"]["type"]
        if response.status_code == 429:
            assert kind == "rate_limit_error"
            spend = "spend limit" in body["error"]["message"]
            assert ("retry-after" in response.headers) != spend
            return "insufficient_quota" if spend else "rate_limit"
        expected_type = {
            400: "invalid_request_error",
            500: "api_error",
            503: "api_error",
            504: "timeout_error",
            529: "overloaded_error",
        }
        assert kind == expected_type[response.status_code]
        return {
            400: "invalid_prompt",
            500: "server_error",
            503: "unavailable",
            504: "timeout",
            529: "overloaded",
        }[response.status_code]
    if body["stop_reason"] == "refusal":
        return "refusal_or_content_filter"
    return content_class(body["content"][0]["text"])


def assert_binomial(count: int, n: int, rate: float, what: str) -> None:
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(count - n * rate) <= 4 * sigma + 1, (
        f"{what}: {count} of {n}, expected {n * rate:.0f} ± {4 * sigma:.0f}"
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_every_fault_kind_appears_at_its_configured_rate(start_sim, provider):
    rate = 0.06
    n = 1000
    sim = start_sim({"faults": {**dict.fromkeys(OPENAI_KINDS, rate), "hang_s": 0}, "seed": 7})
    headers = (
        {"Authorization": f"Bearer {sim.api_key}"}
        if provider == "openai"
        else {"x-api-key": sim.api_key, "anthropic-version": "2023-06-01"}
    )
    call, classify = (
        (openai_call, classify_openai) if provider == "openai" else (anthropic_call, classify_anthropic)
    )
    seen: Counter = Counter()
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=10) as client:
        for i in range(n):
            seen[classify(call(client, f"where is my card number {i}"))] += 1
    merged = {"unavailable_or_overloaded": ["unavailable", "overloaded"]} if provider == "openai" else {}
    if provider == "anthropic":
        merged["refusal_or_content_filter"] = ["refusal", "content_filter"]
    expected = {kind: rate for kind in OPENAI_KINDS}
    for name, kinds in merged.items():
        for kind in kinds:
            expected.pop(kind)
        expected[name] = rate * len(kinds)
    for kind, kind_rate in expected.items():
        assert_binomial(seen[kind], n, kind_rate, kind)
    assert_binomial(seen["ok"], n, 1 - rate * len(OPENAI_KINDS), "ok")
    # The server's own log agrees with what the client saw, and only 200s were billed.
    log = sim.requests()
    assert len(log) == n
    assert all((r["billed_usd"] > 0) == (r["status"] == "200") for r in log)
    assert sum(r["status"] == "dropped" for r in log) == seen["drop"]


def test_poison_rule_is_exact(start_sim):
    sim = start_sim({"poison": {"[[boom]]": "server_error"}})
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    texts = [f"message {i} [[poison]]" if i % 7 == 0 else f"message {i}" for i in range(60)]
    texts[5] = "message 5 [[refuse]]"
    texts[11] = "message 11 [[boom]]"
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=10) as client:
        outcomes = [classify_openai(openai_call(client, t)) for t in texts]
        # Poison is not a rate: the same item fails the same way every time.
        again = [classify_openai(openai_call(client, t)) for t in texts if "[[" in t]
    expected = [
        "invalid_prompt"
        if "[[poison]]" in t
        else "refusal"
        if "[[refuse]]" in t
        else "server_error"
        if "[[boom]]" in t
        else "ok"
        for t in texts
    ]
    assert outcomes == expected
    assert again == [e for e, t in zip(expected, texts, strict=True) if "[[" in t]


def test_poison_applies_to_any_user_message_not_to_the_system_prompt(sim):
    headers = {"x-api-key": sim.api_key, "anthropic-version": "2023-06-01"}
    base = {"model": "claude-haiku-5-5", "max_tokens": 50}
    with httpx.Client(base_url=sim.base_url, headers=headers) as client:
        in_system = client.post(
            "/v1/messages",
            json={
                **base,
                "system": "Never echo [[poison]].",
                "messages": [{"role": "user", "content": "hello"}],
            },
        )
        in_earlier_turn = client.post(
            "/v1/messages",
            json={
                **base,
                "messages": [
                    {"role": "user", "content": "[[poison]] first"},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "second"},
                ],
            },
        )
    assert in_system.status_code == 200
    assert in_earlier_turn.status_code == 400


def test_degrade_rate_flips_labels_deterministically_per_item(sim):
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    texts = [f"my card {i} has not arrived yet" for i in range(300)]
    examples = "- my card has not arrived => card_arrival\n- what is the exchange rate => exchange_rate\n"

    def label(client: httpx.Client, text: str) -> str:
        body = {
            "model": "gpt-6-luna",
            "messages": [{"role": "system", "content": examples}, {"role": "user", "content": text}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "l", "strict": True, "schema": SCHEMA},
            },
        }
        response = client.post("/v1/chat/completions", json=body)
        return json.loads(response.json()["choices"][0]["message"]["content"])["label"]

    with httpx.Client(base_url=sim.base_url, headers=headers) as client:
        clean = [label(client, t) for t in texts]
        sim.set_faults(degrade_rate=0.4)
        first = [label(client, t) for t in texts]
        second = [label(client, t) for t in texts]
    assert set(clean) == {"card_arrival"}
    assert first == second
    assert_binomial(sum(label != "card_arrival" for label in first), len(texts), 0.4, "degraded")


def test_outage_and_time_windows_fail_every_request_while_active(sim):
    headers = {"x-api-key": sim.api_key, "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=sim.base_url, headers=headers) as client:
        sim.set_faults(outage=True)
        during = [anthropic_call(client, f"item {i}").status_code for i in range(5)]
        sim.set_faults(outage=False, windows=[{"kind": "server_error", "start_s": 0, "end_s": 60}])
        in_window = [anthropic_call(client, f"item {i}").status_code for i in range(5)]
        sim.set_faults(windows=[{"kind": "server_error", "start_s": 60, "end_s": 120}])
        before_window = [anthropic_call(client, f"item {i}").status_code for i in range(5)]
    assert during == [529] * 5
    assert in_window == [500] * 5
    assert before_window == [200] * 5


def test_timeout_fault_hangs_until_the_client_gives_up(start_sim):
    sim = start_sim({"faults": {"timeout": 1.0, "hang_s": 5}})
    with (
        httpx.Client(
            base_url=sim.base_url, headers={"Authorization": f"Bearer {sim.api_key}"}, timeout=0.3
        ) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post(
            "/v1/chat/completions",
            json={"model": "gpt-6-luna", "messages": [{"role": "user", "content": "x"}]},
        )


def test_fault_settings_are_validated(sim):
    bad = httpx.post(sim.base_url + "/_sim/faults", json={"server_eror": 0.1})
    assert bad.status_code == 400 and "server_eror" in bad.json()["error"]
    too_much = httpx.post(sim.base_url + "/_sim/faults", json={"server_error": 0.7, "drop": 0.7})
    assert too_much.status_code == 400
    assert sim.set_faults(server_error=0.2)["server_error"] == 0.2
