"""Server dialects: what "OpenAI-compatible" means for each server Chunkwise knows.

Every server below speaks Chat Completions, but they differ in the parameter that caps the output, the
structured-output mode they accept, the usage they report and whether they send rate-limit headers. A dialect
is chosen by the LLM resource's `dialect` field (the `openai` provider only; Anthropic has one wire format).

| dialect | output cap sent | structured output (default) | rate-limit headers | default max_concurrency |
| --- | --- | --- | --- | --- |
| `openai` (the official API) | `max_completion_tokens` (`max_tokens` is deprecated there) | `json_schema` (strict) | yes | 32 |
| `llamacpp` (llama-cpp-python server, llama.cpp `llama-server`) | `max_tokens` (llama-cpp-python ignores `max_completion_tokens`) | `json_object` with `schema` (llama-cpp-python answers HTTP 500 "Input should be 'text' or 'json_object'" to `json_schema`; llama-server accepts both) | no | 1 (one slot unless started with `--parallel`) |
| `vllm` | `max_tokens` (read by every vLLM version; newer ones also read `max_completion_tokens`) | `json_schema` (guided decoding; `guided_json` is the older extra parameter, not used) | no | 32 (continuous batching) |
| `ollama` (its `/v1` endpoint) | `max_tokens` (the only cap its OpenAI layer documents) | `json_schema` (Ollama >= 0.5 turns it into a grammar; the native `format` field is on `/api/chat` only) | no | 1 (`OLLAMA_NUM_PARALLEL`) |
| `litellm` (proxy) | `max_tokens` (LiteLLM maps it to each backend's own name, `max_completion_tokens` for OpenAI reasoning models) | `json_schema` (translated per backend) | passed through from the backend when it sends them | 32 |
| `openai_compatible` (any other server) | both `max_tokens` and `max_completion_tokens` (servers built on pydantic/FastAPI ignore the one they do not know) | `json_schema` | read when present | 8 |

Usage: `prompt_tokens` and `completion_tokens` are read on every dialect; `prompt_tokens_details` (cached
tokens) is optional and counts as zero when absent (llama.cpp, Ollama, vLLM without
`--enable-prompt-tokens-details`). A reply without `usage` is estimated with the token estimator and logged.

llama.cpp compiles a string's `maxLength` into nested repetition rules: at `maxLength: 1200` (the reviews
pipeline's reply body) llama-cpp-python 0.3.36 logged "number of rules that are going to be repeated multiplied
by the new repetition exceeds sane defaults", "failed to parse grammar", and its server process died. So the
`llamacpp` dialect sends the schema without string length bounds (`grammar_string_lengths=False`); the replies
are still validated against the full schema, and an over-long string is repaired or dead-lettered like any
other violation.

Whatever the dialect, the engine checks the reported output tokens against the cap after every reply
(`runner.py`): a server that ignores the parameter it was sent is named on its first reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dialect:
    """How to talk to one kind of OpenAI-compatible server. `cap_params`: the request keys that carry the output
    cap; `structured_output`: the mode used unless the resource sets one; `max_concurrency`: the default number of
    requests in flight (a local server's slots); `grammar_string_lengths`: whether the schema sent may keep strings'
    `minLength`/`maxLength` (False: they are left out of what the server gets and only validated here)."""

    name: str
    cap_params: tuple[str, ...]
    structured_output: str
    max_concurrency: int
    description: str
    grammar_string_lengths: bool = True

    def schema_for_server(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The schema as this server gets it (the full one is what replies are validated against)."""
        return schema if self.grammar_string_lengths else _without_string_lengths(schema)


def _without_string_lengths(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: _without_string_lengths(value)
            for key, value in node.items()
            if key not in ("minLength", "maxLength")
        }
    if isinstance(node, list):
        return [_without_string_lengths(value) for value in node]
    return node


DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        Dialect("openai", ("max_completion_tokens",), "json_schema", 32, "the official OpenAI API"),
        Dialect(
            "llamacpp",
            ("max_tokens",),
            "json_object",
            1,
            "llama.cpp's server or llama-cpp-python's (`python -m llama_cpp.server`)",
            grammar_string_lengths=False,
        ),
        Dialect("vllm", ("max_tokens",), "json_schema", 32, "vLLM's OpenAI-compatible server"),
        Dialect("ollama", ("max_tokens",), "json_schema", 1, "Ollama's /v1 endpoint"),
        Dialect("litellm", ("max_tokens",), "json_schema", 32, "the LiteLLM proxy"),
        Dialect(
            "openai_compatible",
            ("max_tokens", "max_completion_tokens"),
            "json_schema",
            8,
            "any other OpenAI-compatible server",
        ),
    )
}
# Anthropic's Messages API has one wire format: `max_tokens`, `output_config` json_schema, its own headers.
ANTHROPIC = Dialect("anthropic", ("max_tokens",), "json_schema", 32, "Anthropic's Messages API")


def dialect_for(provider: str, name: str | None) -> Dialect:
    """The dialect named `name` for `provider` (None: the provider's own API); unknown names raise ValueError."""
    if provider == "anthropic":
        if name not in (None, "anthropic"):
            raise ValueError(
                f"dialect={name!r} applies to provider 'openai' only; leave dialect unset for provider 'anthropic'"
            )
        return ANTHROPIC
    dialect = DIALECTS.get(name or "openai")
    if dialect is None:
        raise ValueError(f"unknown dialect {name!r}; use one of {', '.join(DIALECTS)}")
    return dialect


def cap_advice(dialect: Dialect) -> str:
    """What to set when a server ignored the output-cap parameter(s) `dialect` sends."""
    if dialect.cap_params == ("max_completion_tokens",):
        return "set dialect: llamacpp (sends max_tokens), or openai_compatible (sends both)"
    if "max_completion_tokens" not in dialect.cap_params:
        return "set dialect: openai_compatible (sends max_tokens and max_completion_tokens)"
    return (
        "the server honours neither max_tokens nor max_completion_tokens; cap the output on the server "
        "(llama.cpp: --n-predict) or use a server that honours the request's cap"
    )
