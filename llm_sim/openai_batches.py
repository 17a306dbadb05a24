"""OpenAI Batch API routes: files upload/download and batches create/get/cancel/list."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llm_sim import openai_wire
from llm_sim.batch_store import BatchLine, BatchStore, SimBatch, StoredFile
from llm_sim.http_common import bearer_token, new_id, read_json_object
from llm_sim.prompt import PromptError, openai_prompt

OPENAI_BATCH_ENDPOINT = "/v1/chat/completions"
MAX_OPENAI_LINES = 50_000


def _ts(value: float | None) -> int | None:
    return None if value is None else int(value)


def openai_batch_object(batch: SimBatch) -> dict[str, Any]:
    completed = batch.count("succeeded")
    failed = batch.count("errored") + (
        batch.count("expired") if batch.status in ("completed", "expired") else 0
    )
    usage = {"input_tokens": 0, "output_tokens": 0, "cached": 0}
    for line in batch.lines:
        if line.state == "succeeded" and line.result:
            body_usage = line.result["response"]["body"]["usage"]
            usage["input_tokens"] += body_usage["prompt_tokens"]
            usage["output_tokens"] += body_usage["completion_tokens"]
            usage["cached"] += body_usage["prompt_tokens_details"]["cached_tokens"]
    times = batch.times
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": OPENAI_BATCH_ENDPOINT,
        "errors": batch.meta.get("errors"),
        "input_file_id": batch.meta["input_file_id"],
        "completion_window": batch.meta.get("completion_window", "24h"),
        "status": batch.status,
        "output_file_id": batch.meta.get("output_file_id"),
        "error_file_id": batch.meta.get("error_file_id"),
        "created_at": int(batch.created_at),
        "in_progress_at": _ts(times.get("in_progress_at")),
        "expires_at": int(batch.created_at) + 24 * 3600,
        "finalizing_at": _ts(times.get("finalizing_at")),
        "completed_at": _ts(times.get("completed_at")),
        "failed_at": _ts(times.get("failed_at")),
        "expired_at": _ts(times.get("expired_at")),
        "cancelling_at": _ts(times.get("cancelling_at")),
        "cancelled_at": _ts(times.get("cancelled_at")),
        "request_counts": {"total": len(batch.lines), "completed": completed, "failed": failed},
        "metadata": batch.meta.get("metadata"),
        "usage": {
            "input_tokens": usage["input_tokens"],
            "input_tokens_details": {"cached_tokens": usage["cached"]},
            "output_tokens": usage["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["input_tokens"] + usage["output_tokens"],
        },
    }


def _openai_auth(request: Request) -> Response | None:
    if bearer_token(request) in request.app.state.engine.config.keys:
        return None
    return JSONResponse(openai_wire.unauthorized_body(request), status_code=401)


def _openai_error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        openai_wire.error_body(message, "invalid_request_error", None, param), status_code=status
    )


async def upload_file(request: Request) -> Response:
    if (denied := _openai_auth(request)) is not None:
        return denied
    store: BatchStore = request.app.state.batches
    async with request.form(max_part_size=256 * 1024 * 1024) as form:
        upload = form.get("file")
        purpose = form.get("purpose")
        if upload is None or isinstance(upload, str):
            return _openai_error(400, "'file' is a required multipart field", "file")
        if purpose not in ("batch", "fine-tune", "assistants", "user_data", "evals", "vision"):
            return _openai_error(
                400, f"'purpose' must be 'batch' for batch input, got {purpose!r}", "purpose"
            )
        data = await upload.read()
        stored = store.add_file(upload.filename or "upload.jsonl", str(purpose), data)
    return JSONResponse(stored.describe())


def _stored_file(request: Request) -> StoredFile | None:
    return request.app.state.batches.files.get(request.path_params["file_id"])


async def get_file(request: Request) -> Response:
    if (denied := _openai_auth(request)) is not None:
        return denied
    stored = _stored_file(request)
    if stored is None:
        return _openai_error(404, f"No such File object: {request.path_params['file_id']}", "id")
    if request.method == "DELETE":
        del request.app.state.batches.files[stored.id]
        return JSONResponse({"id": stored.id, "object": "file", "deleted": True})
    return JSONResponse(stored.describe())


async def get_file_content(request: Request) -> Response:
    if (denied := _openai_auth(request)) is not None:
        return denied
    stored = _stored_file(request)
    if stored is None:
        return _openai_error(404, f"No such File object: {request.path_params['file_id']}", "id")
    return Response(stored.data, media_type="application/octet-stream")


def _parse_openai_lines(data: bytes) -> tuple[list[BatchLine], list[dict[str, Any]]]:
    lines: list[BatchLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            errors.append(
                {
                    "code": "invalid_json_line",
                    "message": "This line is not parseable as valid JSON.",
                    "line": number,
                }
            )
            continue
        custom_id = row.get("custom_id") if isinstance(row, dict) else None
        if not isinstance(custom_id, str) or not custom_id:
            errors.append(
                {"code": "missing_required_parameter", "message": "custom_id is required.", "line": number}
            )
            continue
        if custom_id in seen:
            errors.append(
                {
                    "code": "duplicate_custom_id",
                    "message": f"custom_id {custom_id!r} is not unique.",
                    "line": number,
                }
            )
            continue
        seen.add(custom_id)
        if row.get("url") != OPENAI_BATCH_ENDPOINT or row.get("method") != "POST":
            message = f"The URL provided for this request does not match the batch endpoint {OPENAI_BATCH_ENDPOINT}."
            errors.append({"code": "mismatched_endpoint", "message": message, "line": number})
            continue
        body = row.get("body")
        if not isinstance(body, dict):
            errors.append(
                {"code": "invalid_request", "message": "body must be a JSON object.", "line": number}
            )
            continue
        try:
            prompt = openai_prompt(body)
        except PromptError as exc:
            lines.append(BatchLine(custom_id, None, (400, "invalid_request_error", str(exc))))
            continue
        lines.append(BatchLine(custom_id, prompt, None))
    if len(lines) > MAX_OPENAI_LINES:
        errors.append(
            {"code": "too_many_requests", "message": f"at most {MAX_OPENAI_LINES} requests", "line": None}
        )
    return lines, errors


async def create_openai_batch(request: Request) -> Response:
    if (denied := _openai_auth(request)) is not None:
        return denied
    store: BatchStore = request.app.state.batches
    body = await read_json_object(request)
    if body is None:
        return _openai_error(400, "The body must be a JSON object.")
    if body.get("endpoint") != OPENAI_BATCH_ENDPOINT:
        return _openai_error(400, f"endpoint must be {OPENAI_BATCH_ENDPOINT!r} in this simulator", "endpoint")
    if body.get("completion_window") != "24h":
        return _openai_error(400, "completion_window must be '24h'", "completion_window")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16):
        return _openai_error(400, "metadata must be an object of at most 16 pairs", "metadata")
    stored = store.files.get(str(body.get("input_file_id")))
    if stored is None:
        return _openai_error(404, f"No such File object: {body.get('input_file_id')}", "input_file_id")
    lines, errors = _parse_openai_lines(stored.data)
    for line in lines:
        if line.prompt is not None and store.engine.model(line.prompt.model, "openai") is None:
            message = f"The model `{line.prompt.model}` does not exist or you do not have access to it."
            line.problem = (404, "invalid_request_error", message)
    now = time.time()
    batch = SimBatch(
        new_id("batch_"),
        "openai",
        lines,
        now,
        time.monotonic(),
        str(request.base_url).rstrip("/"),
        meta={"input_file_id": stored.id, "metadata": metadata, "completion_window": "24h"},
    )
    if errors or not lines:
        batch.status = "failed"
        batch.times["failed_at"] = now
        batch.meta["errors"] = {
            "object": "list",
            "data": errors or [{"code": "empty_file", "message": "no requests"}],
        }
        store.batches[batch.id] = batch
        store.engine.ledger.batches["created"] += 1
        store.engine.ledger.batches["failed"] += 1
        return JSONResponse(openai_batch_object(batch))
    batch.times["in_progress_at"] = now
    store.start(batch)
    return JSONResponse(openai_batch_object(batch))


def _openai_batch(request: Request) -> SimBatch | None:
    batch = request.app.state.batches.batches.get(request.path_params["batch_id"])
    return batch if batch is not None and batch.provider == "openai" else None


async def get_openai_batch(request: Request) -> Response:
    if (denied := _openai_auth(request)) is not None:
        return denied
    batch = _openai_batch(request)
    if batch is None:
        return _openai_error(404, f"No batch found with id '{request.path_params['batch_id']}'.")
    return JSONResponse(openai_batch_object(batch))


async def cancel_openai_batch(request: Request) -> Response:
    if (denied := _openai_auth(request)) is not None:
        return denied
    batch = _openai_batch(request)
    if batch is None:
        return _openai_error(404, f"No batch found with id '{request.path_params['batch_id']}'.")
    if batch.status != "in_progress":
        return _openai_error(409, f"Cannot cancel a batch with status '{batch.status}'.")
    request.app.state.batches.cancel(batch)
    return JSONResponse(openai_batch_object(batch))


async def list_openai_batches(request: Request) -> Response:
    if (denied := _openai_auth(request)) is not None:
        return denied
    data = [
        openai_batch_object(b) for b in request.app.state.batches.batches.values() if b.provider == "openai"
    ]
    data.reverse()
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }
    )


def routes() -> list[Route]:
    return [
        Route("/v1/files", upload_file, methods=["POST"]),
        Route("/v1/files/{file_id}", get_file, methods=["GET", "DELETE"]),
        Route("/v1/files/{file_id}/content", get_file_content, methods=["GET"]),
        Route("/v1/batches", create_openai_batch, methods=["POST"]),
        Route("/v1/batches", list_openai_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", get_openai_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel_openai_batch, methods=["POST"]),
    ]
