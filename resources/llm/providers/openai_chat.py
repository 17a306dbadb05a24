"""OpenAI Chat Completions wire format (also vLLM, Ollama, llama.cpp server, LiteLLM proxy: see dialects.py for
how each differs)."""

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
from resources.llm.providers.dialects import DIALECTS, Dialect
from resources.llm.state_store import HeaderLimit
from resources.llm.types import TokenUsage


class OpenAIChat:
    name = "openai"
    header_kinds = ("requests", "tokens")

    def __init__(self, dialect: Dialect | None = None) -> None:
        self.dialect = dialect or DIALECTS["openai"]

    def url(self, base_url: str) -> str:
        return base_url.rstrip("/") + "/chat/completions"

    def headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

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
        body: dict[str, Any] = {"model": model}
        for param in self.dialect.cap_params:
            body[param] = max_output_tokens
        if schema is not None:
            sent = self.dialect.schema_for_server(schema)
            if structured_output == "json_schema":
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": schema_name, "strict": True, "schema": sent},
                }
                schema_param = sent
            elif structured_output == "json_object":
                body["response_format"] = {"type": "json_object", "schema": sent}
                schema_param = sent
            else:
                system = system_prompt + schema_instructions(schema)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user_text}]
        if repair is not None:
            bad_output, problem = repair
            messages.append({"role": "assistant", "content": bad_output})
            messages.append({"role": "user", "content": repair_instruction(problem)})
        body["messages"] = messages
        return WireRequest("/chat/completions", body, [m["content"] for m in messages], schema_param)

    def parse_reply(self, payload: dict[str, Any]) -> ParsedReply:
        choice = (payload.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        raw_usage = payload.get("usage")
        usage = raw_usage if isinstance(raw_usage, dict) else {}
        details = usage.get("prompt_tokens_details") or {}  # absent on llama.cpp and friends: zero cached
        finish = choice.get("finish_reason")
        refusal = message.get("refusal")
        return ParsedReply(
            content=message.get("content"),
            finish_reason="refusal" if refusal else finish,
            refusal=refusal,
            usage=TokenUsage(
                input_tokens=int(usage.get("prompt_tokens") or 0),
                cached_input_tokens=int(details.get("cached_tokens") or 0),
                cache_write_tokens=int(details.get("cache_write_tokens") or 0),
                output_tokens=int(usage.get("completion_tokens") or 0),
            ),
            usage_reported="completion_tokens" in usage,
        )

    def parse_error(self, response: Reply) -> ProviderError:
        etype, code, message = error_body(response)
        return ProviderError(response.status_code, etype, code, message, retry_after_s(response.headers))

    def rate_headers(self, headers: Mapping[str, str]) -> dict[str, HeaderLimit]:
        out: dict[str, HeaderLimit] = {}
        for kind in self.header_kinds:
            limit = headers.get(f"x-ratelimit-limit-{kind}")
            if not limit:
                continue
            try:
                remaining = headers.get(f"x-ratelimit-remaining-{kind}")
                out[kind] = HeaderLimit(float(limit), float(remaining) if remaining else None)
            except ValueError:
                continue
        return out

    def bucket_amounts(
        self, prompt_tokens: int, max_output_tokens: int, cached_guess: int
    ) -> dict[str, float]:
        # OpenAI counts prompt tokens plus max_completion_tokens at admission; cached tokens still count.
        return {"requests": 1.0, "tokens": float(prompt_tokens + max_output_tokens)}

    def bucket_actuals(self, usage: TokenUsage, max_output_tokens: int) -> dict[str, float]:
        return {"requests": 1.0, "tokens": float(usage.input_tokens + max_output_tokens)}
