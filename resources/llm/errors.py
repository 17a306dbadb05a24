"""The error taxonomy (retryable / item-permanent / job-fatal) and the ONE classifier that maps a
provider response or transport failure onto it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import dagster as dg
import httpx

if TYPE_CHECKING:
    from resources.llm.types import CallOutcome


class FailureLevel(StrEnum):
    RETRYABLE = "retryable"  # back off and try the same item again
    ITEM = "item"  # this item is dead-lettered; the chunk goes on
    FATAL = "fatal"  # stop sending; the job halts without automatic retry


@dataclass(frozen=True)
class ProviderError:
    """A non-success answer, already parsed from the wire by a provider adapter."""

    status: int
    error_type: str | None
    error_code: str | None
    message: str
    retry_after_s: float | None


@dataclass(frozen=True)
class Classified:
    level: FailureLevel
    error_class: str  # e.g. "rate_limited", "server_error", "invalid_prompt", "auth", "quota"
    message: str
    retry_after_s: float | None = None

    @property
    def is_rate_limit(self) -> bool:
        return self.error_class == "rate_limited"


class JobFatalError(dg.Failure):
    """Stop the job: bad credentials, no quota, budget exhausted, a request the provider will never accept.
    Not retried by Dagster's RetryPolicy. `.reason` is machine-readable: "auth", "quota", "budget", "config".
    `.outcome` holds what finished before the stop (all of it was also passed to on_result)."""

    def __init__(self, reason: str, description: str, outcome: CallOutcome | None = None) -> None:
        super().__init__(description=description, metadata={"reason": reason}, allow_retries=False)
        self.reason = reason
        self.outcome = outcome


class ChunkRetryableError(Exception):
    """The chunk should be retried later (rate-limit storm, outage, timeouts): raised after in-flight
    requests finished and their results were handed to on_result. `.outcome` holds the partial results."""

    def __init__(self, message: str, outcome: CallOutcome | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


class BudgetExhaustedError(Exception):
    """Raised inside the engine when a reservation can never fit a cap; surfaces as JobFatalError."""


class UnknownModelPriceError(ValueError):
    """The model has no row in the price table (and allow_unpriced_model is off)."""


_RETRYABLE_STATUS = {408, 409, 425, 500, 502, 503, 504, 529}


def classify_provider_error(err: ProviderError) -> Classified:
    """Map a provider's error answer to the taxonomy. Decides on status, type and code, never on free text,
    except where the provider gives nothing else (OpenAI's "Request too large", Anthropic's spend-limit 429)."""
    msg = err.message
    etype = (err.error_type or "").lower()
    code = (err.error_code or "").lower()
    if err.status == 401:
        return Classified(FailureLevel.FATAL, "auth", f"authentication failed (401): {msg}")
    if err.status == 403:
        return Classified(FailureLevel.FATAL, "auth", f"permission denied (403): {msg}")
    if err.status == 402:
        return Classified(FailureLevel.FATAL, "quota", f"billing problem (402): {msg}")
    if err.status == 404:
        return Classified(FailureLevel.FATAL, "config", f"not found (404), check model and base_url: {msg}")
    if err.status == 429:
        if "insufficient_quota" in (etype, code):
            return Classified(FailureLevel.FATAL, "quota", f"insufficient quota (429): {msg}")
        lowered = msg.lower()
        # Anthropic's spend-cap 429 is a rate_limit_error without retry-after; retrying never helps.
        if err.retry_after_s is None and ("spend" in lowered or "credit" in lowered or "quota" in lowered):
            return Classified(FailureLevel.FATAL, "quota", f"spend limit reached (429): {msg}")
        # OpenAI: a single request above the TPM limit has the rate-limit code but never succeeds.
        if "request too large" in lowered:
            return Classified(
                FailureLevel.ITEM, "input_too_long", f"request larger than the rate limit: {msg}"
            )
        return Classified(
            FailureLevel.RETRYABLE, "rate_limited", f"rate limited (429): {msg}", err.retry_after_s
        )
    if err.status == 413 or code == "context_length_exceeded" or etype == "request_too_large":
        return Classified(FailureLevel.ITEM, "input_too_long", f"input too long for the model: {msg}")
    if err.status == 400:
        if code == "invalid_prompt":
            return Classified(FailureLevel.ITEM, "invalid_prompt", f"prompt rejected (400): {msg}")
        lowered = msg.lower()
        if "too long" in lowered or "context length" in lowered or "maximum context" in lowered:
            return Classified(FailureLevel.ITEM, "input_too_long", f"input too long for the model: {msg}")
        return Classified(FailureLevel.ITEM, "invalid_prompt", f"request rejected (400 {etype}): {msg}")
    if err.status in _RETRYABLE_STATUS or err.status >= 500:
        return Classified(
            FailureLevel.RETRYABLE, "server_error", f"server error ({err.status}): {msg}", err.retry_after_s
        )
    if 400 <= err.status < 500:
        return Classified(FailureLevel.ITEM, "invalid_request", f"request rejected ({err.status}): {msg}")
    return Classified(FailureLevel.RETRYABLE, "server_error", f"unexpected status {err.status}: {msg}")


def classify_transport_error(exc: BaseException) -> Classified:
    """Timeouts and dropped connections are retryable. The message never includes the request (URL/headers)."""
    if isinstance(exc, httpx.TimeoutException):
        return Classified(FailureLevel.RETRYABLE, "timeout", f"request timed out ({type(exc).__name__})")
    return Classified(FailureLevel.RETRYABLE, "connection", f"connection failed ({type(exc).__name__})")


def redact(text: str, secret: str | None) -> str:
    """Remove a secret (and its long prefixes, as providers echo "sk-abc...xyz") from text for logs and errors."""
    if not secret or not text:
        return text
    out = text.replace(secret, "***")
    if len(secret) >= 12:
        out = out.replace(secret[:8], "***")
    return out
