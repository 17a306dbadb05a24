"""Small wire-level facts: token counting, Go durations, dropped connections, models, batch expiry."""

from __future__ import annotations

import io
import json
import time

import httpx
import openai
import pytest

from llm_sim.rate_limits import go_duration
from llm_sim.tokens import count_tokens, truncate_to_tokens


def test_count_tokens_charges_a_quarter_token_per_character_of_each_word():
    assert count_tokens("") == 0
    assert count_tokens("hi") == 1
    assert count_tokens("hello, world!") == 2 + 1 + 2 + 1
    assert count_tokens("internationalization") == 5
    assert truncate_to_tokens("hello, world!", 3) == "hello,"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.04, "40ms"), (1, "1s"), (1.2, "1.2s"), (360, "6m0s"), (3600, "1h0m0s")],
)
def test_reset_headers_use_go_durations(seconds, text):
    assert go_duration(seconds) == text


def test_drop_fault_cuts_the_connection_mid_response(start_sim):
    sim = start_sim({"faults": {"drop": 1.0}})
    with pytest.raises(httpx.TransportError):
        httpx.post(
            sim.base_url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {sim.api_key}"},
            json={"model": "gpt-6-luna", "messages": [{"role": "user", "content": "hi"}]},
        )
    api = openai.OpenAI(base_url=sim.openai_base_url, api_key=sim.api_key, max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        api.chat.completions.create(model="gpt-6-luna", messages=[{"role": "user", "content": "hi"}])
    assert sim.stats()["by_status"] == {"dropped": 2}
    assert "DropConnection" not in sim.server_log()


def test_models_list_in_each_providers_shape(sim):
    openai_list = openai.OpenAI(base_url=sim.openai_base_url, api_key=sim.api_key).models.list()
    assert {m.id for m in openai_list} >= {
        "gpt-6-luna",
        "gpt-6.2-sol",
        "claude-haiku-5-5",
        "claude-sonnet-5-5",
    }
    anthropic_list = httpx.get(
        sim.base_url + "/v1/models", headers={"x-api-key": sim.api_key, "anthropic-version": "2023-06-01"}
    ).json()
    assert [m["id"] for m in anthropic_list["data"]] == ["claude-haiku-5-5", "claude-sonnet-5-5"]


def test_unknown_model_gets_each_providers_404(sim):
    openai_response = httpx.post(
        sim.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {sim.api_key}"},
        json={"model": "claude-haiku-5-5", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert openai_response.status_code == 404 and openai_response.json()["error"]["code"] == "model_not_found"
    anthropic_response = httpx.post(
        sim.base_url + "/v1/messages",
        headers={"x-api-key": sim.api_key, "anthropic-version": "2023-06-01"},
        json={"model": "gpt-6-luna", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert anthropic_response.status_code == 404
    assert anthropic_response.json()["error"]["type"] == "not_found_error"


def test_reset_zeroes_the_ledger_and_keeps_faults_unless_asked(sim):
    sim.set_faults(server_error=0.5)
    httpx.post(
        sim.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {sim.api_key}"},
        json={"model": "gpt-6-luna", "messages": [{"role": "user", "content": "hi"}]},
    )
    sim.reset()
    assert sim.stats()["requests_total"] == 0 and sim.requests() == []
    assert httpx.get(sim.base_url + "/_sim/faults").json()["server_error"] == 0.5
    sim.reset(faults=True)
    assert "server_error" not in httpx.get(sim.base_url + "/_sim/faults").json()


def test_expired_batch_keeps_finished_lines_and_expires_the_rest(start_sim):
    sim = start_sim({"batch": {"complete_after_s": 0.6, "expire": True}})
    api = openai.OpenAI(base_url=sim.openai_base_url, api_key=sim.api_key, max_retries=0)
    rows = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-6-luna", "messages": [{"role": "user", "content": f"q{i}"}]},
        }
        for i in range(10)
    ]
    uploaded = api.files.create(
        file=("in.jsonl", io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())), purpose="batch"
    )
    batch = api.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 10
    while batch.status == "in_progress" and time.monotonic() < deadline:
        time.sleep(0.05)
        batch = api.batches.retrieve(batch.id)
    assert batch.status == "expired"
    done = batch.request_counts.completed
    assert 0 < done < 10
    errors = [json.loads(line) for line in api.files.content(batch.error_file_id).text.splitlines()]
    assert len(errors) == 10 - done
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert sim.stats()["batches"]["expired"] == 1


def test_invalid_batch_input_fails_the_batch_with_line_errors(sim):
    api = openai.OpenAI(base_url=sim.openai_base_url, api_key=sim.api_key, max_retries=0)
    line = {
        "custom_id": "same",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-6-luna", "messages": [{"role": "user", "content": "x"}]},
    }
    payload = (json.dumps(line) + "\n" + json.dumps(line) + "\nnot json\n").encode()
    uploaded = api.files.create(file=("in.jsonl", io.BytesIO(payload)), purpose="batch")
    batch = api.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "failed"
    assert [(e.code, e.line) for e in batch.errors.data] == [
        ("duplicate_custom_id", 2),
        ("invalid_json_line", 3),
    ]


def test_latency_model_delays_responses_by_at_least_base_plus_per_token(start_sim):
    sim = start_sim({"latency": {"base_ms": 150, "per_output_token_ms": 10, "jitter_ms": 20}})
    started = time.monotonic()
    response = httpx.post(
        sim.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {sim.api_key}"},
        json={"model": "gpt-6-luna", "messages": [{"role": "user", "content": "Where is my card?"}]},
    )
    elapsed = time.monotonic() - started
    # A lower bound only: a loaded machine may be slower, never faster.
    assert elapsed >= 0.150 + 0.010 * response.json()["usage"]["completion_tokens"]


def test_start_sim_reports_the_servers_own_error_for_a_bad_config(start_sim):
    with pytest.raises(RuntimeError, match="unknown config keys"):
        start_sim({"modles": {}})
