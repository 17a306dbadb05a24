"""OpenAI wire format: Chat Completions, models, and the error bodies and headers OpenAI sends."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from llm_sim.engine import Engine, Outcome
from llm_sim.http_common import bearer_token, dropped_body, new_id, read_json_object
from llm_sim.prompt import Prompt, PromptError, openai_prompt
from llm_sim.prompt_cache import CachePlan
from llm_sim.rate_limits import Refusal, openai_headers
from llm_sim.server_dialect import context_error

_ORG = "org-sim"
_UNIT = {"minute": ("min", "M"), "second": ("sec", "S")}


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def fault_error(
    kind: str, model: str, prompt_tokens: int, engine: Engine
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, extra headers) of an injected error fault."""
    if kind == "rate_limit":
        spec = engine.config.models[model]
        unit, letter = _UNIT[spec.limits.per]
        limit = int(spec.limits.tpm) if spec.limits.tpm else 1_000_000_000
        message = (
            f"Rate limit reached for {model} in organization {_ORG} on tokens per {unit} (TP{letter}): "
            f"Limit {limit}, Used {limit}, Requested {prompt_tokens}. Please try again in 1s. "
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )
        return (
            429,
            error_body(message, "tokens", "rate_limit_exceeded"),
            {"retry-after": "1", "retry-after-ms": "1000"},
        )
    if kind == "insufficient_quota":
        message = (
            "You exceeded your current quota, please check your plan and billing details. For more information "
            "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
        )
        return 429, error_body(message, "insufficient_quota", "insufficient_quota"), {}
    if kind == "invalid_prompt":
        message = (
            "Invalid prompt: your prompt was flagged as potentially violating our usage policy. "
            "Please try again with a different prompt."
        )
        return 400, error_body(message, "invalid_request_error", "invalid_prompt"), {}
    if kind == "server_error":
        message = "The server had an error while processing your request. Sorry about that!"
        return 500, error_body(message, "server_error"), {}
    if kind == "timeout":
        return 504, error_body("Request timed out.", "timeout"), {}
    # unavailable, overloaded, outage
    return 503, error_body("The engine is currently overloaded, please try again later.", "server_error"), {}


def refusal_error(model: str, refusal: Refusal, limits_per: str) -> tuple[dict[str, Any], dict[str, str]]:
    unit, letter = _UNIT[limits_per]
    what = "requests" if refusal.bucket == "requests" else "tokens"
    abbrev = ("R" if what == "requests" else "T") + "P" + letter
    if refusal.too_large:
        message = (
            f"Request too large for {model} in organization {_ORG} on {what} per {unit} ({abbrev}): "
            f"Limit {int(refusal.limit)}, Requested {int(refusal.requested)}. "
            "The input or output tokens must be reduced in order to run successfully."
        )
        return error_body(message, what, "rate_limit_exceeded"), {}
    wait_ms = max(1, math.ceil(refusal.wait_s * 1000))
    message = (
        f"Rate limit reached for {model} in organization {_ORG} on {what} per {unit} ({abbrev}): "
        f"Limit {int(refusal.limit)}, Used {int(math.ceil(refusal.used))}, Requested {int(refusal.requested)}. "
        f"Please try again in {wait_ms}ms. Visit https://platform.openai.com/account/rate-limits to learn more."
    )
    headers = {"retry-after": str(max(1, math.ceil(refusal.wait_s))), "retry-after-ms": str(wait_ms)}
    return error_body(message, what, "rate_limit_exceeded"), headers


def completion_body(prompt: Prompt, outcome: Outcome, engine: Engine) -> dict[str, Any]:
    """A chat.completion object for a successful outcome."""
    usage = outcome.usage
    spec = engine.config.models[prompt.model]
    details: dict[str, int] = {"cached_tokens": usage.cached_input, "audio_tokens": 0}
    if spec.bills_cache_write:
        details["cache_write_tokens"] = usage.cache_write
    usage_body: dict[str, Any] = {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": usage.output,
        "total_tokens": outcome.prompt_tokens + usage.output,
    }
    if engine.config.server.usage_details:
        usage_body["prompt_tokens_details"] = details
        usage_body["completion_tokens_details"] = {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return {
        "id": outcome.reply_id or new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": prompt.model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": outcome.content,
                    "refusal": outcome.refusal,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": outcome.finish,
            }
        ],
        "usage": usage_body,
        "service_tier": "default",
        "system_fingerprint": "fp_llm_sim",
    }


