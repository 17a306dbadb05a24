"""Anthropic Message Batches routes: create, get, results (JSONL), cancel, list."""

from __future__ import annotations

import random
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llm_sim import anthropic_wire
from llm_sim.batch_store import BatchLine, BatchStore, SimBatch, jsonl
from llm_sim.http_common import new_id, read_json_object
from llm_sim.prompt import PromptError, anthropic_prompt
from llm_sim.rate_limits import rfc3339

MAX_ANTHROPIC_REQUESTS = 100_000
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def anthropic_batch_object(batch: SimBatch) -> dict[str, Any]:
    ended = batch.status == "ended"
    times = batch.times
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": batch.status,
        "request_counts": {
            "processing": batch.count("pending"),
            "succeeded": batch.count("succeeded"),
            "errored": batch.count("errored"),
            "canceled": batch.count("canceled"),
            "expired": batch.count("expired"),
        },
        "created_at": rfc3339(batch.created_at),
        "expires_at": rfc3339(batch.created_at + 24 * 3600),
        "ended_at": rfc3339(times["ended_at"]) if times.get("ended_at") else None,
        "cancel_initiated_at": rfc3339(times["cancel_initiated_at"])
        if times.get("cancel_initiated_at")
        else None,
        "archived_at": None,
        "results_url": f"{batch.base_url}/v1/messages/batches/{batch.id}/results" if ended else None,
    }


def _anthropic_denied(request: Request) -> Response | None:
    if anthropic_wire.api_key(request) not in request.app.state.engine.config.keys:
        return JSONResponse(
            anthropic_wire.error_body("authentication_error", "invalid x-api-key"), status_code=401
        )
    problem = anthropic_wire.check_version(request, None)
    if problem:
        return JSONResponse(anthropic_wire.error_body("invalid_request_error", problem), status_code=400)
    return None


def _anthropic_error(status: int, type_: str, message: str) -> JSONResponse:
    return JSONResponse(anthropic_wire.error_body(type_, message), status_code=status)


async def create_anthropic_batch(request: Request) -> Response:
    if (denied := _anthropic_denied(request)) is not None:
        return denied
    store: BatchStore = request.app.state.batches
    body = await read_json_object(request)
    requests_ = body.get("requests") if body else None
    if not isinstance(requests_, list) or not requests_:
        return _anthropic_error(400, "invalid_request_error", "requests: must be a non-empty list")
    if len(requests_) > MAX_ANTHROPIC_REQUESTS:
        return _anthropic_error(
            400, "invalid_request_error", f"requests: at most {MAX_ANTHROPIC_REQUESTS} allowed"
        )
    strict = request.headers.get("anthropic-version") == anthropic_wire.STRICT_VERSION
    lines: list[BatchLine] = []
    seen: set[str] = set()
    for i, entry in enumerate(requests_):
        custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
        if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
            return _anthropic_error(
                400, "invalid_request_error", f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$"
            )
        if custom_id in seen:
            return _anthropic_error(
                400, "invalid_request_error", f"requests.{i}.custom_id: {custom_id!r} is a duplicate"
            )
        seen.add(custom_id)
        params = entry.get("params")
        if not isinstance(params, dict):
            return _anthropic_error(400, "invalid_request_error", f"requests.{i}.params: must be an object")
        try:
            prompt = anthropic_prompt(params)
        except PromptError as exc:
            return _anthropic_error(400, "invalid_request_error", f"requests.{i}.params.{exc}")
        problem = None
        if strict and any(p in params for p in anthropic_wire.SAMPLING_PARAMS):
            problem = (
                400,
                "invalid_request_error",
                "temperature/top_p/top_k are not supported with this version",
            )
        elif store.engine.model(prompt.model, "anthropic") is None:
            problem = (404, "not_found_error", f"model: {prompt.model}")
        lines.append(BatchLine(custom_id, prompt, problem))
    batch = SimBatch(
        new_id("msgbatch_"),
        "anthropic",
        lines,
        time.time(),
        time.monotonic(),
        str(request.base_url).rstrip("/"),
    )
    store.start(batch)
    return JSONResponse(anthropic_batch_object(batch))


def _anthropic_batch(request: Request) -> SimBatch | None:
    batch = request.app.state.batches.batches.get(request.path_params["batch_id"])
    return batch if batch is not None and batch.provider == "anthropic" else None


async def get_anthropic_batch(request: Request) -> Response:
    if (denied := _anthropic_denied(request)) is not None:
        return denied
    batch = _anthropic_batch(request)
    if batch is None:
        return _anthropic_error(
            404, "not_found_error", f"message batch {request.path_params['batch_id']} not found"
        )
    return JSONResponse(anthropic_batch_object(batch))


async def anthropic_batch_results(request: Request) -> Response:
    if (denied := _anthropic_denied(request)) is not None:
        return denied
    batch = _anthropic_batch(request)
    if batch is None:
        return _anthropic_error(
            404, "not_found_error", f"message batch {request.path_params['batch_id']} not found"
        )
    if batch.status != "ended":
        return _anthropic_error(
            400,
            "invalid_request_error",
            f"message batch {batch.id} has not ended; results are available once it has",
        )
    rows = []
    for line in batch.lines:
        if line.state in ("succeeded", "errored"):
            rows.append(line.result)
        else:
            rows.append({"custom_id": line.custom_id, "result": {"type": line.state}})
    random.Random(batch.id).shuffle(rows)  # not in request order, as documented by the provider
    return Response(jsonl(rows), media_type="application/x-jsonl")


async def cancel_anthropic_batch(request: Request) -> Response:
    if (denied := _anthropic_denied(request)) is not None:
        return denied
    batch = _anthropic_batch(request)
    if batch is None:
        return _anthropic_error(
            404, "not_found_error", f"message batch {request.path_params['batch_id']} not found"
        )
    if batch.status == "in_progress":
        request.app.state.batches.cancel(batch)
    return JSONResponse(anthropic_batch_object(batch))


async def list_anthropic_batches(request: Request) -> Response:
    if (denied := _anthropic_denied(request)) is not None:
        return denied
    data = [
        anthropic_batch_object(b)
        for b in request.app.state.batches.batches.values()
        if b.provider == "anthropic"
    ]
    data.reverse()
    return JSONResponse(
        {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


def routes() -> list[Route]:
    return [
        Route("/v1/messages/batches", create_anthropic_batch, methods=["POST"]),
        Route("/v1/messages/batches", list_anthropic_batches, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}", get_anthropic_batch, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/results", anthropic_batch_results, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/cancel", cancel_anthropic_batch, methods=["POST"]),
    ]
