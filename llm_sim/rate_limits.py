"""Per-model token buckets (continuously refilled, capacity = one period's worth) and the header formats."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from llm_sim.config import Limits

# Limits the headers state for a model configured without one (the simulator then never refuses).
UNLIMITED_HEADER_VALUE = 1_000_000_000


class TokenBucket:
    """`capacity` units, refilled at capacity / period_s per second."""

    def __init__(self, capacity: float, period_s: float, now: float):
        self.capacity = capacity
        self.rate = capacity / period_s
        self.level = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` is available (after refill); inf if it exceeds the capacity."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate)

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.level) / self.rate


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted: which bucket, its limit, what was used and requested, how long to wait."""

    bucket: str
    limit: float
    used: float
    requested: float
    wait_s: float

    @property
    def too_large(self) -> bool:
        return math.isinf(self.wait_s)


class ModelLimiter:
    """Buckets `requests`, `tokens`, `input_tokens`, `output_tokens` of one model (only the configured ones)."""

    def __init__(self, limits: Limits, now: float):
        self.limits = limits
        period = limits.period_s
        configured = {
            "requests": limits.rpm,
            "tokens": limits.tpm,
            "input_tokens": limits.itpm,
            "output_tokens": limits.otpm,
        }
        self.buckets = {
            name: TokenBucket(cap, period, now) for name, cap in configured.items() if cap is not None
        }

    def admit(self, costs: dict[str, float], now: float) -> Refusal | None:
        """Take every cost from its bucket, or take nothing and say which bucket refused."""
        for bucket in self.buckets.values():
            bucket.refill(now)
        for name, amount in costs.items():
            bucket = self.buckets.get(name)
            if bucket is None:
                continue
            wait = bucket.wait_s(amount)
            if wait > 0:
                return Refusal(name, bucket.capacity, bucket.capacity - bucket.level, amount, wait)
        for name, amount in costs.items():
            if name in self.buckets:
                self.buckets[name].level -= amount
        return None

    def snapshot(self, now: float) -> dict[str, tuple[float, float, float]]:
        """bucket -> (limit, remaining, seconds until full); unconfigured buckets read as unlimited."""
        state = {}
        for name in ("requests", "tokens", "input_tokens", "output_tokens"):
            bucket = self.buckets.get(name)
            if bucket is None:
                state[name] = (UNLIMITED_HEADER_VALUE, UNLIMITED_HEADER_VALUE, 0.0)
            else:
                bucket.refill(now)
                state[name] = (bucket.capacity, max(0.0, bucket.level), bucket.reset_s())
        return state


def go_duration(seconds: float) -> str:
    """A Go time.Duration string, to the millisecond: 6m0s, 1s, 40ms, 1.2s, 1h0m0s."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rfc3339(epoch_s: float) -> str:
    """An RFC 3339 UTC timestamp with seconds precision, e.g. 2026-11-27T22:48:01Z."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def openai_headers(state: dict[str, tuple[float, float, float]]) -> dict[str, str]:
    req_limit, req_remaining, req_reset = state["requests"]
    tok_limit, tok_remaining, tok_reset = state["tokens"]
    return {
        "x-ratelimit-limit-requests": str(int(req_limit)),
        "x-ratelimit-remaining-requests": str(int(req_remaining)),
        "x-ratelimit-reset-requests": go_duration(req_reset),
        "x-ratelimit-limit-tokens": str(int(tok_limit)),
        "x-ratelimit-remaining-tokens": str(int(tok_remaining)),
        "x-ratelimit-reset-tokens": go_duration(tok_reset),
    }


def anthropic_headers(state: dict[str, tuple[float, float, float]], wall_now: float) -> dict[str, str]:
    headers = {}
    # "tokens" states the most restrictive of the token buckets, as Anthropic documents.
    token_buckets = [state[n] for n in ("tokens", "input_tokens", "output_tokens")]
    tightest = min(token_buckets, key=lambda s: s[1])
    for name, (limit, remaining, reset) in (
        ("requests", state["requests"]),
        ("tokens", tightest),
        ("input-tokens", state["input_tokens"]),
        ("output-tokens", state["output_tokens"]),
    ):
        headers[f"anthropic-ratelimit-{name}-limit"] = str(int(limit))
        headers[f"anthropic-ratelimit-{name}-remaining"] = str(int(remaining))
        headers[f"anthropic-ratelimit-{name}-reset"] = rfc3339(wall_now + math.ceil(reset))
    return headers
