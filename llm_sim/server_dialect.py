"""How the simulated OpenAI-compatible server differs from the official API: the `server` config key.

```yaml
server:
  dialect: llamacpp          # a preset: llama-cpp-python's server (below); default openai (the official API)
  cap_params: [max_tokens]   # request keys that cap the output, read in order; others are ignored
  rate_limit_headers: false  # no x-ratelimit-* headers
  usage_details: false       # no prompt_tokens_details / completion_tokens_details (and no cached tokens)
  response_formats: [text, json_object]  # other response_format types: HTTP 500 with pydantic's message
  context_tokens: 2048       # context window: a prompt that fills it is a 400 context_length_exceeded; the output
                             # is cut at what is left; a request with no cap it reads writes until the window is full
  record_bodies: false       # keep every chat request body, served at GET /_sim/bodies
  percent_numbers: false     # a small model under a grammar that cannot bound numbers: a property whose schema
                             # says maximum <= 1 is written as a percentage (0.85 -> 85)
```

The `llamacpp` preset is what llama-cpp-python 0.3's server does: it reads `max_tokens` only (so a
`max_completion_tokens`-only request generates to the context limit), sends no rate-limit headers and no usage
details, and rejects `response_format.type: json_schema` with HTTP 500 "Input should be 'text' or 'json_object'".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

OPENAI_FORMATS = ("text", "json_object", "json_schema")


@dataclass(frozen=True)
class ServerDialect:
    name: str = "openai"
    cap_params: tuple[str, ...] = ("max_completion_tokens", "max_tokens")
    rate_limit_headers: bool = True
    usage_details: bool = True
    response_formats: tuple[str, ...] = OPENAI_FORMATS
    context_tokens: int | None = None
    record_bodies: bool = False
    percent_numbers: bool = False

    def output_cap(self, body: dict[str, Any]) -> int | None:
        """The cap this server reads from the request (the first honoured key present)."""
        for key in self.cap_params:
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                return value
        return None

    def format_error(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The 500 body llama-cpp-python sends for a response_format type it does not know, or None."""
        response_format = body.get("response_format")
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind is None or kind in self.response_formats:
            return None
        allowed = " or ".join(f"'{f}'" for f in self.response_formats)
        detail = (
            f"[{{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': "
            f"\"Input should be {allowed}\", 'input': {kind!r}, 'ctx': {{'expected': \"{allowed}\"}}}}]"
        )
        return {"error": {"message": detail, "type": "internal_server_error", "param": None, "code": None}}


PRESETS = {
    "openai": ServerDialect(),
    "llamacpp": ServerDialect(
        name="llamacpp",
        cap_params=("max_tokens",),
        rate_limit_headers=False,
        usage_details=False,
        response_formats=("text", "json_object"),
        context_tokens=2048,
    ),
}
_KEYS = {"dialect", "cap_params", "rate_limit_headers", "usage_details", "response_formats", "context_tokens",
         "record_bodies", "percent_numbers"}  # fmt: skip


def server_dialect(raw: dict[str, Any] | None) -> ServerDialect:
    """The `server` config section: a preset (`dialect`) with any key overridden."""
    from llm_sim.config import ConfigError  # config imports this module

    raw = dict(raw or {})
    unknown = set(raw) - _KEYS
    if unknown:
        raise ConfigError(f"unknown server keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    name = raw.pop("dialect", "openai")
    if name not in PRESETS:
        raise ConfigError(f"server.dialect must be one of {sorted(PRESETS)}, got {name!r}")
    dialect = PRESETS[name]
    if "cap_params" in raw:
        raw["cap_params"] = tuple(str(k) for k in raw["cap_params"] or ())
    if "response_formats" in raw:
        raw["response_formats"] = tuple(str(k) for k in raw["response_formats"] or ())
    if raw.get("context_tokens") is not None:
        raw["context_tokens"] = int(raw["context_tokens"])
    return replace(dialect, **raw)


def context_error(context_tokens: int, prompt_tokens: int, cap: int | None) -> dict[str, Any]:
    """llama-cpp-python's 400 for a prompt that does not fit the context window (OpenAI's wording)."""
    completion = cap or 0
    message = (
        f"This model's maximum context length is {context_tokens} tokens. However, you requested "
        f"{prompt_tokens + completion} tokens ({prompt_tokens} in the messages, {completion} in the completion). "
        "Please reduce the length of the messages or completion."
    )
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }


def as_percentages(value: Any, schema: Any) -> Any:
    """`value` with every number whose schema has `maximum` <= 1 written as a whole percentage (0.85 -> 85)."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        return {k: as_percentages(v, props.get(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [as_percentages(v, schema.get("items")) for v in value]
    high = schema.get("maximum")
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and isinstance(high, int | float)
        and high <= 1
    ):
        return round(value * 100)
    return value
