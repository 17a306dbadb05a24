"""What every provider adapter exposes to the engine."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from resources.llm.errors import ProviderError
from resources.llm.state_store import HeaderLimit
from resources.llm.transport import WireResponse
from resources.llm.types import TokenUsage

Reply = httpx.Response | WireResponse
"""A provider's HTTP reply: the online client's (transport.py) or httpx's (the batch APIs' calls)."""


@dataclass(frozen=True)
class WireRequest:
    """A request ready to send, plus what the estimator needs: `message_texts` as the provider counts them
    and `schema_param` when the schema travels as a request parameter (it then counts as prompt tokens)."""

    path: str
    body: dict[str, Any]
    message_texts: list[str]
    schema_param: dict | None


@dataclass(frozen=True)
class ParsedReply:
    content: str | None
    finish_reason: str | None  # normalised: "stop", "length", "refusal", "content_filter", ...
    refusal: str | None
    usage: TokenUsage
    usage_reported: bool = True  # False: the reply had no usage (the engine estimates the tokens)


class ProviderAdapter(Protocol):
    name: str
    header_kinds: tuple[str, ...]

    def url(self, base_url: str) -> str: ...

    def headers(self, api_key: str) -> dict[str, str]: ...

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
    ) -> WireRequest: ...

    def parse_reply(self, payload: dict[str, Any]) -> ParsedReply: ...

    def parse_error(self, response: Reply) -> ProviderError: ...

    def rate_headers(self, headers: Mapping[str, str]) -> dict[str, HeaderLimit]: ...

    def bucket_amounts(
        self, prompt_tokens: int, max_output_tokens: int, cached_guess: int
    ) -> dict[str, float]: ...

    def bucket_actuals(self, usage: TokenUsage, max_output_tokens: int) -> dict[str, float]: ...


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds the provider asks us to wait: retry-after-ms (OpenAI) first, then retry-after (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        try:
            when = dt.datetime.strptime(ra, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=dt.UTC)
        except ValueError:
            return None
        return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def error_body(response: Reply) -> tuple[str | None, str | None, str]:
    """(type, code, message) from either provider's error JSON; falls back to the raw text."""
    try:
        data = response.json()
    except (json.JSONDecodeError, ValueError):
        return None, None, response.text[:500]
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        return err.get("type"), str(code) if code is not None else None, str(err.get("message", ""))[:1000]
    return None, None, json.dumps(data)[:500]


def schema_instructions(schema: dict) -> str:
    """The schema as instructions, for servers without structured-output support (structured_output="prompt")."""
    return (
        "\n\nReply with only a JSON object that conforms to this JSON schema, with no other text:\n```json\n"
        + json.dumps(schema, indent=2)
        + "\n```"
    )


def repair_instruction(error: str) -> str:
    """The repair turn: quotes the validator's message verbatim (a grammar cannot enforce every keyword, e.g.
    a number's maximum, so the model is told exactly which value broke which rule)."""
    return (
        "Your previous reply was rejected. The validator said, verbatim:\n"
        f"{error}\n"
        "Correct exactly that and reply again with only a JSON object that conforms to the required schema."
    )
