"""An OpenAI-compatible server that answers from an outcome table (the replay provider).

For a known prompt and model it returns the recorded response, the recorded token usage and
(optionally) sleeps for the recorded latency, so tests, the demo and the benchmarks exercise
real HTTP end to end without calling any LLM. Prompts are looked up by their exact text: the
user turns joined, or the system prompt and the user turns (as ``OutcomeTable.full_prompts``
joins them). A prompt or model the table does not know is a 404 with an OpenAI-style error
body. The recorded confidence comes back in an extra ``confidence`` field of the choice
(:class:`~llmdispatch.signals.recorded.RecordedConfidence` reads it live) and, when a request
asks for ``logprobs``, as the first token's log-probability.

It is the upstream of the performance benchmarks, so it is a bare ASGI callable (no
framework, no per-request objects beyond the parsed body): one dictionary lookup per prompt.

Faults for tests and benchmarks (:class:`ReplayOptions`): ``fail_rate``/``fail_status``
answer some requests with an error status (429s carry ``Retry-After: retry_after``);
``reset_rate`` drops the connection after the headers; ``cut_after`` ends every stream after
that many content chunks without its terminator; ``delay_ms`` adds a fixed delay before an
answer and ``chunk_delay_ms`` one before each streamed chunk (a generation speed);
``response_chars`` sets every answer's size (the recorded text repeated or cut to that many
characters, usage counted from it) to measure a proxy against larger or smaller bodies. A request
header ``x-replay-fault`` forces one fault for exactly that request: ``500``, ``429``,
``503``, ``timeout`` (hang ``hang_s``), ``reset`` or ``cut``.

    llmdispatch serve-replay cascades9 --port 9000 [--chunk-size 16] [--fail-rate 0.1]
    python -m llmdispatch.gateway.replay_server cascades9 --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from llmdispatch.data.table import OutcomeTable

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OPTIONS_ENV = "LLMDISPATCH_REPLAY"
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


@dataclass
class ReplayOptions:
    """Latency, streaming and injected failures (all faults off by default)."""

    delay_ms: float = 0.0
    use_latency: bool = False
    chunk_size: int = 16
    chunk_delay_ms: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 500
    retry_after: float = 0.0
    reset_rate: float = 0.0
    cut_after: int | None = None
    response_chars: int | None = None
    hang_s: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if self.response_chars is not None and self.response_chars < 1:
            raise ValueError("response_chars must be at least 1")
        for name in ("fail_rate", "reset_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")


#: The name the tests and older callers use.
Faults = ReplayOptions


class InjectedFault(ConnectionResetError):
    """Raised on purpose to drop a connection (the server's log does not report it)."""


class _QuietFaults(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, InjectedFault)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "code": status}})


