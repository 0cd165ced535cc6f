"""Calls to OpenAI-compatible upstreams: pooled keep-alive connections, retries, errors by kind.

Requests go straight to an httpx transport (no client layer: no cookies, redirects or
per-request URL parsing on the hot path); :func:`make_transport` picks the lean
:class:`~llmdispatch.gateway.transport.FastTransport` or httpx's own pool. On the lean
transport a non-streamed call skips httpx's request and response objects too: the request's
head is encoded once per provider, and the answer comes back as status, headers and bytes.

Retries: connection errors, time-outs, 429 and 5xx are retried up to the model's
``max_retries`` with exponential backoff (base ``backoff_s``), waiting at least what a
``Retry-After`` header asks; a ``Retry-After`` longer than ``max_wait_s`` is not waited for
(the next model answers sooner). Other 4xx are the client's fault and fail at once. A failure
that survives its retries is an :class:`UpstreamError` the gateway answers by falling back to
the next model.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from llmdispatch.gateway._httpx import httpx
from llmdispatch.gateway.config import ModelEndpoint

try:
    from llmdispatch.gateway.transport import FastTransport, origin_of
except ImportError:  # httptools (uvicorn[standard]) is missing: httpx's pool works
    FastTransport = None  # type: ignore[assignment,misc]


class UpstreamError(Exception):
    """A failed upstream call; ``retryable`` ones may succeed on another model."""

    def __init__(
        self,
        model: str,
        message: str,
        status: int | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{model}: {message}")
        self.model = model
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after

    @property
    def reason(self) -> str:
        """A short label for metrics."""
        if self.status is None:
            return "connection"
        return "rate_limited" if self.status == 429 else f"http_{self.status}"


@dataclass
class CallResult:
    """A completed (non-streamed) call."""

    body: dict[str, Any]
    latency_ms: float
    retries: int = 0


@dataclass
class StreamHandle:
    """An open stream: its ``data:`` payloads until ``[DONE]``."""

    chunks: AsyncGenerator[bytes, None]


async def sleep_at_least(seconds: float) -> None:
    """``asyncio.sleep`` that never returns early: uvloop's timers tick in milliseconds and
    may fire up to one before the deadline, and a ``Retry-After`` is a lower bound."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(left)


