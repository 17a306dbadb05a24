"""Anthropic Message Batches wire format: create (requests inline), get, list, cancel, JSONL results.
HTTP errors are classified by the caller's transport (batch.py); nothing here retries or prices."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any

from resources.llm.errors import ProviderError
from resources.llm.providers.openai_batches import Transport
from resources.llm.types import BatchLineResult

MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024 * 1024
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Anthropic's batch error lines carry an error type but no HTTP status; the status each type is sent with online.
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_STATE = {"in_progress": "in_progress", "canceling": "cancelling", "ended": "ended"}


class AnthropicBatches:
    name = "anthropic"
    max_lines = MAX_REQUESTS
    max_bytes = MAX_BYTES

    def custom_id(self, key: str) -> str:
        """Anthropic allows ^[a-zA-Z0-9_-]{1,64}$: the key itself when it fits, else "k-" + 40 hex of its sha256
        (our idempotency keys contain '|', so in practice the digest)."""
        if _CUSTOM_ID.match(key) and not key.startswith("k-"):
            return key
        return "k-" + hashlib.sha256(key.encode()).hexdigest()[:40]

    def line(self, custom_id: str, body: dict[str, Any]) -> bytes:
        """One request entry as JSON bytes (for the size limit; create() sends them as one JSON array)."""
        return json.dumps({"custom_id": custom_id, "params": body}, separators=(",", ":")).encode()

    def create(self, t: Transport, base_url: str, lines: list[bytes]) -> dict[str, Any]:
        body = b'{"requests":[' + b",".join(lines) + b"]}"
        return t.send("POST", base_url.rstrip("/") + "/v1/messages/batches", content=body).json()

    def list_since(self, t: Transport, base_url: str, since_s: float) -> list[dict[str, Any]]:
        """Batches created at or after `since_s` (epoch seconds), newest first (pages until older ones)."""
        out: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if after:
                params["after_id"] = after
            page = t.send("GET", base_url.rstrip("/") + "/v1/messages/batches", params=params).json()
            rows = page.get("data") or []
            stop = False
            for row in rows:
                if created_s(row) >= since_s:
                    out.append(row)
                else:
                    stop = True
            if stop or not page.get("has_more") or not rows:
                return out
            after = page.get("last_id") or rows[-1]["id"]

    def get(self, t: Transport, base_url: str, batch_id: str) -> dict[str, Any]:
        return t.send("GET", f"{base_url.rstrip('/')}/v1/messages/batches/{batch_id}").json()

    def cancel(self, t: Transport, base_url: str, batch_id: str) -> dict[str, Any]:
        return t.send("POST", f"{base_url.rstrip('/')}/v1/messages/batches/{batch_id}/cancel").json()

    def status_fields(self, batch: dict[str, Any]) -> dict[str, Any]:
        status = str(batch.get("processing_status"))
        counts = {k: int(v or 0) for k, v in (batch.get("request_counts") or {}).items()}
        return {
            "state": _STATE.get(status, "in_progress"),
            "provider_status": status,
            "total": sum(counts.values()),
            "succeeded": counts.get("succeeded", 0),
            "errored": counts.get("errored", 0),
            "processing": counts.get("processing", 0),
            "expired": counts.get("expired", 0),
            "canceled": counts.get("canceled", 0),
        }

    def failure_reason(self, batch: dict[str, Any]) -> str | None:
        return None  # Anthropic validates at create time: a bad request never becomes a batch

    def results(self, t: Transport, base_url: str, batch: dict[str, Any]) -> list[BatchLineResult]:
        url = batch.get("results_url") or f"{base_url.rstrip('/')}/v1/messages/batches/{batch['id']}/results"
        data = t.send("GET", url).content
        return [self.parse_line(json.loads(raw)) for raw in data.decode("utf-8").splitlines() if raw.strip()]

    def parse_line(self, row: dict[str, Any]) -> BatchLineResult:
        custom_id = str(row.get("custom_id"))
        result = row.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded":
            return BatchLineResult(custom_id, "succeeded", payload=result.get("message") or {})
        if kind in ("expired", "canceled"):
            return BatchLineResult(custom_id, kind)
        outer = result.get("error") or {}
        err = outer.get("error") if isinstance(outer.get("error"), dict) else outer
        etype = str(err.get("type") or "api_error")
        message = str(err.get("message", ""))[:1000]
        status = _STATUS_BY_TYPE.get(etype, 500)
        return BatchLineResult(custom_id, "errored", error=ProviderError(status, etype, None, message, None))


def created_s(batch: dict[str, Any]) -> float:
    """A batch's created_at (RFC 3339) as epoch seconds."""
    text = str(batch.get("created_at") or "")
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
