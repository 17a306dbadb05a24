"""Records that cross module boundaries: requests in, per-item results and usage out."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from resources.llm.errors import ProviderError


@dataclass(frozen=True)
class LLMRequest:
    """One item to send. `key` is the item's idempotency key; `text` the user content; `team` who is billed
    (recorded in the spend ledger with every attempt)."""

    key: str
    text: str
    team: str = ""


@dataclass(frozen=True)
class BudgetScope:
    """Who pays: the Dagster run and the dataset (and, for the spend ledger, the chunk partition). The day
    scope is derived (UTC date) when reserving."""

    run_id: str
    dataset_id: str
    partition_key: str = ""


@dataclass
class TokenUsage:
    """Tokens one response reported. `input_tokens` is the provider-neutral total prompt size,
    INCLUDING cached reads and cache writes (Anthropic reports them apart; we add them up)."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0

    @property
    def uncached_input_tokens(self) -> int:
        return max(0, self.input_tokens - self.cached_input_tokens - self.cache_write_tokens)


@dataclass
class ItemUsage:
    """One cost-ledger row per item: the sum over ALL its attempts (retries and the repair attempt).
    Tokens in tokens, money in USD, latency in seconds (sum of attempt latencies)."""

    key: str
    provider: str
    model: str
    stage: str
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cache_savings_usd: float = 0.0
    attempts: int = 0
    latency_s: float = 0.0
    mode: str = "online"


@dataclass
class ItemResult:
    """How one item finished for good: `ok` with the parsed `output`, or an item-permanent failure
    with `error_class` ("invalid_prompt", "refusal", "content_filter", "schema_invalid", "truncated" (the reply hit
    the output cap before its JSON ended), "timeout" (timed out `max_timeouts_per_item` times), "input_too_long",
    "empty_input", "invalid_request") and a human-readable `error_message`.

    `last_reply`: a failed item's last reply from the model (content or refusal), cut to LAST_REPLY_MAX_CHARS,
    None when no reply arrived. `normalized`: what the `normalize` rules of run_prompts changed in the accepted
    output, one line each ("$.confidence: 85 -> 0.85 (percent_to_unit)"), so nothing is changed silently."""

    key: str
    ok: bool
    output: dict[str, Any] | None
    error_class: str | None
    error_message: str | None
    attempts: int
    first_attempt_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    usage: ItemUsage
    finish_reason: str | None = None
    last_reply: str | None = None
    normalized: list[str] = field(default_factory=list)


LAST_REPLY_MAX_CHARS = 2000


def clip_reply(text: str | None) -> str | None:
    """A reply as a dead letter keeps it: at most LAST_REPLY_MAX_CHARS characters, marked when cut."""
    if text is None or len(text) <= LAST_REPLY_MAX_CHARS:
        return text
    return (
        text[: LAST_REPLY_MAX_CHARS - 40] + f"... [{len(text) - LAST_REPLY_MAX_CHARS + 40:,} more characters]"
    )


@dataclass
class UsageSummary:
    """Totals for one run_prompts call. Money in USD, durations in seconds.

    `requests` counts HTTP requests sent (all attempts), `retries` the attempts beyond each item's first,
    `rate_limited` the responses that were 429 rate-limit, `timeouts` the requests cancelled at their deadline.
    `cache_savings_usd` is net of cache-write premiums.
    """

    provider: str
    model: str
    cost_usd: float = 0.0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    items_succeeded: int = 0
    items_failed: int = 0
    items_unfinished: int = 0
    duration_s: float = 0.0
    latency_p50_s: float = 0.0
    latency_p95_s: float = 0.0
    cache_savings_usd: float = 0.0
    timeouts: int = 0

    @property
    def cost_per_item_usd(self) -> float:
        done = self.items_succeeded + self.items_failed
        return self.cost_usd / done if done else 0.0

    def to_metadata(self) -> dict[str, dg.MetadataValue]:
        """Numbers the Dagster UI plots across partitions, plus the model as text."""
        floats = {
            "cost_usd": self.cost_usd,
            "cost_per_item_usd": self.cost_per_item_usd,
            "duration_s": self.duration_s,
            "latency_p50_s": self.latency_p50_s,
            "latency_p95_s": self.latency_p95_s,
            "cache_savings_usd": self.cache_savings_usd,
        }
        ints = {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "requests": self.requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "items_succeeded": self.items_succeeded,
            "items_failed": self.items_failed,
        }
        meta: dict[str, dg.MetadataValue] = {k: dg.MetadataValue.float(float(v)) for k, v in floats.items()}
        meta.update({k: dg.MetadataValue.int(int(v)) for k, v in ints.items()})
        meta["model"] = dg.MetadataValue.text(self.model)
        meta["provider"] = dg.MetadataValue.text(self.provider)
        return meta


@dataclass
class CallOutcome:
    """Everything run_prompts produced: results of items that finished for good, and the totals."""

    results: list[ItemResult] = field(default_factory=list)
    summary: UsageSummary | None = None


@dataclass(frozen=True)
class BatchLineResult:
    """One line of a provider batch's results, parsed from the wire by providers/*_batches.py.

    `kind`: "succeeded" (`payload` is the response body the online adapter parses: chat.completion or
    message), "errored" (`error` for the shared classifier), "expired" or "canceled" (never ran, not billed)."""

    custom_id: str
    kind: str
    payload: dict[str, Any] | None = None
    error: ProviderError | None = None
