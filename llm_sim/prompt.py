"""A provider-neutral view of one request: segments of text in order, the output schema, the output cap."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from llm_sim.tokens import MESSAGE_OVERHEAD_TOKENS, PROMPT_OVERHEAD_TOKENS, count_tokens


class PromptError(ValueError):
    """The request body is malformed; the message names the field (sent back as a 400)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Segment:
    """One text block of the prompt. `message_start` marks the first block of a message (framing tokens)."""

    role: str
    text: str
    message_start: bool
    cache_control: dict[str, Any] | None = None


@dataclass
class Prompt:
    provider: str
    model: str
    segments: list[Segment]
    schema: dict[str, Any] | None
    schema_in_request: bool
    max_output_tokens: int | None
    params: dict[str, Any] = field(default_factory=dict)
    # The server read no cap: the "model" keeps writing until `max_output_tokens` (what the context has left).
    runaway: bool = False

    @property
    def user_texts(self) -> list[str]:
        texts: dict[int, list[str]] = {}
        index = -1
        for seg in self.segments:
            if seg.message_start:
                index += 1
            if seg.role == "user":
                texts.setdefault(index, []).append(seg.text)
        return ["\n".join(parts) for _, parts in sorted(texts.items())]

    @property
    def last_user_text(self) -> str:
        texts = self.user_texts
        return texts[-1] if texts else ""

    @property
    def user_sha256(self) -> str:
        return hashlib.sha256(self.last_user_text.encode()).hexdigest()

    @property
    def full_text(self) -> str:
        return "\n".join(seg.text for seg in self.segments)

    def prompt_tokens(self) -> int:
        """Input tokens: per message (content + 4) + 3, plus the schema JSON when given as a request parameter."""
        total = PROMPT_OVERHEAD_TOKENS
        for seg in self.segments:
            if seg.message_start:
                total += MESSAGE_OVERHEAD_TOKENS
            total += count_tokens(seg.text)
        if self.schema is not None and self.schema_in_request:
            total += count_tokens(json.dumps(self.schema))
        return total


_FENCED_JSON = re.compile(r"```json\s*\n(.*?)```", re.DOTALL)


def schema_from_text(text: str) -> dict[str, Any] | None:
    """The first ```json fenced block in `text` that parses to a JSON schema object, else None."""
    for block in _FENCED_JSON.findall(text):
        try:
            candidate = json.loads(block)
        except json.JSONDecodeError:
            continue
        if isinstance(candidate, dict) and ("properties" in candidate or candidate.get("type") == "object"):
            return candidate
    return None


def _content_blocks(content: Any, where: str) -> list[tuple[str, dict[str, Any] | None]]:
    if content is None:
        return [("", None)]
    if isinstance(content, str):
        return [(content, None)]
    if isinstance(content, list):
        blocks = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                blocks.append((part, None))
            elif isinstance(part, dict):
                if part.get("type") not in ("text", "input_text", None):
                    raise PromptError(
                        f"{where}[{i}].type {part.get('type')!r} is not supported (text only)", where
                    )
                blocks.append((str(part.get("text", "")), part.get("cache_control")))
            else:
                raise PromptError(f"{where}[{i}] must be an object", where)
        return blocks or [("", None)]
    raise PromptError(f"{where} must be a string or a list of content blocks", where)


def _message_segments(messages: Any, where: str) -> list[Segment]:
    if not isinstance(messages, list) or not messages:
        raise PromptError(f"'{where}' must be a non-empty list of messages", where)
    segments: list[Segment] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise PromptError(f"{where}[{i}] must be an object with a 'role'", f"{where}[{i}]")
        blocks = _content_blocks(message.get("content"), f"{where}[{i}].content")
        for j, (text, cache_control) in enumerate(blocks):
            segments.append(Segment(str(message["role"]), text, j == 0, cache_control))
    return segments


def _positive_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PromptError(f"'{key}' must be a positive integer, got {value!r}", key)
    return value


def openai_prompt(body: dict[str, Any]) -> Prompt:
    """Parse a Chat Completions request body."""
    model = body.get("model")
    if not isinstance(model, str):
        raise PromptError("you must provide a model parameter", "model")
    segments = _message_segments(body.get("messages"), "messages")
    schema = None
    in_request = False
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema")
            if not isinstance(schema, dict):
                raise PromptError("response_format.json_schema.schema must be an object", "response_format")
            name = spec.get("name", "")
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(name)):
                raise PromptError(
                    "response_format.json_schema.name must match ^[a-zA-Z0-9_-]{1,64}$", "response_format"
                )
            in_request = True
        elif kind == "json_object" and isinstance(response_format.get("schema"), dict):
            schema, in_request = response_format["schema"], True
        elif kind not in ("text", "json_object"):
            raise PromptError(f"response_format.type {kind!r} is not supported", "response_format")
    if schema is None:
        system_text = "\n".join(s.text for s in segments if s.role in ("system", "developer"))
        schema = schema_from_text(system_text)
    max_out = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    if body.get("stream"):
        raise PromptError("stream=true is not supported by the simulator; send stream=false", "stream")
    return Prompt("openai", model, segments, schema, in_request, max_out, body)


def anthropic_prompt(body: dict[str, Any]) -> Prompt:
    """Parse a Messages request body."""
    model = body.get("model")
    if not isinstance(model, str):
        raise PromptError("model: Field required", "model")
    max_tokens = _positive_int(body, "max_tokens")
    if max_tokens is None:
        raise PromptError("max_tokens: Field required", "max_tokens")
    segments: list[Segment] = []
    system = body.get("system")
    if system is not None:
        for j, (text, cache_control) in enumerate(_content_blocks(system, "system")):
            segments.append(Segment("system", text, j == 0, cache_control))
    segments += _message_segments(body.get("messages"), "messages")
    schema = None
    in_request = False
    fmt = (
        (body.get("output_config") or {}).get("format")
        if isinstance(body.get("output_config"), dict)
        else None
    )
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise PromptError("output_config.format.schema: must be an object", "output_config")
        schema, in_request = fmt["schema"], True
    if schema is None:
        schema = schema_from_text("\n".join(s.text for s in segments if s.role == "system"))
    if body.get("stream"):
        raise PromptError("stream: streaming is not supported by the simulator", "stream")
    return Prompt("anthropic", model, segments, schema, in_request, max_tokens, body)