def _retry_after(value: str | bytes | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (``None`` if absent or not a number)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def make_transport(kind: str = "fast") -> httpx.AsyncBaseTransport:
    """The connection pool every provider shares.

    ``fast``: :class:`~llmdispatch.gateway.transport.FastTransport` (HTTP/1.1 keep-alive,
    several times cheaper per call); ``httpx``: httpx's own pool (HTTP/2, proxies).
    """
    if kind == "fast" and FastTransport is not None:
        return FastTransport()
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    return httpx.AsyncHTTPTransport(limits=limits)


class Provider:
    """One configured model behind an OpenAI-compatible endpoint."""

    def __init__(
        self,
        name: str,
        endpoint: ModelEndpoint,
        transport: httpx.AsyncBaseTransport,
        backoff_s: float,
        max_wait_s: float = 5.0,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.transport = transport
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.url = httpx.URL(endpoint.base_url.rstrip("/") + "/chat/completions")
        self.upstream_name = endpoint.upstream_name or name
        timeout = httpx.Timeout(endpoint.timeout_s, connect=min(endpoint.timeout_s, 10.0))
        self.extensions = {"timeout": timeout.as_dict()}
        key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
        headers = {"content-type": "application/json", "accept": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        self.headers = httpx.Headers(headers)
        # What httpx would send, up to the body's length (FastTransport.send_raw's calls).
        self._head = b"".join(
            [
                b"POST %s HTTP/1.1\r\nHost: %s\r\n" % (self.url.raw_path, self.url.netloc),
                *(b"%s: %s\r\n" % kv for kv in self.headers.raw),
                b"Content-Length: ",
            ]
        )
        self._origin: tuple[str, str, int] | None = None

    def _body(self, body: dict[str, Any], stream: bool) -> bytes:
        out = {**body, "model": self.upstream_name, "stream": stream}
        if not stream:
            out.pop("stream_options", None)
        return orjson.dumps(out)

    async def _send(self, payload: bytes) -> httpx.Response:
        """Send one request; the response's body is not read yet."""
        request = httpx.Request(
            "POST", self.url, headers=self.headers, content=payload, extensions=self.extensions
        )
        try:
            return await self.transport.handle_async_request(request)
        except httpx.TimeoutException as exc:
            raise UpstreamError(self.name, f"timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise UpstreamError(self.name, f"connection failed ({type(exc).__name__})") from exc

    async def _read(self, response: httpx.Response) -> bytes:
        try:
            return await response.aread()
        except httpx.TimeoutException as exc:
            raise UpstreamError(self.name, f"timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise UpstreamError(self.name, f"connection broke ({type(exc).__name__})") from exc
        finally:
            await response.aclose()

    async def _send_raw(
        self, transport: FastTransport, payload: bytes
    ) -> tuple[int, bytes | None, bytes]:
        """One call on the lean transport: status, ``Retry-After`` and the body."""
        message = b"%s%d\r\n\r\n%s" % (self._head, len(payload), payload)
        try:
            if self._origin is None:  # raises UnsupportedProtocol for a non-HTTP(S) base URL
                self._origin = origin_of(self.url)
            response = await transport.send_raw(self._origin, message, self.extensions["timeout"])
        except httpx.TimeoutException as exc:
            raise UpstreamError(self.name, f"timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise UpstreamError(self.name, f"connection failed ({type(exc).__name__})") from exc
        retry_after = response.header(b"retry-after") if response.status != 200 else None
        return response.status, retry_after, response.body

    def _status_error(
        self, status: int, content: bytes, retry_after: str | bytes | None
    ) -> UpstreamError:
        text = content[:300].decode("utf-8", "replace")
        retryable = status == 429 or status >= 500
        return UpstreamError(
            self.name, f"HTTP {status}: {text}", status, retryable, _retry_after(retry_after)
        )

    async def _attempt(self, payload: bytes) -> CallResult:
        start = time.perf_counter()
        transport = self.transport
        if FastTransport is not None and isinstance(transport, FastTransport):
            status, retry_after, content = await self._send_raw(transport, payload)
        else:
            response = await self._send(payload)
            content = await self._read(response)
            status, retry_after = response.status_code, response.headers.get("retry-after")
        if status != 200:
            raise self._status_error(status, content, retry_after)
        try:
            doc = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(self.name, "upstream answered with invalid JSON") from exc
        if not isinstance(doc, dict):
            raise UpstreamError(self.name, "upstream answered with a non-object JSON body")
        return CallResult(doc, (time.perf_counter() - start) * 1000)

    async def complete(self, body: dict[str, Any]) -> CallResult:
        """One completion with retries (see the module docstring)."""
        payload = self._body(body, stream=False)
        for attempt in range(self.endpoint.max_retries + 1):
            try:
                result = await self._attempt(payload)
                result.retries = attempt
                return result
            except UpstreamError as exc:
                await self._backoff(exc, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _backoff(self, exc: UpstreamError, attempt: int) -> None:
        """Wait before retry ``attempt + 1``, or re-raise when no retry is due."""
        if not exc.retryable or attempt >= self.endpoint.max_retries:
            raise exc
        if exc.retry_after is not None and exc.retry_after > self.max_wait_s:
            raise exc
        await sleep_at_least(max(self.backoff_s * 2**attempt, exc.retry_after or 0.0))

    async def open_stream(self, body: dict[str, Any]) -> StreamHandle:
        """Open a streamed completion; errors before the first event raise (with retries).

        The returned handle's ``chunks`` yields raw SSE ``data:`` payloads (bytes without the
        prefix) until ``[DONE]``; a break after the first event raises :class:`UpstreamError`
        from the iterator.
        """
        payload = self._body(body, stream=True)
        for attempt in range(self.endpoint.max_retries + 1):
            try:
                return await self._open(payload)
            except UpstreamError as exc:
                await self._backoff(exc, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _open(self, payload: bytes) -> StreamHandle:
        response = await self._send(payload)
        if response.status_code != 200:
            content = await self._read(response)
            raise self._status_error(
                response.status_code, content, response.headers.get("retry-after")
            )
        lines = response.aiter_lines()
        try:
            first = await _next_data(lines)
        except (httpx.HTTPError, StopAsyncIteration) as exc:
            await response.aclose()
            raise UpstreamError(self.name, "stream broke before the first event") from exc
        return StreamHandle(chunks=_iterate(self.name, first, lines, response))


async def _next_data(lines: AsyncIterator[str]) -> str:
    while True:
        line = await lines.__anext__()
        if line.startswith("data:"):
            return line[5:].strip()


async def _iterate(
    name: str, first: str, lines: AsyncIterator[str], response: httpx.Response
) -> AsyncGenerator[bytes, None]:
    try:
        data = first
        while True:
            if data == "[DONE]":
                return
            yield data.encode()
            try:
                data = await _next_data(lines)
            except StopAsyncIteration:
                raise UpstreamError(name, "stream ended without [DONE]") from None
            except httpx.HTTPError as exc:
                raise UpstreamError(name, f"stream broke ({type(exc).__name__})") from exc
    finally:
        await response.aclose()
