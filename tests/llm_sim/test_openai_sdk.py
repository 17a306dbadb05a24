"""The official openai SDK, pointed at the simulator, completes real calls and sees real errors."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

LABEL_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["card_arrival", "cash_withdrawal", "exchange_rate"]},
        "confidence": {"type": "number"},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}


EXAMPLES = """- where is my card => card_arrival
- my card has not arrived => card_arrival
- I took cash from the machine => cash_withdrawal
- withdrawal at the atm => cash_withdrawal
- what exchange rate do you use => exchange_rate
- the rate for converting euros => exchange_rate
"""


def client(sim, **kw) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=sim.openai_base_url, api_key=kw.pop("api_key", sim.api_key), max_retries=0, **kw
    )


def test_chat_call_returns_text_and_usage(sim):
    completion = client(sim).chat.completions.create(
        model="gpt-6-luna",
        messages=[{"role": "user", "content": "My card has not arrived. It was sent two weeks ago."}],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content == "My card has not arrived."
    assert completion.usage.completion_tokens > 0
    assert completion.usage.prompt_tokens_details.cached_tokens == 0


def test_structured_output_call_conforms_to_schema(sim):
    completion = client(sim).chat.completions.create(
        model="gpt-6.2-sol",
        messages=[
            {"role": "system", "content": "Label the message.\n" + EXAMPLES},
            {"role": "user", "content": "Where is my card? Still waiting for it."},
        ],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "label", "strict": True, "schema": LABEL_SCHEMA},
        },
    )
    answer = json.loads(completion.choices[0].message.content)
    assert answer["label"] == "card_arrival"
    assert 0.0 <= answer["confidence"] <= 1.0


def test_wrong_key_raises_authentication_error(sim):
    with pytest.raises(openai.AuthenticationError) as info:
        client(sim, api_key="sk-wrong").chat.completions.create(
            model="gpt-6-luna", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 401
    assert "sk-wrong" not in str(info.value)  # a key is never echoed back
    assert info.value.body["code"] == "invalid_api_key"


def test_rate_limit_surfaces_as_rate_limit_error_with_headers(start_sim):
    sim = start_sim({"models": {"gpt-6-luna": {"limits": {"rpm": 2, "per": "minute"}}}})
    api = client(sim)
    for _ in range(2):
        api.chat.completions.create(model="gpt-6-luna", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as info:
        api.chat.completions.create(model="gpt-6-luna", messages=[{"role": "user", "content": "hi"}])
    error = info.value
    assert error.body["code"] == "rate_limit_exceeded"
    assert error.body["type"] == "requests"
    assert "on requests per min (RPM): Limit 2, Used 2, Requested 1" in error.body["message"]
    headers = error.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert headers["x-request-id"].startswith("req_")


def test_batch_round_trip_through_files_and_batches(start_sim):
    sim = start_sim({"batch": {"complete_after_s": 0.5}})
    api = client(sim)
    rows = [
        {
            "custom_id": f"item-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-6-luna",
                "messages": [{"role": "system", "content": EXAMPLES}, {"role": "user", "content": text}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "label", "strict": True, "schema": LABEL_SCHEMA},
                },
            },
        }
        for i, text in enumerate(
            ["where is my card", "cash machine took my money [[poison]]", "exchange rate today"]
        )
    ]
    payload = "".join(json.dumps(r) + "\n" for r in rows).encode()
    uploaded = api.files.create(file=("input.jsonl", io.BytesIO(payload)), purpose="batch")
    assert uploaded.bytes == len(payload)
    batch = api.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "in_progress"
    deadline = time.monotonic() + 15
    while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.1)
        batch = api.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        3,
        2,
        1,
    )
    outputs = [json.loads(line) for line in api.files.content(batch.output_file_id).text.splitlines()]
    errors = [json.loads(line) for line in api.files.content(batch.error_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in outputs) == ["item-0", "item-2"]
    assert all(o["response"]["status_code"] == 200 for o in outputs)
    labels = {
        o["custom_id"]: json.loads(o["response"]["body"]["choices"][0]["message"]["content"])["label"]
        for o in outputs
    }
    assert labels == {"item-0": "card_arrival", "item-2": "exchange_rate"}
    assert [e["custom_id"] for e in errors] == ["item-1"]
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["code"] == "invalid_prompt"
    stats = sim.stats()
    assert stats["batches"]["lines_billed"] == 2
    assert stats["batches"]["completed"] == 1


def test_batch_cancel_keeps_partial_results(start_sim):
    sim = start_sim({"batch": {"complete_after_s": 2.0}})
    api = client(sim)
    rows = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-6-luna",
                "messages": [{"role": "user", "content": f"question number {i}"}],
            },
        }
        for i in range(20)
    ]
    uploaded = api.files.create(
        file=("in.jsonl", io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())), purpose="batch"
    )
    batch = api.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    time.sleep(1.0)
    cancelled = api.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    deadline = time.monotonic() + 10
    while cancelled.status != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.05)
        cancelled = api.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled"
    done = cancelled.request_counts.completed
    assert 0 < done < 20
    outputs = api.files.content(cancelled.output_file_id).text.splitlines()
    assert len(outputs) == done
    errors = [json.loads(line) for line in api.files.content(cancelled.error_file_id).text.splitlines()]
    assert len(errors) == 20 - done
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert sim.stats()["batches"]["lines_billed"] == done
