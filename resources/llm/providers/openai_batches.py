"""OpenAI Batch API wire format: JSONL input lines, files upload/download, batches create/get/list/cancel, and
result lines. HTTP errors are classified by the caller's transport (batch.py); nothing here retries or prices."""

from __future__ import annotations

import json
from typing import Any, Protocol

import httpx

from resources.llm.errors import ProviderError
from resources.llm.types import BatchLineResult

BATCH_ENDPOINT = "/v1/chat/completions"
MAX_LINES = 50_000
MAX_BYTES = 200 * 1024 * 1024
SUBMISSION_METADATA_KEY = "chunkwise_submission_id"
_STATE = {
    "validating": "in_progress",
    "in_progress": "in_progress",
    "finalizing": "in_progress",
    "cancelling": "cancelling",
    "completed": "ended",
    "failed": "ended",
    "expired": "ended",
    "cancelled": "ended",
}


class Transport(Protocol):
    def send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send one request; raises the classified JobFatalError / ChunkRetryableError on failure."""
        ...


class OpenAIBatches:
    name = "openai"
    max_lines = MAX_LINES
    max_bytes = MAX_BYTES

    def custom_id(self, key: str) -> str:
        """OpenAI accepts any unique string: the idempotency key itself."""
        return key

    def line(self, custom_id: str, body: dict[str, Any]) -> bytes:
        """One JSONL input line (with its newline) for a Chat Completions body."""
        row = {"custom_id": custom_id, "method": "POST", "url": BATCH_ENDPOINT, "body": body}
        return (json.dumps(row, separators=(",", ":")) + "\n").encode()

    def upload(self, t: Transport, base_url: str, data: bytes, filename: str) -> str:
        """Upload a JSONL input file (purpose=batch); returns the file id."""
        response = t.send(
            "POST",
            base_url.rstrip("/") + "/files",
            files={"file": (filename, data, "application/jsonl")},
            data={"purpose": "batch"},
        )
        return str(response.json()["id"])

    def create(self, t: Transport, base_url: str, input_file_id: str, submission_id: str) -> dict[str, Any]:
        """Create the batch; our submission id travels in `metadata` so a crashed submitter can find it."""
        response = t.send(
            "POST",
            base_url.rstrip("/") + "/batches",
            json={
                "input_file_id": input_file_id,
                "endpoint": BATCH_ENDPOINT,
                "completion_window": "24h",
                "metadata": {SUBMISSION_METADATA_KEY: submission_id},
            },
        )
        return response.json()

    def find(self, t: Transport, base_url: str, submission_id: str, since_s: float) -> str | None:
        """The id of a batch created at or after `since_s` (epoch seconds, minus a minute of clock skew) whose
        metadata names `submission_id`; None when there is none. Pages newest first and stops at `since_s`."""
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if after:
                params["after"] = after
            page = t.send("GET", base_url.rstrip("/") + "/batches", params=params).json()
            rows = page.get("data") or []
            for row in rows:
                if (row.get("metadata") or {}).get(SUBMISSION_METADATA_KEY) == submission_id:
                    return str(row["id"])
            older = [r for r in rows if float(r.get("created_at") or 0) < since_s - 60]
            if not page.get("has_more") or not rows or older:
                return None
            after = rows[-1]["id"]

    def get(self, t: Transport, base_url: str, batch_id: str) -> dict[str, Any]:
        return t.send("GET", f"{base_url.rstrip('/')}/batches/{batch_id}").json()

    def cancel(self, t: Transport, base_url: str, batch_id: str) -> dict[str, Any]:
        return t.send("POST", f"{base_url.rstrip('/')}/batches/{batch_id}/cancel").json()

    def status_fields(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Provider-neutral status fields (see BatchStatus) from a batch object."""
        status = str(batch.get("status"))
        counts = batch.get("request_counts") or {}
        total, done, failed = (int(counts.get(k) or 0) for k in ("total", "completed", "failed"))
        state = _STATE.get(status, "in_progress")
        return {
            "state": state,
            "provider_status": status,
            "total": total,
            "succeeded": done,
            "errored": failed,
            "processing": max(0, total - done - failed) if state != "ended" else 0,
        }

    def failure_reason(self, batch: dict[str, Any]) -> str | None:
        """Why the provider rejected the whole batch (status "failed"), else None."""
        if batch.get("status") != "failed":
            return None
        errors = (batch.get("errors") or {}).get("data") or []
        text = "; ".join(f"{e.get('code')}: {e.get('message')} (line {e.get('line')})" for e in errors[:5])
        return text or "no reason given"

    def results(self, t: Transport, base_url: str, batch: dict[str, Any]) -> list[BatchLineResult]:
        """Every result line of an ended batch: the output file (status 200 and HTTP errors) and the error file."""
        out: list[BatchLineResult] = []
        for file_key in ("output_file_id", "error_file_id"):
            file_id = batch.get(file_key)
            if not file_id:
                continue
            data = t.send("GET", f"{base_url.rstrip('/')}/files/{file_id}/content").content
            for raw in data.decode("utf-8").splitlines():
                if raw.strip():
                    out.append(self.parse_line(json.loads(raw)))
        return out

    def parse_line(self, row: dict[str, Any]) -> BatchLineResult:
        custom_id = str(row.get("custom_id"))
        response = row.get("response")
        if isinstance(response, dict):
            status = int(response.get("status_code") or 0)
            body = response.get("body") or {}
            if status == 200:
                return BatchLineResult(custom_id, "succeeded", payload=body)
            err = body.get("error") if isinstance(body, dict) else None
            err = err if isinstance(err, dict) else {}
            code = err.get("code")
            return BatchLineResult(
                custom_id,
                "errored",
                error=ProviderError(
                    status,
                    err.get("type"),
                    str(code) if code is not None else None,
                    str(err.get("message", ""))[:1000],
                    None,
                ),
            )
        err = row.get("error") or {}
        code = str(err.get("code") or "")
        if code == "batch_expired":
            return BatchLineResult(custom_id, "expired")
        if code == "batch_cancelled":
            return BatchLineResult(custom_id, "canceled")
        # A failure without an HTTP answer: treat as a server-side error, which the classifier retries.
        message = str(err.get("message", ""))[:1000]
        return BatchLineResult(custom_id, "errored", error=ProviderError(500, None, code, message, None))