def _message_text(messages: Any) -> tuple[str | None, str]:
    """The system prompt and the user turns joined (text parts only)."""
    system = None
    user: list[str] = []
    if not isinstance(messages, list):
        return None, ""
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, list):
            content = "".join(
                str(p.get("text", ""))
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        role = msg.get("role")
        if role == "system":
            system = str(content or "")
        elif role == "user":
            user.append(str(content or ""))
    return system, "\n\n".join(user)


def sized(text: str, chars: int) -> str:
    """``text`` repeated (blank-separated) or cut to exactly ``chars`` characters."""
    unit = (text or "replayed answer") + " "
    return (unit * (chars // len(unit) + 1))[:chars]


def _int(x: float, default: int) -> int:
    return default if x != x else int(x)


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


class ReplayApp:
    """The replay provider as a bare ASGI application (see the module docstring)."""

    def __init__(self, table: OutcomeTable, options: ReplayOptions | None = None) -> None:
        self.table = table
        self.index = ReplayIndex(table)
        self.options = options or ReplayOptions()
        self.rng = random.Random(self.options.seed)
        self.created = int(time.time())
        models = [
            {"id": m, "object": "model", "created": self.created, "owned_by": "replay"}
            for m in table.models
        ]
        self.models_body = orjson.dumps({"object": "list", "data": models})
        logging.getLogger("uvicorn.error").addFilter(_QuietFaults())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route ``POST /v1/chat/completions`` and ``GET /v1/models``."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # pragma: no cover - websockets are not served
            return
        path, method = scope["path"], scope["method"]
        if path.endswith("/chat/completions"):
            if method != "POST":
                await _respond(send, 405, _error(405, "use POST"))
                return
            body = await _read_body(receive)
            await self.chat(body, _header(scope, b"x-replay-fault"), send)
        elif path.endswith("/models") and method == "GET":
            await _respond(send, 200, self.models_body)
        else:
            await _respond(send, 404, _error(404, f"no route {path}", "not_found_error"))

    async def chat(self, raw: bytes, forced: str | None, send: Send) -> None:
        """Answer one chat completion from the table (or inject a fault)."""
        opts, table = self.options, self.table
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await _respond(send, 400, _error(400, "request body is not valid JSON"))
            return
        if not isinstance(body, dict):
            await _respond(send, 400, _error(400, "request body must be a JSON object"))
            return
        model = body.get("model")
        j = self.index.columns.get(model) if isinstance(model, str) else None
        if j is None:
            msg = f"model {model!r} is not in this replay table"
            await _respond(send, 404, _error(404, msg, "not_found_error"))
            return
        system, prompt = _message_text(body.get("messages"))
        i = self.index.lookup(system, prompt)
        if i is None:
            msg = f"prompt not found in the replay table ({len(prompt)} characters)"
            await _respond(send, 404, _error(404, msg, "not_found_error"))
            return
        if forced in ("500", "429", "503") or (
            opts.fail_rate and self.rng.random() < opts.fail_rate
        ):
            status = int(forced) if forced else opts.fail_status
            headers = [(b"retry-after", f"{opts.retry_after:g}".encode())] if status == 429 else []
            await _respond(
                send, status, _error(status, "injected failure", "server_error"), headers
            )
            return
        if forced == "reset" or (opts.reset_rate and self.rng.random() < opts.reset_rate):
            await send({"type": "http.response.start", "status": 200, "headers": _JSON})
            raise InjectedFault("injected reset")
        if forced == "timeout":
            await asyncio.sleep(opts.hang_s)
        delay = opts.delay_ms
        if opts.use_latency:
            recorded = float(table.latency_ms[i, j])
            delay += 0.0 if recorded != recorded else recorded
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        response = table.responses[i, j]
        text = response if isinstance(response, str) else ""
        tin = _int(float(table.tokens_in[i, j]), max(1, len(prompt) // 4))
        tout = _int(float(table.tokens_out[i, j]), max(1, len(text) // 4))
        if opts.response_chars is not None:
            text = sized(text, opts.response_chars)
            tout = max(1, len(text) // 4)
        usage = {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout}
        conf = float(table.confidence[i, j])
        logprobs: dict[str, Any] | None = None
        if body.get("logprobs") and conf == conf:
            token = {"token": text[:1] or " ", "logprob": conf, "top_logprobs": []}
            logprobs = {"content": [token]}
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            cut = 1 if forced == "cut" else opts.cut_after
            served = usage if include_usage else None
            await self.stream(send, rid, str(model), text, served, logprobs, cut)
            return
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": "stop",
            "logprobs": logprobs,
            "message": {"role": "assistant", "content": text},
        }
        if conf == conf:  # an extra field OpenAI clients ignore; the gateway reads it
            choice["confidence"] = conf
        doc = {
            "id": rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
        await _respond(send, 200, orjson.dumps(doc))

    async def stream(
        self,
        send: Send,
        rid: str,
        model: str,
        text: str,
        usage: dict[str, int] | None,
        logprobs: dict[str, Any] | None,
        cut_after: int | None,
    ) -> None:
        """Send the answer as server-sent events in ``chunk_size`` pieces."""
        created = int(time.time())

        async def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
            doc: dict[str, Any] = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if extra:
                doc.update(extra)
            data = b"data: " + orjson.dumps(doc) + b"\n\n"
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        role = {"role": "assistant", "content": ""}
        await event([{"index": 0, "delta": role, "finish_reason": None}])
        size = self.options.chunk_size
        pieces = [text[k : k + size] for k in range(0, len(text), size)]
        for k, piece in enumerate(pieces):
            if cut_after is not None and k >= cut_after:
                raise InjectedFault("injected cut")
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": piece},
                "finish_reason": None,
            }
            if k == 0 and logprobs is not None:
                choice["logprobs"] = logprobs
            if self.options.chunk_delay_ms > 0:
                await asyncio.sleep(self.options.chunk_delay_ms / 1000.0)
            await event([choice])
        if cut_after is not None:  # a short answer is cut before its end, not after
            raise InjectedFault("injected cut")
        await event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if usage is not None:
            await event([], {"usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def build_replay_app(table: OutcomeTable, options: ReplayOptions | None = None) -> ReplayApp:
    """The replay server as an ASGI app."""
    return ReplayApp(table, options)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    head = [*_JSON, (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def replay_from_env() -> ReplayApp:
    """Factory for several uvicorn workers: ``LLMDISPATCH_REPLAY`` holds data and options."""
    from llmdispatch.data import load_table

    spec = orjson.loads(os.environ[OPTIONS_ENV])
    return build_replay_app(load_table(spec["data"]), ReplayOptions(**spec["options"]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The replay server's command-line options (shared with ``llmdispatch serve-replay``)."""
    parser.add_argument("data", help="data-set name or path")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="fixed delay per answer")
    parser.add_argument("--use-latency", action="store_true", help="sleep the recorded latency")
    parser.add_argument("--chunk-size", type=int, default=16, help="characters per SSE chunk")
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=0.0, help="pause before each streamed chunk"
    )
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of injected errors")
    parser.add_argument("--fail-status", type=int, default=500, help="status of those errors")
    parser.add_argument("--retry-after", type=float, default=0.0, help="Retry-After of 429s")
    parser.add_argument("--reset-rate", type=float, default=0.0, help="share of dropped calls")
    parser.add_argument(
        "--cut-after", type=int, default=None, help="cut every stream after N content chunks"
    )
    parser.add_argument(
        "--response-chars",
        type=int,
        default=None,
        help="every answer this many characters (the recorded text repeated or cut)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-level", default="warning")


def serve(args: argparse.Namespace) -> int:
    """Run the replay server with uvicorn (several workers through :func:`replay_from_env`)."""
    import uvicorn

    from llmdispatch.data import load_table

    options = ReplayOptions(
        delay_ms=args.delay_ms,
        use_latency=args.use_latency,
        chunk_size=args.chunk_size,
        chunk_delay_ms=args.chunk_delay_ms,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
        retry_after=args.retry_after,
        reset_rate=args.reset_rate,
        cut_after=args.cut_after,
        response_chars=args.response_chars,
        seed=args.seed,
    )
    common: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "access_log": False,
    }
    if args.workers > 1:
        os.environ[OPTIONS_ENV] = orjson.dumps(
            {"data": str(args.data), "options": asdict(options)}
        ).decode()
        uvicorn.run(
            "llmdispatch.gateway.replay_server:replay_from_env",
            factory=True,
            workers=args.workers,
            **common,
        )
        return 0
    uvicorn.run(build_replay_app(load_table(args.data), options), **common)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m llmdispatch.gateway.replay_server DATA [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m llmdispatch.gateway.replay_server",
        description="Serve an outcome table's recorded answers as an OpenAI-compatible API.",
    )
    add_arguments(parser)
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
