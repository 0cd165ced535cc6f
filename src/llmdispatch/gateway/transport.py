"""A lean HTTP/1.1 transport for httpx: keep-alive connections, a C response parser.

httpx's default transport (httpcore) scans its whole connection pool several times per
request and parses responses in pure Python; at 16 concurrent upstream calls that costs more
CPU than everything else the gateway does (measured: ~330 calls/s from one client against an
upstream that serves 4000/s). This transport keeps, per origin, a stack of idle keep-alive
connections (take one, or open one; put it back when its response is read) and parses with
``httptools`` (the parser uvicorn uses), so a call costs a write, a few reads and a dict.

It plugs in under ``httpx.AsyncClient(transport=...)``: callers keep httpx's API and its
exceptions (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError``,
...). It speaks HTTP/1.1 over TCP or TLS, without proxies; ``upstream_transport: httpx`` in
the gateway config selects httpx's own transport instead (proxies from the environment,
HTTP/2). :meth:`FastTransport.send_raw` is the same exchange without httpx's request and
response objects (an encoded request in, status, headers and the whole body out): the
providers' non-streamed calls use it, which saves ~30 µs of object building per call.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import httptools

from llmdispatch.gateway._httpx import httpx

#: Idle connections kept per origin; more are closed when they come back.
MAX_IDLE = 256
_READ = 65536

#: ``(scheme, host, port)`` of an upstream.
Origin = tuple[str, str, int]


def origin_of(url: httpx.URL, request: httpx.Request | None = None) -> Origin:
    """Where a URL's connections go; ``UnsupportedProtocol`` for schemes other than HTTP(S)."""
    scheme = url.scheme
    if scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}", request=request)
    return scheme, url.host, url.port or (443 if scheme == "https" else 80)


