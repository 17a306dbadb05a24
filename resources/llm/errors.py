"""The error taxonomy (retryable / item-permanent / job-fatal) and the ONE classifier that maps a
provider response or transport failure onto it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import dagster as dg
import httpx

from resources.llm.transport import TransportError

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
    setting: str | None = None  # config errors: the LLM resource field to change ("structured_output", ...)

    @property
    def is_rate_limit(self) -> bool:
        return self.error_class == "rate_limited"


class JobFatalError(dg.Failure):
    """Stop the job: bad credentials, no quota, budget exhausted, a request the provider will never accept, or a
    person's SIGTERM / Ctrl-C. Not retried by Dagster's RetryPolicy. `.reason` is machine-readable: "auth",
    "quota", "budget", "config", "stopped". `.outcome` holds what finished before the stop (all of it was also
    passed to on_result)."""

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

# What a server says when the request's size does not fit the model's context window: OpenAI, vLLM ("maximum
# context length"), llama-cpp-python ("exceed context window of 2048"), llama.cpp's llama-server ("exceeds the
# available context size"), Anthropic ("prompt is too long").
_CONTEXT = re.compile(
    r"too long|context length|maximum context|context window|context size|exceeds? (the )?context",
    re.IGNORECASE,
)
# What a server says when it does not accept a parameter or a value of one: pydantic/FastAPI validation (llama-cpp-
# python answers HTTP 500 "Input should be 'text' or 'json_object'" to response_format json_schema), vLLM's
# "... is not supported", OpenAI's "Unrecognized request argument supplied", "unknown parameter".
_UNSUPPORTED = re.compile(
    r"not supported|unsupported|unknown (parameter|field|argument)|unrecognized (request )?argument|"
    r"extra inputs are not permitted|extra_forbidden|input should be|literal_error|unexpected keyword",
    re.IGNORECASE,
)
_STRUCTURED = re.compile(
    r"response_format|json_schema|json_object|guided_json|\bformat\b|grammar", re.IGNORECASE
)
_CAP_PARAM = re.compile(r"max_(completion_)?tokens", re.IGNORECASE)
# An unknown model: Ollama 404 'model "x" not found, try pulling it first', vLLM 404 "The model `x` does not
# exist.", LiteLLM 400 "Invalid model name passed in model=x", OpenAI 404 model_not_found.
_UNKNOWN_MODEL = re.compile(
    r"model\b.{0,120}\b(not found|does not exist|unknown|not available|no such)|"
    r"\b(unknown|invalid|no such) model|model_not_found",
    re.IGNORECASE | re.DOTALL,
)


def classify_provider_error(err: ProviderError) -> Classified:
    """Map a provider's error answer to the taxonomy: by status, type and code first, then by what the body says
    where status alone misleads (OpenAI's "Request too large", Anthropic's spend-limit 429, a server that answers
    an unsupported parameter with HTTP 500, an unknown model as a 400)."""
    msg = err.message
    etype = (err.error_type or "").lower()
    code = (err.error_code or "").lower()
    lowered = msg.lower()
    if err.status == 401:
        return Classified(FailureLevel.FATAL, "auth", f"authentication failed (401): {msg}")
    if err.status == 403:
        return Classified(FailureLevel.FATAL, "auth", f"permission denied (403): {msg}")
    if err.status == 402:
        return Classified(FailureLevel.FATAL, "quota", f"billing problem (402): {msg}")
    if err.status == 429:
        if "insufficient_quota" in (etype, code):
            return Classified(FailureLevel.FATAL, "quota", f"insufficient quota (429): {msg}")
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
    config = _config_error(err, lowered)
    if config is not None:
        return config
    if err.status == 404:
        return Classified(
            FailureLevel.FATAL,
            "config",
            f"not found (404), check model and base_url: {msg}",
            setting="model",
        )
    if err.status in (400, 422, 500) and _CONTEXT.search(msg):
        return Classified(FailureLevel.ITEM, "input_too_long", f"input too long for the model: {msg}")
    if err.status == 400:
        if code == "invalid_prompt":
            return Classified(FailureLevel.ITEM, "invalid_prompt", f"prompt rejected (400): {msg}")
        return Classified(FailureLevel.ITEM, "invalid_prompt", f"request rejected (400 {etype}): {msg}")
    if err.status in _RETRYABLE_STATUS or err.status >= 500:
        return Classified(
            FailureLevel.RETRYABLE, "server_error", f"server error ({err.status}): {msg}", err.retry_after_s
        )
    if 400 <= err.status < 500:
        return Classified(FailureLevel.ITEM, "invalid_request", f"request rejected ({err.status}): {msg}")
    return Classified(FailureLevel.RETRYABLE, "server_error", f"unexpected status {err.status}: {msg}")


def _config_error(err: ProviderError, lowered: str) -> Classified | None:
    """An answer that every request of this configuration will get: an unknown model, or a parameter or mode
    the server does not support. Job-fatal, naming the resource setting to change."""
    if err.status not in (400, 404, 405, 422, 500, 501):
        return None
    if (err.error_code or "").lower() == "invalid_prompt":
        return None
    status = f"HTTP {err.status}"
    if _UNKNOWN_MODEL.search(lowered) and (err.status == 404 or "model" in lowered):
        return Classified(
            FailureLevel.FATAL,
            "config",
            f"the server does not know the model ({status}: {err.message}); check `model` (and base_url)",
            setting="model",
        )
    if not _UNSUPPORTED.search(lowered):
        return None
    if _STRUCTURED.search(lowered):
        return Classified(
            FailureLevel.FATAL,
            "config",
            f"the server does not support the structured-output mode that was sent ({status}: {err.message}); "
            "set structured_output: json_object (llama.cpp) or prompt, or pick the server's dialect",
            setting="structured_output",
        )
    what = "the output-cap parameter" if _CAP_PARAM.search(lowered) else "a request parameter"
    return Classified(
        FailureLevel.FATAL,
        "config",
        f"the server does not accept {what} that was sent ({status}: {err.message}); set the provider profile's "
        "`dialect` to the server's kind (llamacpp, vllm, ollama, litellm or openai_compatible)",
        setting="dialect",
    )


def classify_transport_error(exc: BaseException) -> Classified:
    """Timeouts and dropped connections are retryable. The message never includes the request (URL/headers):
    only the library's exception type (TransportError from the online client, httpx's from the batch calls)."""
    if isinstance(exc, TransportError):
        timed_out, name = exc.timed_out, exc.cause_name
    else:
        timed_out, name = isinstance(exc, httpx.TimeoutException), type(exc).__name__
    if timed_out:
        return Classified(FailureLevel.RETRYABLE, "timeout", f"request timed out ({name})")
    return Classified(FailureLevel.RETRYABLE, "connection", f"connection failed ({name})")


def redact(text: str, secret: str | None) -> str:
    """Remove a secret (and its long prefixes, as providers echo "sk-abc...xyz") from text for logs and errors."""
    if not secret or not text:
        return text
    out = text.replace(secret, "***")
    if len(secret) >= 12:
        out = out.replace(secret[:8], "***")
    return out
