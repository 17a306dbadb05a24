"""Anthropic wire format: Messages, its versions, error bodies and rate-limit headers."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from llm_sim.engine import Engine, Outcome
from llm_sim.http_common import bearer_token, dropped_body, new_id, read_json_object
from llm_sim.prompt import Prompt, PromptError, anthropic_prompt
from llm_sim.rate_limits import Refusal, anthropic_headers

SUPPORTED_VERSIONS = ("2023-06-01", "2026-10-21")
# From this version on, sampling parameters are rejected.
STRICT_VERSION = "2026-10-21"
SAMPLING_PARAMS = ("temperature", "top_p", "top_k")

_STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "refusal": "refusal", "content_filter": "refusal"}


def error_body(type_: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": type_, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


def fault_error(kind: str) -> tuple[int, str, str, dict[str, str]]:
    """(status, error type, message, extra headers) of an injected error fault."""
    if kind == "rate_limit":
        message = (
            "This request would exceed the rate limit for your organization of input tokens per minute. "
            "Please reduce the prompt length or the maximum tokens requested, or try again later."
        )
        return 429, "rate_limit_error", message, {"retry-after": "1"}
    if kind == "insufficient_quota":
        message = (
            "You have reached your specified API usage limits (spend limit). You will regain access at the start "
            "of the next billing period; raise the workspace spend limit in the console to continue now."
        )
        return 429, "rate_limit_error", message, {}
    if kind == "invalid_prompt":
        return (
            400,
            "invalid_request_error",
            "Your prompt was flagged as potentially violating our usage policy.",
            {},
        )
    if kind == "server_error":
        return 500, "api_error", "Internal server error", {}
    if kind == "unavailable":
        return 503, "api_error", "Service unavailable", {}
    if kind == "timeout":
        return 504, "timeout_error", "Request timed out", {}
    return 529, "overloaded_error", "Overloaded", {}  # overloaded, outage


def refusal_error(model: str, refusal: Refusal, per: str) -> tuple[str, dict[str, str]]:
    unit = "minute" if per == "minute" else "second"
    what = {
        "requests": "requests",
        "input_tokens": "input tokens",
        "output_tokens": "output tokens",
        "tokens": "tokens",
    }[refusal.bucket]
    message = (
        f"This request would exceed the rate limit for your organization of {int(refusal.limit):,} {what} per "
        f"{unit} for {model}. You can see the response headers for current usage. Please reduce the prompt "
        "length or the maximum tokens requested, or try again later."
    )
    if refusal.too_large:
        return message, {}
    return message, {"retry-after": str(max(1, math.ceil(refusal.wait_s)))}


def message_body(prompt: Prompt, outcome: Outcome) -> dict[str, Any]:
    """A Messages API `message` object for a successful outcome."""
    usage = outcome.usage
    content = [] if outcome.content is None else [{"type": "text", "text": outcome.content}]
    return {
        "id": outcome.reply_id or new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": content,
        "stop_reason": _STOP_REASON[outcome.finish],
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.input,
            "cache_creation_input_tokens": usage.cache_write + usage.cache_write_1h,
            "cache_read_input_tokens": usage.cached_input,
            "cache_creation": {
                "ephemeral_5m_input_tokens": usage.cache_write,
                "ephemeral_1h_input_tokens": usage.cache_write_1h,
            },
            "output_tokens": usage.output,
            "service_tier": "standard",
        },
    }


def api_key(request: Request) -> str | None:
    return request.headers.get("x-api-key") or bearer_token(request)


def check_version(request: Request, body: dict[str, Any] | None) -> str | None:
    """An error message if the anthropic-version header is missing/unknown or forbids a parameter, else None."""
    version = request.headers.get("anthropic-version")
    if version is None:
        return "anthropic-version: header is required"
    if version not in SUPPORTED_VERSIONS:
        return f"anthropic-version: unknown version {version!r}; use one of {', '.join(SUPPORTED_VERSIONS)}"
    if version == STRICT_VERSION and body:
        for param in SAMPLING_PARAMS:
            if param in body:
                return f"{param}: is not supported with anthropic-version {STRICT_VERSION}; remove it"
    return None


async def messages(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    request_id = new_id("req_", 24)
    headers = {"request-id": request_id}
    body = await read_json_object(request)
    model_name = body.get("model") if body and isinstance(body.get("model"), str) else ""
    state = engine.limit_state(model_name) if model_name else None
    if state:
        headers.update(anthropic_headers(state, time.time()))

    def reply(status: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(payload, status_code=status, headers={**headers, **(extra or {})})

    def reject(status: int, type_: str, message: str) -> JSONResponse:
        engine.ledger.record(
            provider="anthropic",
            model=model_name,
            endpoint="messages",
            status=str(status),
            usage=None,
            billed_usd=0.0,
            user_sha256="",
        )
        return reply(status, error_body(type_, message, request_id))

    if api_key(request) not in engine.config.keys:
        return reject(401, "authentication_error", "invalid x-api-key")
    if body is None:
        return reject(
            400, "invalid_request_error", "The request body is not valid JSON (expected an object)."
        )
    version_problem = check_version(request, body)
    if version_problem:
        return reject(400, "invalid_request_error", version_problem)
    try:
        prompt = anthropic_prompt(body)
    except PromptError as exc:
        return reject(400, "invalid_request_error", str(exc))
    if engine.model(prompt.model, "anthropic") is None:
        return reject(404, "not_found_error", f"model: {prompt.model}")

    plan = engine.plan_cache(prompt)
    refusal = engine.admit(prompt, plan)
    headers.update(anthropic_headers(engine.limit_state(prompt.model), time.time()))
    if refusal is not None:
        engine.record_rejection(prompt, "messages", 429, "rate_limit_enforced")
        message, extra = refusal_error(prompt.model, refusal, engine.config.models[prompt.model].limits.per)
        return reply(429, error_body("rate_limit_error", message, request_id), extra)

    outcome = engine.run(prompt, endpoint="messages", cache_plan=plan)
    if outcome.error_kind == "drop":
        return StreamingResponse(
            dropped_body(), status_code=200, headers=headers, media_type="application/json"
        )
    if outcome.error_kind is not None:
        if outcome.error_kind == "timeout":
            await asyncio.sleep(engine.faults.hang_s)
        status, type_, message, extra = fault_error(outcome.error_kind)
        return reply(status, error_body(type_, message, request_id), extra)
    if outcome.latency_s > 0:
        await asyncio.sleep(outcome.latency_s)
    return reply(200, message_body(prompt, outcome))


def list_models_anthropic(engine: Engine) -> dict[str, Any]:
    data = [
        {"type": "model", "id": name, "display_name": name, "created_at": "2026-01-01T00:00:00Z"}
        for name, spec in engine.config.models.items()
        if spec.provider == "anthropic"
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