class RawResponse(NamedTuple):
    """A whole response read by :meth:`FastTransport.send_raw`."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (``name`` in lower case), or ``None``."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class _Parser:
    """httptools callbacks for one response on a connection."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.done = False
        self.framed = False  # content-length or chunked: the end is known without EOF
        self.keep_alive = False
        self.raw: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # Asked here: once the message is complete the parser has moved on to the next one.
        self.keep_alive = self.raw is not None and self.raw.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class _Connection:
    """One keep-alive connection to an origin."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class _Body(httpx.AsyncByteStream):
    """The response body: what the parser already has, then more reads until it is done."""

    def __init__(
        self,
        transport: FastTransport,
        origin: Origin,
        conn: _Connection,
        parser: _Parser,
        raw: httptools.HttpResponseParser,
        request: httpx.Request,
        read_timeout: float | None,
    ) -> None:
        self.transport, self.origin, self.conn = transport, origin, conn
        self.parser, self.raw, self.request = parser, raw, request
        self.read_timeout = read_timeout
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parser = self.parser
        while True:
            if parser.body:
                pieces, parser.body = parser.body, []
                for piece in pieces:
                    yield piece
            if parser.done:
                break
            data = await _read(self.conn, self.read_timeout, self.request)
            if not data:
                if parser.framed:
                    self.conn.close()
                    raise httpx.RemoteProtocolError(
                        "peer closed connection without sending complete message body",
                        request=self.request,
                    )
                parser.done = True  # a close-delimited body ends at EOF
                continue
            _feed(self.raw, data, self.request)
        await self.aclose()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        reusable = self.parser.done and self.parser.framed and self.parser.keep_alive
        self.transport._release(self.origin, self.conn, reusable)


def _feed(raw: httptools.HttpResponseParser, data: bytes, request: httpx.Request | None) -> None:
    try:
        raw.feed_data(data)
    except httptools.HttpParserError as exc:
        raise httpx.RemoteProtocolError(f"malformed response: {exc}", request=request) from exc


async def _read(conn: _Connection, timeout: float | None, request: httpx.Request | None) -> bytes:
    try:
        async with asyncio.timeout(timeout):
            return await conn.reader.read(_READ)
    except TimeoutError as exc:
        conn.close()
        raise httpx.ReadTimeout("timed out reading the response", request=request) from exc
    except OSError as exc:
        conn.close()
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc


class FastTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive transport for httpx (see the module docstring)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._ssl = ssl_context
        self._open: weakref.WeakSet[_Connection] = weakref.WeakSet()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    async def _connect(
        self, origin: Origin, timeout: float | None, request: httpx.Request | None
    ) -> _Connection:
        scheme, host, port = origin
        tls: dict[str, Any] = {}
        if scheme == "https":
            tls = {"ssl": self._ssl_context(), "server_hostname": host}
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=_READ, **tls)
        except TimeoutError as exc:
            msg = f"connecting to {host}:{port} timed out"
            raise httpx.ConnectTimeout(msg, request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(f"{host}:{port}: {exc}", request=request) from exc
        conn = _Connection(reader, writer)
        self._open.add(conn)
        return conn

    def _release(self, origin: Origin, conn: _Connection, reusable: bool) -> None:
        idle = self._idle.setdefault(origin, deque())
        if reusable and conn.usable() and len(idle) < MAX_IDLE:
            idle.append(conn)
        else:
            conn.close()
            self._open.discard(conn)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request; the response body streams from the connection."""
        url = request.url
        origin = origin_of(url, request)
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), url.raw_path)]
        head += [b"%s: %s\r\n" % (k, v) for k, v in request.headers.raw]
        payload = b"".join(head) + b"\r\n" + body
        conn, parser, raw = await self._start(origin, payload, timeouts, request)
        stream = _Body(self, origin, conn, parser, raw, request, timeouts.get("read"))
        return httpx.Response(
            raw.get_status_code(),
            headers=parser.headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def send_raw(
        self, origin: Origin, payload: bytes, timeouts: dict[str, float | None]
    ) -> RawResponse:
        """Send an encoded request (head and body) and read the whole response.

        The same connection handling and errors as :meth:`handle_async_request` (httpx's
        exceptions, with no request attached), without building httpx objects.
        """
        conn, parser, raw = await self._start(origin, payload, timeouts, None)
        read_timeout = timeouts.get("read")
        try:
            while not parser.done:
                data = await _read(conn, read_timeout, None)
                if not data:
                    if parser.framed:
                        raise httpx.RemoteProtocolError(
                            "peer closed connection without sending complete message body"
                        )
                    break  # a close-delimited body ends at EOF
                _feed(raw, data, None)
        except BaseException:  # an error or a cancelled call: the connection is in an unknown state
            self._release(origin, conn, False)
            raise
        self._release(origin, conn, parser.done and parser.framed and parser.keep_alive)
        body = parser.body[0] if len(parser.body) == 1 else b"".join(parser.body)
        return RawResponse(raw.get_status_code(), parser.headers, body)

    async def _start(
        self,
        origin: Origin,
        payload: bytes,
        timeouts: dict[str, float | None],
        request: httpx.Request | None,
    ) -> tuple[_Connection, _Parser, httptools.HttpResponseParser]:
        """Send ``payload`` on an idle connection (or a new one) and read the response's
        head; a kept-alive connection the server closed meanwhile is retried on a fresh one."""
        idle = self._idle.get(origin)
        while True:
            conn = None
            while idle:
                candidate = idle.pop()
                if candidate.usable():
                    conn = candidate
                    break
                candidate.close()
                self._open.discard(candidate)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin, timeouts.get("connect"), request)
            try:
                parser, raw = await self._exchange(conn, payload, request, timeouts)
                return conn, parser, raw
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
                self._release(origin, conn, False)
                if not reused:
                    raise
                idle = None
            except BaseException:  # a time-out or a cancelled call: never reuse it
                self._release(origin, conn, False)
                raise

    async def _exchange(
        self,
        conn: _Connection,
        payload: bytes,
        request: httpx.Request | None,
        timeouts: dict[str, float | None],
    ) -> tuple[_Parser, httptools.HttpResponseParser]:
        try:
            conn.writer.write(payload)
            # The socket usually takes the whole request at once: the write time-out (a timer
            # per call, ~5% of a pass-through request's CPU) is armed only if some is left.
            if conn.writer.transport.get_write_buffer_size():
                async with asyncio.timeout(timeouts.get("write")):
                    await conn.writer.drain()
        except TimeoutError as exc:
            conn.close()
            raise httpx.WriteTimeout("timed out sending the request", request=request) from exc
        except OSError as exc:
            conn.close()
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc
        parser = _Parser()
        raw = parser.raw = httptools.HttpResponseParser(parser)
        read_timeout = timeouts.get("read")
        while not parser.headers_done:
            data = await _read(conn, read_timeout, request)
            if not data:
                conn.close()
                raise httpx.RemoteProtocolError(
                    "server disconnected without sending a response", request=request
                )
            _feed(raw, data, request)
        return parser, raw

    async def aclose(self) -> None:
        """Close every connection."""
        for conn in list(self._open):
            conn.close()
        self._open = weakref.WeakSet()
        self._idle.clear()