def _authorized(request: Request, engine: Engine) -> bool:
    return bearer_token(request) in engine.config.keys


def unauthorized_body(request: Request) -> dict[str, Any]:
    if bearer_token(request) is None:
        message = (
            "You didn't provide an API key. You need to provide your API key in an Authorization header using "
            "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
        return error_body(message, "invalid_request_error")
    # Never echo the key back: it is a secret even when wrong.
    message = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
    return error_body(message, "invalid_request_error", "invalid_api_key")


async def chat_completions(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    server = engine.config.server
    headers = {"x-request-id": new_id("req_", 32)}
    body = await read_json_object(request)
    model_name = body.get("model") if body and isinstance(body.get("model"), str) else ""
    state = engine.limit_state(model_name) if model_name else None
    if state and server.rate_limit_headers:
        headers.update(openai_headers(state))

    def reply(status: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(payload, status_code=status, headers={**headers, **(extra or {})})

    def refused(status: str, model: str, fault: str | None = None) -> None:
        """Log a request refused before it ran: unbilled."""
        engine.ledger.record(
            provider="openai", model=model, endpoint="chat", status=status, usage=None, billed_usd=0.0,
            user_sha256="", fault=fault,
        )  # fmt: skip

    if not _authorized(request, engine):
        refused("401", model_name)
        return reply(401, unauthorized_body(request))
    if body is None:
        refused("400", "")
        message = "We could not parse the JSON body of your request. The body must be a JSON object."
        return reply(400, error_body(message, "invalid_request_error"))
    if server.record_bodies:
        engine.bodies.append(body)
    format_error = server.format_error(body)
    if format_error is not None:
        refused("500", model_name, fault="unsupported_response_format")
        return reply(500, format_error)
    try:
        prompt = openai_prompt(body)
    except PromptError as exc:
        refused("400", model_name)
        return reply(400, error_body(str(exc), "invalid_request_error", None, exc.param))
    if engine.model(prompt.model, "openai") is None:
        engine.record_rejection(prompt, "chat", 404, None)
        message = f"The model `{prompt.model}` does not exist or you do not have access to it."
        return reply(404, error_body(message, "invalid_request_error", "model_not_found"))
    prompt.max_output_tokens = server.output_cap(body)
    if server.context_tokens is not None:
        prompt_tokens = prompt.prompt_tokens()
        if prompt_tokens >= server.context_tokens:
            engine.record_rejection(prompt, "chat", 400, "context_length_exceeded")
            return reply(400, context_error(server.context_tokens, prompt_tokens, prompt.max_output_tokens))
        room = server.context_tokens - prompt_tokens
        prompt.runaway = prompt.max_output_tokens is None
        prompt.max_output_tokens = min(prompt.max_output_tokens or room, room)

    # A server without usage details (llama.cpp) reports no cached tokens: it is billed as uncached.
    plan = engine.plan_cache(prompt) if server.usage_details else CachePlan()
    refusal = engine.admit(prompt, plan)
    if server.rate_limit_headers:
        headers.update(openai_headers(engine.limit_state(prompt.model)))
    if refusal is not None:
        engine.record_rejection(prompt, "chat", 429, "rate_limit_enforced")
        payload, extra = refusal_error(prompt.model, refusal, engine.config.models[prompt.model].limits.per)
        return reply(429, payload, extra)

    outcome = engine.run(prompt, endpoint="chat", cache_plan=plan)
    if outcome.error_kind == "drop":
        return StreamingResponse(
            dropped_body(), status_code=200, headers=headers, media_type="application/json"
        )
    if outcome.error_kind is not None:
        if outcome.error_kind == "timeout":
            await asyncio.sleep(engine.faults.hang_s)
        status, payload, extra = fault_error(outcome.error_kind, prompt.model, prompt.prompt_tokens(), engine)
        return reply(status, payload, extra)
    if outcome.latency_s > 0:
        await asyncio.sleep(outcome.latency_s)
    return reply(200, completion_body(prompt, outcome, engine))


async def list_models_openai(engine: Engine) -> dict[str, Any]:
    created = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": spec.provider}
            for name, spec in engine.config.models.items()
        ],
    }
