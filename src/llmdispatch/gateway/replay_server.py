"""An OpenAI-compatible server that answers from an outcome table (the replay provider).

For a known prompt and model it returns the recorded response, the recorded token usage and
(optionally) sleeps for the recorded latency, so tests, the demo and the benchmarks exercise
real HTTP end to end without calling any LLM. A prompt the table does not know is a 404 with
an OpenAI-style error body. The recorded confidence is returned as the first token's
log-probability when the request asks for ``logprobs``, so signals read it like a live one.

Fault injection (for tests and benchmarks): ``fail_rate``/``fail_status`` answer some
requests with an error status; ``reset_rate`` drops the connection; ``cut_after`` ends a
stream after that many chunks without its terminator; ``delay_ms`` adds a fixed delay. A
``x-replay-fault`` request header forces one fault (``500``, ``429``, ``timeout``, ``reset``,
``cut``) for exactly that request.

    llmdispatch serve-replay cascades9 --port 9000
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from llmdispatch.data.table import OutcomeTable


@dataclass
class Faults:
    """Injected failures (all off by default)."""

    fail_rate: float = 0.0
    fail_status: int = 500
    reset_rate: float = 0.0
    cut_after: int | None = None
    delay_ms: float = 0.0
    use_latency: bool = False
    seed: int = 0


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Response:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _message_text(messages: list[dict[str, Any]]) -> tuple[str | None, str]:
    system = None
    user: list[str] = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
        if msg.get("role") == "system":
            system = str(content or "")
        elif msg.get("role") == "user":
            user.append(str(content or ""))
    return system, "\n\n".join(user)


class ReplayIndex:
    """Prompt text → row of the table (both the bare prompt and system + prompt)."""

    def __init__(self, table: OutcomeTable) -> None:
        self.table = table
        self.rows: dict[str, int] = {}
        for i, (p, s) in enumerate(zip(table.prompts, table.systems, strict=True)):
            self.rows.setdefault(str(p), i)
            if isinstance(s, str) and s:
                self.rows.setdefault(f"{s}\n\n{p}", i)
        self.columns = {m: j for j, m in enumerate(table.models)}

    def lookup(self, system: str | None, prompt: str) -> int | None:
        """The row of this prompt, if the table has it."""
        if system:
            row = self.rows.get(f"{system}\n\n{prompt}")
            if row is not None:
                return row
        return self.rows.get(prompt)


def build_replay_app(table: OutcomeTable, faults: Faults | None = None) -> Starlette:
    """The replay server as an ASGI app."""
    index = ReplayIndex(table)
    faults = faults or Faults()
    rng = random.Random(faults.seed)
    created = int(time.time())

    async def models(_: Request) -> Response:
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "replay"}
            for m in table.models
        ]
        return Response(
            orjson.dumps({"object": "list", "data": data}), media_type="application/json"
        )

    async def chat(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "request body is not valid JSON")
        model = body.get("model")
        j = index.columns.get(model) if isinstance(model, str) else None
        if j is None:
            return _error(404, f"model {model!r} is not in this replay table", "not_found_error")
        system, prompt = _message_text(body.get("messages") or [])
        i = index.lookup(system, prompt)
        if i is None:
            return _error(404, "prompt not found in the replay table", "not_found_error")
        response = table.responses[i, j]
        if response is None or (isinstance(response, float)):
            response = ""
        forced = request.headers.get("x-replay-fault")
        if forced in ("500", "429", "503") or (
            faults.fail_rate and rng.random() < faults.fail_rate
        ):
            status = int(forced) if forced else faults.fail_status
            resp = _error(status, "injected failure", "server_error")
            if status == 429:
                resp.headers["retry-after"] = "0"
            return resp
        if forced == "reset" or (faults.reset_rate and rng.random() < faults.reset_rate):
            raise ConnectionResetError("injected reset")
        if forced == "timeout":
            await asyncio.sleep(30)
        delay = faults.delay_ms
        if faults.use_latency and not np_isnan(table.latency_ms[i, j]):
            delay += float(table.latency_ms[i, j])
        if delay:
            await asyncio.sleep(delay / 1000.0)
        tin = _int(table.tokens_in[i, j], max(1, len(prompt) // 4))
        tout = _int(table.tokens_out[i, j], max(1, len(response) // 4))
        usage = {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout}
        conf = table.confidence[i, j]
        logprobs: dict[str, Any] | None = None
        if body.get("logprobs") and not np_isnan(conf):
            logprobs = {
                "content": [
                    {"token": response[:1] or " ", "logprob": float(conf), "top_logprobs": []}
                ]
            }
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            cut = 2 if forced == "cut" else faults.cut_after
            return StreamingResponse(
                _chunks(rid, model, response, usage if include_usage else None, logprobs, cut),
                media_type="text/event-stream",
            )
        doc = {
            "id": rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": logprobs,
                    "message": {"role": "assistant", "content": response},
                }
            ],
            "usage": usage,
        }
        return Response(orjson.dumps(doc), media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


def np_isnan(x: float) -> bool:
    """NaN check for numpy scalars and floats."""
    return bool(x != x)


def _int(x: float, default: int) -> int:
    return default if np_isnan(x) else int(x)


async def _chunks(
    rid: str,
    model: str,
    text: str,
    usage: dict[str, int] | None,
    logprobs: dict[str, Any] | None,
    cut_after: int | None,
    size: int = 16,
) -> AsyncIterator[bytes]:
    created = int(time.time())

    def frame(
        delta: dict[str, Any], finish: str | None, extra: dict[str, Any] | None = None
    ) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        doc: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }
        if extra:
            doc.update(extra)
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    pieces = [text[k : k + size] for k in range(0, len(text), size)] or [""]
    yield frame({"role": "assistant", "content": ""}, None)
    for k, piece in enumerate(pieces):
        if cut_after is not None and k >= cut_after:
            raise ConnectionResetError("injected cut")
        delta: dict[str, Any] = {"content": piece}
        if k == 0 and logprobs is not None:
            yield frame(
                delta,
                None,
                {
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}
                    ]
                },
            )
        else:
            yield frame(delta, None)
    if cut_after is not None:  # a short answer is cut before its end, not after
        raise ConnectionResetError("injected cut")
    yield frame({}, "stop")
    if usage is not None:
        doc = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        yield b"data: " + orjson.dumps(doc) + b"\n\n"
    yield b"data: [DONE]\n\n"


def replay_from_env() -> Starlette:
    """Factory for several uvicorn workers: ``LLMDISPATCH_REPLAY=data|delay_ms|use_latency``."""
    import os

    from llmdispatch.data import load_table

    data, delay, use_latency = os.environ["LLMDISPATCH_REPLAY"].split("|")
    faults = Faults(delay_ms=float(delay), use_latency=bool(int(use_latency)))
    return build_replay_app(load_table(data), faults)
