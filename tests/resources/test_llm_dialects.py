"""OpenAI-compatible servers nobody here wrote, from configuration alone: each dialect's output cap and
structured-output mode, a server that ignores the cap, errors that mean "fix the configuration", replies cut at the
cap, slow and hanging servers, normalisation a grammar cannot do, and a clean stop on SIGTERM. All against the
simulator's server dialects (llm_sim/server_dialect.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from llm_support import SCHEMA, SHORT_SYSTEM, make_resource, texts

from io_managers.parquet_files import write_parquet_atomic
from llm_assets.failure_class import FailureClass, run_failure_class
from resources.dead_letters import DeadLetter, DeadLetterStore
from resources.llm import BudgetScope, ChunkRetryableError, JobFatalError, LLMRequest, LLMResource
from resources.llm.normalize import apply_rules, check_rules
from resources.llm.providers import DIALECTS, OpenAIChat
from resources.llm.structured import parse_json_object
from resources.llm.tokens import estimate_prompt_tokens
from resources.llm.types import LAST_REPLY_MAX_CHARS, clip_reply

LLAMACPP = {"server": {"dialect": "llamacpp", "record_bodies": True}}
BOUNDED = {
    "type": "object",
    "properties": {
        "label": SCHEMA["properties"]["label"],
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}


def _run(resource, items, schema=SCHEMA, scope=("run", "ds"), **kwargs):
    return resource.run_prompts(
        items,
        system_prompt=SHORT_SYSTEM,
        schema=schema,
        schema_name="intent",
        scope=BudgetScope(*scope),
        stage="classify",
        **kwargs,
    )


def _items(n: int, seed: int = 0) -> list[LLMRequest]:
    return [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(n, seed))]


# -- 1. dialects ---------------------------------------------------------------------------------------------


def test_each_dialect_sends_the_output_cap_and_structured_output_its_server_reads(start_sim, tmp_path):
    sim = start_sim({"server": {"record_bodies": True}})
    expected_cap = {
        "openai": {"max_completion_tokens"},
        "llamacpp": {"max_tokens"},
        "vllm": {"max_tokens"},
        "ollama": {"max_tokens"},
        "litellm": {"max_tokens"},
        "openai_compatible": {"max_tokens", "max_completion_tokens"},
    }
    assert set(expected_cap) == set(DIALECTS)
    for dialect, caps in expected_cap.items():
        sim.reset()
        outcome = _run(make_resource(sim, dialect=dialect, state_dir=str(tmp_path)), _items(1))
        assert outcome.summary.items_succeeded == 1
        (body,) = sim.bodies()
        assert {k for k in body if k.startswith("max_")} == caps, dialect
        assert all(body[k] == 64 for k in caps)
        kind = body["response_format"]["type"]
        assert kind == ("json_object" if dialect == "llamacpp" else "json_schema"), dialect
        if kind == "json_object":  # llama-cpp-python's own shape: the schema beside the type
            assert body["response_format"]["schema"] == SCHEMA
    # the user's structured_output wins over the dialect's
    sim.reset()
    _run(
        make_resource(sim, dialect="llamacpp", structured_output="prompt", state_dir=str(tmp_path)), _items(1)
    )
    assert "response_format" not in sim.bodies()[0]


def test_llamacpp_gets_the_schema_without_string_lengths_and_replies_are_still_held_to_them(
    start_sim, tmp_path
):
    # llama.cpp compiles maxLength into nested grammar rules; at 1200 its grammar parser refused it and
    # llama-cpp-python 0.3.36's server died (tests/real_server, reviews' reply body): it gets no length bounds.
    short = {
        "type": "object",
        "properties": {"label": {"type": "string", "maxLength": 3, "minLength": 1}},
        "required": ["label"],
        "additionalProperties": False,
    }
    sim = start_sim(LLAMACPP)
    outcome = _run(make_resource(sim, dialect="llamacpp", state_dir=str(tmp_path)), _items(1), schema=short)
    sent = sim.bodies()[0]["response_format"]["schema"]
    assert sent["properties"]["label"] == {"type": "string"}
    # the simulator answers an intent label longer than 3 characters: validation (not the grammar) catches it
    (result,) = outcome.results
    assert not result.ok and result.error_class == "schema_invalid"
    assert "$.label: longer than 3 characters" in result.error_message
    assert len(sim.bodies()) == 2  # the one repair, which quotes the violation
    # other dialects keep the full schema for the server
    vllm = start_sim({"server": {"record_bodies": True}})
    _run(make_resource(vllm, dialect="vllm", state_dir=str(tmp_path / "vllm")), _items(1), schema=short)
    assert vllm.bodies()[0]["response_format"]["json_schema"]["schema"] == short


def test_dialect_defaults_and_bad_names():
    local = LLMResource(model="m", api_key="k", dialect="llamacpp")
    assert (local.effective_max_concurrency(), local.effective_structured_output()) == (1, "json_object")
    cloud = LLMResource(model="m", api_key="k")
    assert (cloud.effective_max_concurrency(), cloud.effective_structured_output()) == (32, "json_schema")
    with pytest.raises(ValueError, match="unknown dialect 'llama'"):
        LLMResource(model="m", api_key="k", dialect="llama")._validate()
    with pytest.raises(ValueError, match="provider 'openai' only"):
        LLMResource(model="m", api_key="k", provider="anthropic", dialect="vllm")._validate()


def test_a_server_that_ignores_the_cap_is_named_on_its_first_reply_and_charged_in_full(start_sim, tmp_path):
    sim = start_sim(
        LLAMACPP
    )  # reads max_tokens only: a max_completion_tokens request writes to the context limit
    resource = make_resource(
        sim, structured_output="json_object", max_concurrency=1, budget_run_usd=1.0, state_dir=str(tmp_path)
    )
    with pytest.raises(JobFatalError) as info:
        _run(resource, _items(5), scope=("r-cap", "d"))
    log = sim.requests()
    assert len(log) == 1, "detected on the first reply"
    out = log[0]["output_tokens"]
    assert out > 64
    message = info.value.description
    assert info.value.reason == "config"
    assert f"the server at {sim.base_url}/v1 ignored the output cap: {out} output tokens > max 64" in message
    assert "set dialect: llamacpp (sends max_tokens)" in message
    assert "above the" in message and "charged in full" in message
    # the reply above its reservation is charged in full in the budget store and the spend ledger
    billed = sim.stats()["billed_usd"]
    assert resource._shared_store().spend("run:r-cap")[0] == pytest.approx(billed, rel=1e-9)
    assert resource.spend_ledger().billed_usd() == pytest.approx(billed, rel=1e-9)

    # configured as what it is, the same server honours the cap on every request
    sim.reset()
    fixed = make_resource(sim, dialect="llamacpp", state_dir=str(tmp_path / "fixed"))
    outcome = _run(fixed, _items(8))
    assert outcome.summary.items_succeeded == 8
    assert all(r["output_tokens"] <= 64 for r in sim.requests())


# -- 4. errors that mean "fix the configuration" -------------------------------------------------------------


def test_json_schema_refused_with_http_500_is_job_fatal_after_at_most_the_requests_in_flight(
    start_sim, tmp_path
):
    sim = start_sim(LLAMACPP)
    resource = make_resource(
        sim, dialect="llamacpp", structured_output="json_schema", max_concurrency=4, state_dir=str(tmp_path)
    )
    with pytest.raises(JobFatalError) as info:
        _run(resource, _items(40))
    assert info.value.reason == "config" and info.value.allow_retries is False
    assert "Input should be 'text' or 'json_object'" in info.value.description
    assert "setting `structured_output`" in info.value.description
    log = sim.requests()
    assert 1 <= len(log) <= 4 and {r["status"] for r in log} == {"500"}
    assert info.value.outcome.summary.retries == 0


def test_an_unknown_model_is_job_fatal_naming_the_model_setting(start_sim, tmp_path):
    sim = start_sim({})
    resource = make_resource(
        sim, model="gemma-3-270m", allow_unpriced_model=True, max_concurrency=3, state_dir=str(tmp_path)
    )
    with pytest.raises(JobFatalError) as info:
        _run(resource, _items(30))
    assert info.value.reason == "config" and "setting `model`" in info.value.description
    assert len(sim.requests()) <= 3 and info.value.outcome.summary.retries == 0


def test_a_missing_price_fails_the_step_as_job_fatal_without_a_retry(tmp_path):
    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=3))
    def classified(llm: LLMResource) -> None:
        _run(llm, _items(1))

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [classified],
        resources={"llm": LLMResource(model="my-local-llama", api_key="k", state_dir=str(tmp_path))},
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    assert run_failure_class(instance, result.run_id) is FailureClass.JOB_FATAL
    kinds = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in kinds and kinds.count("STEP_FAILURE") == 1
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "`allow_unpriced: true`" in failure.step_failure_data.error.message


# -- 5. replies cut at the cap, normalisation, the repair prompt -----------------------------------------------


def test_a_reply_cut_at_the_cap_is_a_truncated_dead_letter_keeping_the_reply(start_sim, tmp_path):
    sim = start_sim({})
    resource = make_resource(sim, max_output_tokens=5, state_dir=str(tmp_path))
    (result,) = _run(resource, _items(1)).results
    assert not result.ok and result.error_class == "truncated" and result.attempts == 2
    assert "output cap of 5 tokens" in result.error_message
    assert result.last_reply.startswith("{") and parse_json_object(result.last_reply)[0] is None
    assert [r["status"] for r in sim.requests()] == ["200", "200"]


def test_a_repair_that_overflows_the_context_keeps_the_cause_truncated(start_sim, tmp_path):
    wire = OpenAIChat(DIALECTS["llamacpp"]).build(
        model="gpt-6-luna",
        system_prompt=SHORT_SYSTEM,
        user_text=texts(1)[0],
        schema=SCHEMA,
        schema_name="intent",
        max_output_tokens=5,
        structured_output="json_object",
        repair=None,
    )
    prompt = estimate_prompt_tokens(wire.message_texts, wire.schema_param)
    sim = start_sim({"server": {"dialect": "llamacpp", "context_tokens": prompt + 20}})
    resource = make_resource(sim, dialect="llamacpp", max_output_tokens=5, state_dir=str(tmp_path))
    (result,) = _run(resource, _items(1)).results
    assert result.error_class == "truncated", result.error_message
    assert "did not fit the model's context" in result.error_message and result.last_reply
    assert [r["status"] for r in sim.requests()] == ["200", "400"]

    # told the context size (or having learnt it), the engine does not send a repair that cannot fit
    sim.reset()
    told = make_resource(
        sim, dialect="llamacpp", max_output_tokens=5, context_tokens=prompt + 20, state_dir=str(tmp_path)
    )
    (result,) = _run(told, _items(1)).results
    assert result.error_class == "truncated" and "no repair" in result.error_message
    assert [r["status"] for r in sim.requests()] == ["200"]


def test_normalisation_fixes_what_the_grammar_cannot_and_records_every_change(start_sim, tmp_path):
    sim = start_sim({"server": {"percent_numbers": True, "record_bodies": True}})  # answers 85, not 0.85
    plain = _run(make_resource(sim, state_dir=str(tmp_path)), _items(2), schema=BOUNDED)
    assert {r.error_class for r in plain.results} == {"schema_invalid"}
    # the repair turn quotes the validator's message verbatim
    repair_turn = sim.bodies()[-1]["messages"][-1]["content"]
    assert "$.confidence: above maximum 1" in repair_turn

    sim.reset()
    outcome = _run(
        make_resource(sim, state_dir=str(tmp_path)),
        _items(6),
        schema=BOUNDED,
        normalize={"$.confidence": "percent_to_unit"},
    )
    assert outcome.summary.items_succeeded == 6 and outcome.summary.retries == 0
    for result in outcome.results:
        (note,) = result.normalized
        assert note.startswith("$.confidence: ") and note.endswith(
            f" -> {result.output['confidence']!r} (percent_to_unit)"
        )
        assert 0 <= result.output["confidence"] <= 1


def test_normalisation_rules_clamp_to_the_schema_and_are_checked_before_sending():
    schema = {
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "entities": {
                "type": "array",
                "items": {"type": "object", "properties": {"weight": {"maximum": 10}}},
            },
        },
    }
    rules = check_rules({"$.score": "clamp", "$.entities[*].weight": "clamp"}, schema)
    value = {"score": 1.7, "entities": [{"weight": 3}, {"weight": 12}, {"weight": "x"}]}
    assert apply_rules(value, rules) == [
        "$.score: 1.7 -> 1 (clamp)",
        "$.entities[1].weight: 12 -> 10 (clamp)",
    ]
    assert value == {"score": 1, "entities": [{"weight": 3}, {"weight": 10}, {"weight": "x"}]}
    with pytest.raises(ValueError, match="use one of clamp, percent_to_unit"):
        check_rules({"$.score": "round"}, schema)
    with pytest.raises(ValueError, match="not a field of the output schema"):
        check_rules({"$.missing": "clamp"}, schema)
    with pytest.raises(ValueError, match="needs a minimum or maximum"):
        check_rules(
            {"$.entities": "clamp"}, {"type": "object", "properties": {"entities": {"type": "array"}}}
        )


def test_dead_letters_keep_the_last_reply_and_old_files_still_read(tmp_path):
    store = DeadLetterStore(str(tmp_path / "dl"))
    letter = DeadLetter(
        dataset_id="ds-1",
        partition_key="ds-1__c00000",
        item_id="a",
        stage="classified",
        error_class="truncated",
        error_message="cut",
        attempts=2,
        first_attempt_at="t0",
        last_attempt_at="t1",
        model="m",
        run_id="r",
        input_text="x",
        input_json="{}",
        last_reply='{"label": "card_arr',
    )
    store.write_partition("ds-1", "ds-1__c00000", "classified", [letter])
    # a file written before last_reply existed
    old = {k: v for k, v in letter.__dict__.items() if k != "last_reply"}
    old.update(partition_key="ds-1__c00001", item_id="b")
    write_parquet_atomic(pd.DataFrame([old]), store.uri_for("ds-1", "ds-1__c00001", "classified"))
    rows = store.query("ds-1").sort_values("item_id")
    assert rows["last_reply"].tolist() == ['{"label": "card_arr', None]
    assert store.query("ds-1", "ds-1__c00001", "classified")["last_reply"].tolist() == [None]
    # a runaway reply is kept cut to a bound, saying how much was cut
    kept = clip_reply("and " * 5000)
    assert len(kept) <= LAST_REPLY_MAX_CHARS and kept.endswith("more characters]")


# -- 2 and 3. slow servers, hanging requests ------------------------------------------------------------------


@pytest.mark.slow
def test_a_slow_server_completes_without_retries_or_breaker_trips(start_sim, tmp_path):
    sim = start_sim(
        {"server": {"dialect": "llamacpp"}, "latency": {"base_ms": 1500, "per_output_token_ms": 30}}
    )
    resource = make_resource(
        sim,
        dialect="llamacpp",
        max_concurrency=1,
        min_timeout_s=1.0,
        circuit_breaker_failures=1,
        state_dir=str(tmp_path),
    )
    outcome = _run(resource, _items(3))
    summary = outcome.summary
    assert summary.items_succeeded == 3 and summary.retries == 0 and summary.timeouts == 0
    assert summary.latency_p50_s >= 1.5


@pytest.mark.slow
def test_an_item_that_keeps_timing_out_is_dead_lettered_timeout_after_the_bound(start_sim, tmp_path):
    sim = start_sim({"poison": {"[[hang]]": "timeout"}, "faults": {"hang_s": 5}})
    items = _items(6) + [LLMRequest("hang", "please [[hang]] here")]
    resource = make_resource(
        sim,
        timeout_s=1.0,
        min_timeout_s=0.2,
        max_concurrency=2,
        max_timeouts_per_item=2,
        state_dir=str(tmp_path),
    )
    outcome = _run(resource, items)
    failed = {r.key: r for r in outcome.results if not r.ok}
    assert list(failed) == ["hang"] and outcome.summary.items_succeeded == 6
    assert failed["hang"].error_class == "timeout" and failed["hang"].attempts == 2
    assert "timed out 2 times" in failed["hang"].error_message
    assert outcome.summary.timeouts == 2

    # a server that never answered anything is an outage, not the items' fault: nothing is dead-lettered
    sim.reset()
    all_hang = make_resource(
        sim,
        timeout_s=0.5,
        max_attempts=2,
        max_concurrency=2,
        circuit_breaker_failures=100,
        state_dir=str(tmp_path),
    )
    with pytest.raises(ChunkRetryableError) as info:
        _run(all_hang, [LLMRequest(f"h{i}", f"[[hang]] {i}") for i in range(2)])
    assert info.value.outcome.results == []


def test_server_slots_bound_the_requests_in_flight_across_resources(start_sim, tmp_path):
    sim = start_sim({"latency": {"base_ms": 300}})
    resource = make_resource(sim, max_concurrency=6, server_slots=2, state_dir=str(tmp_path))
    outcome = _run(resource, _items(8))
    assert outcome.summary.items_succeeded == 8
    log = sim.requests()
    # in flight over [t, t + latency]: never more than 2 at once
    edges = sorted([(r["t"], 1) for r in log] + [(r["t"] + r["latency_s"], -1) for r in log])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    assert peak <= 2
    assert resource._shared_store()._conn.execute("SELECT COUNT(*) FROM slots").fetchone()[0] == 0


# -- 4. SIGTERM ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_every_paid_reply_reaches_on_result(start_sim, tmp_path):
    sim = start_sim({"latency": {"base_ms": 1500}})
    out_file = tmp_path / "results.jsonl"
    child = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("sigterm_child.py")),
            sim.openai_base_url,
            sim.api_key,
            str(out_file),
            str(tmp_path / "state"),
            "30",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(sim.requests()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 3, stderr
    assert "stopped stopped: stage classify stopped by a signal (SIGTERM)" in stdout
    assert "Traceback" not in stderr
    recorded = [json.loads(line)["key"] for line in out_file.read_text().splitlines()]
    sent = sim.requests()
    # nothing was sent after the signal, and every request in flight finished and was handed to on_result
    assert 3 <= len(sent) < 30
    assert len(recorded) == len(set(recorded)) == len(sent)
