"""Helpers shared by the LLM resource tests (not a test module)."""

from __future__ import annotations

from typing import Any

from resources.llm import LLMResource

LABELS = ["card_arrival", "lost_or_stolen_card", "refund_not_showing_up", "exchange_rate", "top_up_failed"]
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": LABELS}, "confidence": {"type": "number"}},
    "required": ["label", "confidence"],
    "additionalProperties": False,
}
EXAMPLES = [
    "where is my new card => card_arrival",
    "my card was stolen yesterday => lost_or_stolen_card",
    "the refund is still not in my account => refund_not_showing_up",
    "what rate do you use for euros => exchange_rate",
    "my top up did not go through => top_up_failed",
]
SHORT_SYSTEM = "Classify the bank customer's message into one intent.\n" + "\n".join(
    f"- {e}" for e in EXAMPLES
)
# At least 1024 tokens so both providers cache the shared prefix.
LONG_SYSTEM = (
    SHORT_SYSTEM + "\nPolicy notes: " + " ".join(f"rule{i} applies to every ticket" for i in range(450))
)


def texts(n: int, seed: int = 0) -> list[str]:
    base = [
        "I am still waiting for my card",
        "someone took my card",
        "refund missing from statement",
        "euro exchange rate please",
        "top up failed again",
    ]
    return [f"{base[(i + seed) % len(base)]} (ticket {seed}-{i})" for i in range(n)]


def make_resource(sim: Any, provider: str = "openai", **overrides: Any) -> LLMResource:
    model = "gpt-6-luna" if provider == "openai" else "claude-haiku-5-5"
    base_url = sim.base_url + "/v1" if provider == "openai" else sim.base_url
    settings: dict[str, Any] = dict(
        provider=provider,
        base_url=base_url,
        api_key=sim.api_key,
        model=model,
        max_output_tokens=64,
        timeout_s=30,
        max_concurrency=8,
        progress_interval_s=3600,
    )
    settings.update(overrides)
    return LLMResource(**settings)


def run_in_child(
    config: dict[str, Any], items: list[tuple[str, str]], scope: tuple[str, str], start_at: float, out: Any
) -> None:
    """A separate process running one chunk (spawned by the multi-process tests). Reports what it saw."""
    import time

    from resources.llm import BudgetScope, ChunkRetryableError, JobFatalError, LLMRequest, LLMResource

    time.sleep(max(0.0, start_at - time.time()))
    resource = LLMResource(**config)
    report: dict[str, Any] = {"fatal": None, "ok": 0, "cost": 0.0, "requests": 0, "rate_limited": 0}
    try:
        outcome = resource.run_prompts(
            [LLMRequest(k, t) for k, t in items],
            system_prompt=SHORT_SYSTEM,
            schema=SCHEMA,
            schema_name="intent",
            scope=BudgetScope(*scope),
            stage="classify",
        )
    except JobFatalError as exc:
        report["fatal"] = exc.reason
        outcome = exc.outcome
    except ChunkRetryableError as exc:
        report["fatal"] = "retryable"
        outcome = exc.outcome
    if outcome is not None and outcome.summary is not None:
        s = outcome.summary
        report.update(ok=s.items_succeeded, cost=s.cost_usd, requests=s.requests, rate_limited=s.rate_limited)
    out.put(report)


def run_children(
    configs: list[dict[str, Any]], item_sets: list[list[tuple[str, str]]], scopes: list[tuple[str, str]]
) -> list[dict]:
    import multiprocessing as mp
    import time

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 4.0  # every child has imported dagster before the first request
    procs = [
        ctx.Process(target=run_in_child, args=(c, i, s, start_at, queue))
        for c, i, s in zip(configs, item_sets, scopes, strict=True)
    ]
    for p in procs:
        p.start()
    reports = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return reports
