"""Exact cost against the simulator's ledger (cached prompts, both providers), usage metadata, and the
structured-output modes OpenAI-compatible servers differ on."""

from __future__ import annotations

import dagster as dg
import pytest
from llm_support import LABELS, LONG_SYSTEM, SCHEMA, SHORT_SYSTEM, make_resource, texts

from resources.llm import BudgetScope, LLMRequest
from resources.llm.tokens import estimate_prompt_tokens


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_total_cost_equals_the_simulator_ledger_to_the_cent_with_cached_prompts(
    start_sim, tmp_path, provider
):
    # Sonnet/sol prices so the totals are dollars, not fractions of a cent.
    model = "gpt-6.2-sol" if provider == "openai" else "claude-sonnet-5-5"
    sim = start_sim({})
    resource = make_resource(sim, provider, model=model, state_dir=str(tmp_path), budget_run_usd=50.0)
    assert estimate_prompt_tokens([LONG_SYSTEM, "x"]) >= 1024
    items = [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(120))]
    outcome = resource.run_prompts(
        items,
        system_prompt=LONG_SYSTEM,
        schema=SCHEMA,
        schema_name="intent",
        scope=BudgetScope("r", "d"),
        stage="classify",
    )
    stats = sim.stats()
    summary = outcome.summary
    assert summary.cached_input_tokens > 0, "the shared prefix was cached"
    assert summary.cache_savings_usd > 0
    assert round(summary.cost_usd, 2) == round(stats["billed_usd"], 2)
    assert summary.cost_usd == pytest.approx(stats["billed_usd"], rel=1e-9)
    assert sum(r.usage.cost_usd for r in outcome.results) == pytest.approx(summary.cost_usd, rel=1e-9)
    assert summary.cached_input_tokens == stats["tokens"]["cached_input"]
    assert summary.output_tokens == stats["tokens"]["output"]
    # the budget ledger recorded the same spend
    assert resource._shared_store().spend("run:r")[0] == pytest.approx(stats["billed_usd"], rel=1e-9)


def test_usage_summary_is_ready_for_materialize_result(start_sim, tmp_path):
    sim = start_sim({})
    outcome = make_resource(sim, state_dir=str(tmp_path)).run_prompts(
        [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(10))],
        system_prompt=SHORT_SYSTEM,
        schema=SCHEMA,
        schema_name="intent",
        scope=BudgetScope("r", "d"),
        stage="classify",
    )
    meta = outcome.summary.to_metadata()
    for key in (
        "cost_usd",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "requests",
        "retries",
        "rate_limited",
        "items_succeeded",
        "items_failed",
        "cost_per_item_usd",
        "duration_s",
        "latency_p50_s",
        "latency_p95_s",
    ):
        assert isinstance(meta[key], (dg.FloatMetadataValue, dg.IntMetadataValue)), key
    assert meta["items_succeeded"].value == 10 and meta["model"].value == "gpt-6-luna"
    dg.MaterializeResult(metadata=meta)  # accepted as is
    row = outcome.results[0].usage
    assert row.stage == "classify" and row.attempts == 1 and row.cost_usd > 0 and row.mode == "online"


@pytest.mark.parametrize(
    ("provider", "mode"), [("openai", "json_object"), ("openai", "prompt"), ("anthropic", "prompt")]
)
def test_structured_output_modes_work_against_the_simulator(start_sim, tmp_path, provider, mode):
    sim = start_sim({})
    resource = make_resource(sim, provider, structured_output=mode, state_dir=str(tmp_path))
    outcome = resource.run_prompts(
        [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(10))],
        system_prompt=SHORT_SYSTEM,
        schema=SCHEMA,
        schema_name="intent",
        scope=BudgetScope("r", "d"),
        stage="classify",
    )
    assert outcome.summary.items_succeeded == 10
    assert all(r.output["label"] in LABELS for r in outcome.results)


def test_length_finish_with_valid_content_is_a_success_and_no_schema_gives_text(start_sim, tmp_path):
    sim = start_sim({})
    free_text = make_resource(sim, state_dir=str(tmp_path), max_output_tokens=3).run_prompts(
        [LLMRequest("a", "Please tell me where my new card is, it was ordered last week")],
        system_prompt="Answer.",
        schema=None,
        schema_name="text",
        scope=BudgetScope("r", "d"),
        stage="enrich",
    )
    (result,) = free_text.results
    assert result.ok and result.finish_reason == "length" and isinstance(result.output["text"], str)
    # a schema whose answer fits exactly: valid JSON, finished early or not, it is accepted when it validates
    tiny = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    outcome = make_resource(sim, state_dir=str(tmp_path), max_output_tokens=64).run_prompts(
        [LLMRequest("b", "yes")],
        system_prompt="Answer.",
        schema=tiny,
        schema_name="tiny",
        scope=BudgetScope("r", "d"),
        stage="enrich",
    )
    assert outcome.results[0].ok
