"""Small HTTP helpers shared by both providers' routes."""

from __future__ import annotations

import json
import secrets
from typing import Any

from starlette.requests import Request


class DropConnection(Exception):  # noqa: N818 - it is an instruction, not an error condition
    """Raised mid-response to make the server cut the connection (the `drop` fault)."""


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + secrets.token_hex(length // 2)


async def read_json_object(request: Request) -> dict[str, Any] | None:
    """The request body as a JSON object, or None if it is not one."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


async def dropped_body():
    """A body that sends a first chunk and then fails, so the client sees a broken, incomplete response."""
    yield b'{"id": "'
    raise DropConnection("llm_sim drop fault: connection cut on purpose")
