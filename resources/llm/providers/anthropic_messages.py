"""Anthropic Messages wire format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resources.llm.errors import ProviderError
from resources.llm.providers.base import (
    ParsedReply,
    Reply,
    WireRequest,
    error_body,
    repair_instruction,
    retry_after_s,
    schema_instructions,
)
from resources.llm.state_store import HeaderLimit
from resources.llm.types import TokenUsage

ANTHROPIC_VERSION = "2023-06-01"
_HEADER_KINDS = {"requests": "requests", "input-tokens": "input_tokens", "output-tokens": "output_tokens"}
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "refusal": "refusal"}


class AnthropicMessages:
    name = "anthropic"
    header_kinds = ("requests", "input_tokens", "output_tokens")

    def url(self, base_url: str) -> str:
        return base_url.rstrip("/") + "/v1/messages"

    def headers(self, api_key: str) -> dict[str, str]:
        return {
            "x-api-key": api_key,
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
        }

    def build(
        self,
        *,
        model: str,
        system_prompt: str,
        user_text: str,
        schema: dict | None,
        schema_name: str,
        max_output_tokens: int,
        structured_output: str,
        repair: tuple[str, str] | None,
    ) -> WireRequest:
        system = system_prompt
        schema_param: dict | None = None
        body: dict[str, Any] = {"model": model, "max_tokens": max_output_tokens}
        if schema is not None:
            if structured_output == "json_schema":
                body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
                schema_param = schema
            else:
                system = system_prompt + schema_instructions(schema)
        # One system block marked for caching: the shared prefix every item of the chunk repeats.
        body["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
        messages: list[dict[str, Any]] = [{"role": "user", "content": user_text}]
        if repair is not None:
            bad_output, problem = repair
            messages.append({"role": "assistant", "content": bad_output})
            messages.append({"role": "user", "content": repair_instruction(problem)})
        body["messages"] = messages
        return WireRequest("/v1/messages", body, [system] + [m["content"] for m in messages], schema_param)

    def parse_reply(self, payload: dict[str, Any]) -> ParsedReply:
        blocks = payload.get("content") or []
        text = "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
        usage = payload.get("usage") or {}
        cache_read = int(usage.get("cache_read_input_tokens") or 0)
        cache_write = int(usage.get("cache_creation_input_tokens") or 0)
        stop = payload.get("stop_reason")
        finish = _STOP_REASONS.get(stop, stop)
        return ParsedReply(
            content=text if blocks else None,
            finish_reason=finish,
            refusal=(text or "refused") if finish == "refusal" else None,
            usage=TokenUsage(
                # Anthropic reports cache reads and writes apart from input_tokens; we keep the total.
                input_tokens=int(usage.get("input_tokens") or 0) + cache_read + cache_write,
                cached_input_tokens=cache_read,
                cache_write_tokens=cache_write,
                output_tokens=int(usage.get("output_tokens") or 0),
            ),
            usage_reported="output_tokens" in usage,
        )

    def parse_error(self, response: Reply) -> ProviderError:
        etype, code, message = error_body(response)
        return ProviderError(response.status_code, etype, code, message, retry_after_s(response.headers))

    def rate_headers(self, headers: Mapping[str, str]) -> dict[str, HeaderLimit]:
        out: dict[str, HeaderLimit] = {}
        for wire, kind in _HEADER_KINDS.items():
            limit = headers.get(f"anthropic-ratelimit-{wire}-limit")
            if not limit:
                continue
            try:
                remaining = headers.get(f"anthropic-ratelimit-{wire}-remaining")
                out[kind] = HeaderLimit(float(limit), float(remaining) if remaining else None)
            except ValueError:
                continue
        return out

    def bucket_amounts(
        self, prompt_tokens: int, max_output_tokens: int, cached_guess: int
    ) -> dict[str, float]:
        # Input-tokens-per-minute counts uncached input and cache writes, not cache reads;
        # output-tokens-per-minute counts max_tokens at admission.
        return {
            "requests": 1.0,
            "input_tokens": float(max(0, prompt_tokens - cached_guess)),
            "output_tokens": float(max_output_tokens),
            "tokens": float(max(0, prompt_tokens - cached_guess) + max_output_tokens),
        }

    def bucket_actuals(self, usage: TokenUsage, max_output_tokens: int) -> dict[str, float]:
        counted = usage.input_tokens - usage.cached_input_tokens
        return {
            "requests": 1.0,
            "input_tokens": float(counted),
            "output_tokens": float(max_output_tokens),
            "tokens": float(counted + max_output_tokens),
        }
