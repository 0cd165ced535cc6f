"""The OpenAI-compatible gateway as an ASGI application (Starlette routes, orjson bodies).

Routes: ``POST /v1/chat/completions`` (routed by a policy, or passed through for a real
model name; streamed or not), ``GET /v1/models``, ``POST /v1/feedback``, ``GET /healthz``,
``GET /readyz``, ``GET /metrics`` (Prometheus) and ``GET /openapi.json``. The handlers parse
JSON themselves (no per-request model validation of large bodies); the decision logic lives
in :mod:`~llmdispatch.gateway.pipeline`, streaming in :mod:`~llmdispatch.gateway.streaming`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmdispatch.gateway.auth import AuthError
from llmdispatch.gateway.config import CONFIG_ENV, GatewayConfig
from llmdispatch.gateway.errors import GatewayError, error_response
from llmdispatch.gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from llmdispatch.gateway.openai_format import build_query
from llmdispatch.gateway.openapi import openapi_document
from llmdispatch.gateway.pipeline import PREFIX, Gateway, Trace, decision_headers
from llmdispatch.gateway.reloader import watching
from llmdispatch.gateway.streaming import stream_completion
from llmdispatch.query import Query

_JSON = "application/json"


def _json(doc: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=_JSON, headers=headers)


async def _read_json(request: Request) -> object:
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise GatewayError(400, "request body is not valid JSON") from None


def create_app(cfg: GatewayConfig) -> Starlette:
    """The ASGI application for a configuration."""
    gw = Gateway(cfg)

    async def chat(request: Request) -> Response:
        rid = f"chatcmpl-{os.urandom(12).hex()}"  # as random as uuid4's hex[:24], 5× cheaper
        trace = Trace(rid, "", None)
        query = Query(text="")
        try:
            key = gw.keys.authenticate(request.headers.get("authorization"))
            trace.key = key
            body = await _read_json(request)
            if not isinstance(body, dict):
                raise GatewayError(400, "request body must be a JSON object")
            policy, trace.policy, target = gw.resolve(body, key)
            await gw.admit(key)
            user = body.get("user")
            session = request.headers.get("x-session-id") or (
                user if isinstance(user, str) else None
            )
            query = build_query(body, session, request.headers.get("x-llmdispatch-task"))
            query.metadata["request_id"] = rid  # online learners key feedback by it
            allowed, reasons = await gw.allowed_models(key, query, body)
            if (target and target not in allowed) or not allowed:
                raise gw.refuse(reasons, target)
            if policy is not None and session:
                trace.pinned = await gw.state.affinity(session)
                if trace.pinned not in allowed:
                    trace.pinned = None
            if body.get("stream"):
                return await stream_completion(
                    gw, body, policy, target, query, allowed, trace, session
                )
            model, answer = await gw.run_policy(policy, query, allowed, body, trace, target)
        except AuthError as exc:
            gw.finish(trace, "", None, query, exc.status, str(exc))
            return error_response(
                exc.status, str(exc), "authentication_error", {"x-llmdispatch-request-id": rid}
            )
        except GatewayError as exc:
            if exc.status == 429 and exc.kind == "budget_exceeded":
                gw.metrics.rate_limited.labels("budget").inc()
            gw.finish(trace, "", None, query, exc.status, str(exc))
            headers = {**exc.headers, "x-llmdispatch-request-id": rid}
            return error_response(exc.status, str(exc), exc.kind, headers)
        await gw.remember(trace, session, policy, model, query)
        answer = {**answer, "id": rid, "model": model}
        gw.finish(trace, model, answer, query, 200, None)
        return _json(answer, headers=decision_headers(trace, model))

    async def models(_: Request) -> Response:
        def entry(name: str, owner: str) -> dict[str, object]:
            return {"id": name, "object": "model", "created": gw.created, "owned_by": owner}

        data = [entry(m, "upstream") for m in gw.providers]
        data += [entry(PREFIX + p, "llmdispatch") for p in gw.policies]
        if cfg.default_policy:
            data.append(entry(PREFIX + "auto", "llmdispatch"))
        return _json({"object": "list", "data": data})

    async def feedback(request: Request) -> Response:
        try:
            gw.keys.authenticate(request.headers.get("authorization"))
            doc = await gw.feedback(await _read_json(request))
        except AuthError as exc:
            return error_response(exc.status, str(exc), "authentication_error")
        except GatewayError as exc:
            return error_response(exc.status, str(exc), exc.kind, exc.headers)
        return _json(doc)

    async def healthz(_: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(_: Request) -> Response:
        try:
            await gw.state.ping()
        except Exception as exc:  # the state backend is down: not ready
            return error_response(503, f"state backend unavailable: {exc}", "not_ready")
        if gw.log is not None:
            try:
                await asyncio.to_thread(_ping, gw.log.engine)
            except Exception as exc:
                return error_response(503, f"request log unavailable: {exc}", "not_ready")
        return _json({"status": "ready"})

    async def metrics(_: Request) -> Response:
        await gw.refresh_gauges()
        return Response(gw.metrics.render(), headers={"content-type": METRICS_CONTENT_TYPE})

    async def openapi(_: Request) -> Response:
        return _json(openapi_document())

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with watching(gw, cfg.reload_artifacts_s):
            yield
        await gw.close()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gw
    return app


def _ping(engine: object) -> None:
    import sqlalchemy as sa

    assert isinstance(engine, sa.Engine)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory`` (each worker process builds its own app)."""
    from llmdispatch.gateway.config import load_config
    from llmdispatch.gateway.memory import release_free_memory

    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"set {CONFIG_ENV} to the gateway config file")
    app = create_app(load_config(path))
    release_free_memory()  # what loading the policies freed
    return app
