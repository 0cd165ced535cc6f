"""Calls to OpenAI-compatible upstreams: pooled httpx connections, retries, errors by kind.

Retries: connection errors, time-outs, 429 and 5xx are retried up to the model's
``max_retries`` with exponential backoff (base ``backoff_s``), waiting at least what a
``Retry-After`` header asks; other 4xx are the client's fault and fail at once. A failure
that survives its retries is an :class:`UpstreamError` the gateway answers by falling back to
the next model.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from llmdispatch.gateway.config import ModelEndpoint


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
    raw: bytes = b""


@dataclass
class StreamHandle:
    """An open stream: its chunks, and what was learned while reading them."""

    chunks: AsyncIterator[bytes]
    usage: dict[str, int] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Provider:
    """One configured model behind an OpenAI-compatible endpoint."""

    def __init__(
        self, name: str, endpoint: ModelEndpoint, client: httpx.AsyncClient, backoff_s: float
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.client = client
        self.backoff_s = backoff_s
        self.url = endpoint.base_url.rstrip("/") + "/chat/completions"
        self.upstream_name = endpoint.upstream_name or name
        self.timeout = httpx.Timeout(endpoint.timeout_s, connect=min(endpoint.timeout_s, 10.0))
        key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
        self.headers = {"content-type": "application/json"}
        if key:
            self.headers["authorization"] = f"Bearer {key}"

    def _body(self, body: dict[str, Any], stream: bool) -> bytes:
        out = {**body, "model": self.upstream_name, "stream": stream}
        if not stream:
            out.pop("stream_options", None)
        return orjson.dumps(out)

    async def _attempt(self, payload: bytes) -> CallResult:
        start = time.perf_counter()
        try:
            resp = await self.client.post(
                self.url, content=payload, headers=self.headers, timeout=self.timeout
            )
        except httpx.TimeoutException as exc:
            raise UpstreamError(self.name, f"timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise UpstreamError(self.name, f"connection failed ({type(exc).__name__})") from exc
        if resp.status_code != 200:
            retryable = resp.status_code == 429 or resp.status_code >= 500
            raise UpstreamError(
                self.name,
                f"HTTP {resp.status_code}: {resp.text[:300]}",
                resp.status_code,
                retryable,
                _retry_after(resp),
            )
        try:
            doc = orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(self.name, "upstream answered with invalid JSON") from exc
        return CallResult(doc, (time.perf_counter() - start) * 1000, raw=resp.content)

    async def complete(self, body: dict[str, Any]) -> CallResult:
        """One completion with retries (see the module docstring)."""
        payload = self._body(body, stream=False)
        for attempt in range(self.endpoint.max_retries + 1):
            try:
                result = await self._attempt(payload)
                result.retries = attempt
                return result
            except UpstreamError as exc:
                if not exc.retryable or attempt == self.endpoint.max_retries:
                    raise
                await asyncio.sleep(max(self.backoff_s * 2**attempt, exc.retry_after or 0.0))
        raise AssertionError("unreachable")  # pragma: no cover

    async def open_stream(self, body: dict[str, Any]) -> StreamHandle:
        """Open a streamed completion; errors before the first byte raise (with retries).

        The returned handle's ``chunks`` yields raw SSE ``data:`` payloads (bytes without the
        prefix) until ``[DONE]``; a break after the first byte raises :class:`UpstreamError`
        from the iterator.
        """
        payload = self._body(body, stream=True)
        for attempt in range(self.endpoint.max_retries + 1):
            try:
                return await self._open(payload)
            except UpstreamError as exc:
                if not exc.retryable or attempt == self.endpoint.max_retries:
                    raise
                await asyncio.sleep(max(self.backoff_s * 2**attempt, exc.retry_after or 0.0))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _open(self, payload: bytes) -> StreamHandle:
        request = self.client.build_request(
            "POST", self.url, content=payload, headers=self.headers, timeout=self.timeout
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamError(self.name, "timed out") from exc
        except httpx.TransportError as exc:
            raise UpstreamError(self.name, f"connection failed ({type(exc).__name__})") from exc
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
            retryable = response.status_code == 429 or response.status_code >= 500
            raise UpstreamError(
                self.name,
                f"HTTP {response.status_code}: {response.text[:300]}",
                response.status_code,
                retryable,
                _retry_after(response),
            )
        lines = response.aiter_lines()
        try:
            first = await _next_data(lines)
        except (httpx.HTTPError, StopAsyncIteration) as exc:
            await response.aclose()
            raise UpstreamError(self.name, "stream broke before the first byte") from exc
        handle = StreamHandle(chunks=_iterate(self.name, first, lines, response))
        return handle


async def _next_data(lines: AsyncIterator[str]) -> str:
    while True:
        line = await lines.__anext__()
        if line.startswith("data:"):
            return line[5:].strip()


async def _iterate(
    name: str, first: str, lines: AsyncIterator[str], response: httpx.Response
) -> AsyncIterator[bytes]:
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


def make_client() -> httpx.AsyncClient:
    """One pooled client for every upstream (HTTP/1.1 keep-alive)."""
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0))
