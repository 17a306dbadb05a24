"""The Starlette application: provider routes, batch routes and the /_sim control endpoints."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llm_sim import anthropic_batches, anthropic_wire, openai_batches, openai_wire
from llm_sim.batch_store import BatchStore
from llm_sim.config import SimConfig
from llm_sim.engine import Engine
from llm_sim.faults import FaultConfigError
from llm_sim.http_common import read_json_object


async def sim_stats(request: Request) -> Response:
    return JSONResponse(request.app.state.engine.ledger.stats())


async def sim_requests(request: Request) -> Response:
    return JSONResponse(request.app.state.engine.ledger.request_log())


async def sim_bodies(request: Request) -> Response:
    """Chat request bodies as received (config `server.record_bodies: true`), oldest first."""
    return JSONResponse(request.app.state.engine.bodies)


async def sim_faults(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    if request.method == "GET":
        return JSONResponse(engine.faults.describe())
    update = await read_json_object(request)
    if update is None:
        return JSONResponse({"error": "POST a JSON object with fault settings"}, status_code=400)
    try:
        return JSONResponse(engine.faults.merge(update, time.monotonic()))
    except FaultConfigError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)


async def sim_reset(request: Request) -> Response:
    body = await read_json_object(request) or {}
    request.app.state.engine.reset(faults=bool(body.get("faults", False)))
    request.app.state.batches.reset()
    return JSONResponse({"reset": True, "faults": request.app.state.engine.faults.describe()})


async def sim_config(request: Request) -> Response:
    """The effective model table and settings (API keys are never shown)."""
    engine: Engine = request.app.state.engine
    config = engine.config
    models: dict[str, Any] = {}
    for name, spec in config.models.items():
        models[name] = {
            "provider": spec.provider,
            "input": spec.input,
            "cached_input": spec.cached_input,
            "cache_write": spec.cache_write,
            "cache_write_1h": spec.cache_write_1h,
            "output": spec.output,
            "bills_cache_write": spec.bills_cache_write,
            "accuracy": spec.accuracy,
            "limits": {
                "rpm": spec.limits.rpm,
                "tpm": spec.limits.tpm,
                "itpm": spec.limits.itpm,
                "otpm": spec.limits.otpm,
                "per": spec.limits.per,
            },
        }
    key = config.answer_key
    return JSONResponse(
        {
            "models": models,
            "answer_key": None if key is None else {"path": str(key.path), "entries": len(key.gold)},
            "keys_configured": len(config.keys),
            "faults": engine.faults.describe(),
            "cache": {"ttl_s": config.cache_ttl_s, "min_tokens": config.cache_min_tokens},
            "batch": {
                "complete_after_s": config.batch_complete_after_s,
                "expire": config.batch_expire,
                "price_multiplier": config.batch_price_multiplier,
            },
            "server": {
                "dialect": config.server.name,
                "cap_params": list(config.server.cap_params),
                "rate_limit_headers": config.server.rate_limit_headers,
                "usage_details": config.server.usage_details,
                "response_formats": list(config.server.response_formats),
                "context_tokens": config.server.context_tokens,
                "record_bodies": config.server.record_bodies,
                "percent_numbers": config.server.percent_numbers,
            },
        }
    )


async def list_models(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    if "anthropic-version" in request.headers:
        if anthropic_wire.api_key(request) not in engine.config.keys:
            return JSONResponse(
                anthropic_wire.error_body("authentication_error", "invalid x-api-key"), status_code=401
            )
        return JSONResponse(anthropic_wire.list_models_anthropic(engine))
    if request.headers.get("authorization", "")[7:].strip() not in engine.config.keys:
        return JSONResponse(openai_wire.unauthorized_body(request), status_code=401)
    return JSONResponse(await openai_wire.list_models_openai(engine))


def build_app(config: SimConfig) -> Starlette:
    engine = Engine(config)
    batch_store = BatchStore(engine)
    routes = [
        Route("/v1/chat/completions", openai_wire.chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/messages", anthropic_wire.messages, methods=["POST"]),
        *openai_batches.routes(),
        *anthropic_batches.routes(),
        Route("/_sim/stats", sim_stats, methods=["GET"]),
        Route("/_sim/requests", sim_requests, methods=["GET"]),
        Route("/_sim/bodies", sim_bodies, methods=["GET"]),
        Route("/_sim/faults", sim_faults, methods=["GET", "POST"]),
        Route("/_sim/reset", sim_reset, methods=["POST"]),
        Route("/_sim/config", sim_config, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await batch_store.shutdown()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.engine = engine
    app.state.batches = batch_store
    return app
