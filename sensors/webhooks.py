"""POSTing a JSON notice to a webhook whose URL is a secret (Slack-style URLs carry their token).

The URL comes from an environment variable read at each tick and never appears in a log line, a message, an
exception or a cursor: httpx logs each request's URL at INFO, so those records are dropped, and a failure is
described by its class or status only.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import httpx


class _HideSecretURLs(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(secret in message for secret in self.secrets)


_hide = _HideSecretURLs()
logging.getLogger("httpx").addFilter(_hide)


def webhook_url(env_var: str) -> str | None:
    """The webhook URL in `env_var`, or None when it is unset or blank."""
    return os.environ.get(env_var, "").strip() or None


def post_json(url: str, body: dict[str, Any], timeout_s: float = 5.0) -> str | None:
    """POST `body`; None on a 2xx answer, else what went wrong (never the URL)."""
    _hide.secrets.add(url)
    try:
        response = httpx.post(url, json=body, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"


def deliver(url: str | None, pending: list[dict[str, Any]], timeout_s: float = 5.0) -> tuple[int, str | None]:
    """POST `pending` in order, removing each one delivered; stop at the first failure (kept for the next tick).

    Returns (delivered, problem). With no URL nothing is sent and `pending` is left as it is.
    """
    if url is None:
        return 0, None
    delivered = 0
    while pending:
        problem = post_json(url, pending[0], timeout_s)
        if problem:
            return delivered, problem
        pending.pop(0)
        delivered += 1
    return delivered, None
