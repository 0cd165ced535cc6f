"""The gateway's HTTP/1.1 transport against hand-written servers: keep-alive, framing, errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable

import httpx
import pytest

from _gateway import free_port
from llmdispatch.gateway.config import ModelEndpoint
from llmdispatch.gateway.providers import Provider
from llmdispatch.gateway.transport import FastTransport, origin_of

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _request_head(reader: asyncio.StreamReader) -> bytes:
    """Read one request (head and a content-length body); b"" at EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return head


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def _with_server(handler: Handler, test: Callable[[str], Awaitable[None]]) -> None:
    port = free_port()
    server = await asyncio.start_server(handler, "127.0.0.1", port)
    try:
        await test(f"http://127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()


def test_keep_alive_reuses_one_connection_and_survives_a_server_side_close() -> None:
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        served = 0
        try:
            while True:
                await _request_head(reader)
                served += 1
                writer.write(_ok(b'{"n": %d}' % len(connections)))
                await writer.drain()
                if served == 3:  # close an idle keep-alive connection, as servers do
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    async def test(url: str) -> None:
        client = httpx.AsyncClient(transport=FastTransport())
        for _ in range(3):
            r = await client.post(url + "/x", content=b"{}")
            assert r.json() == {"n": 1}
        await asyncio.sleep(0.05)
        r = await client.post(url + "/x", content=b"{}")  # the kept connection is gone
        assert r.status_code == 200 and r.json() == {"n": 2}
        await client.aclose()

    asyncio.run(_with_server(handler, test))
    assert len(connections) == 2


async def _write_chunked(writer: asyncio.StreamWriter, pieces: tuple[bytes, ...]) -> None:
    """A chunked 200 response, one chunk per piece with a pause between them."""
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    for piece in pieces:
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write(b"0\r\n\r\n")


def test_chunked_and_close_delimited_bodies() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _request_head(reader)
        if b"/chunked" in head:
            await _write_chunked(writer, (b"data: 1\n\n", b"data: 2\n\n"))
        else:  # no length: the body ends when the connection closes
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    async def test(url: str) -> None:
        client = httpx.AsyncClient(transport=FastTransport())
        async with client.stream("POST", url + "/chunked", content=b"{}") as r:
            lines = [line async for line in r.aiter_lines() if line]
        assert lines == ["data: 1", "data: 2"]
        r = await client.post(url + "/close", content=b"{}")
        assert r.text == "until the end"
        await client.aclose()

    asyncio.run(_with_server(handler, test))


def test_truncated_bodies_timeouts_and_refused_connections_raise_httpx_errors() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _request_head(reader)
        if b"/short" in head:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
            await writer.drain()
            writer.close()
        elif b"/silent" in head:
            await asyncio.sleep(2)
            writer.close()
        else:
            writer.close()  # hang up without answering

    async def test(url: str) -> None:
        client = httpx.AsyncClient(transport=FastTransport(), timeout=httpx.Timeout(0.3))
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(url + "/short", content=b"{}")
        with pytest.raises(httpx.ReadTimeout):
            await client.post(url + "/silent", content=b"{}")
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await client.post(url + "/hangup", content=b"{}")
        with pytest.raises(httpx.ConnectError):
            await client.post(f"http://127.0.0.1:{free_port()}/x", content=b"{}")
        with pytest.raises(httpx.UnsupportedProtocol):
            await FastTransport().handle_async_request(httpx.Request("GET", "ftp://x/y"))
        await client.aclose()

    asyncio.run(_with_server(handler, test))


def _raw(url: str, path: str, body: bytes = b"{}") -> tuple[tuple[str, str, int], bytes]:
    """An origin and an encoded POST for :meth:`FastTransport.send_raw`."""
    u = httpx.URL(url + path)
    head = b"POST %s HTTP/1.1\r\nHost: %s\r\ncontent-length: %d\r\n\r\n"
    return origin_of(u), head % (u.raw_path, u.netloc, len(body)) + body


_TIMEOUTS: dict[str, float | None] = {"connect": 1.0, "read": 0.3, "write": 1.0, "pool": None}


def test_send_raw_reads_whole_responses_on_kept_connections() -> None:
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            for served in range(1, 4):
                head = await _request_head(reader)
                if b"/chunked" in head:
                    await _write_chunked(writer, (b'{"a": ', b"1}"))
                elif b"/close" in head:
                    writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
                    await writer.drain()
                    break
                else:
                    writer.write(_ok(b'{"n": %d}' % len(connections), b"Retry-After: 2\r\n"))
                await writer.drain()
                if served == 3:  # close an idle keep-alive connection, as servers do
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    async def test(url: str) -> None:
        t = FastTransport()
        origin, plain = _raw(url, "/x")
        r = await t.send_raw(origin, plain, _TIMEOUTS)
        assert (r.status, r.body, r.header(b"retry-after")) == (200, b'{"n": 1}', b"2")
        r = await t.send_raw(origin, _raw(url, "/chunked")[1], _TIMEOUTS)
        assert r.body == b'{"a": 1}' and r.header(b"missing") is None
        assert (await t.send_raw(origin, plain, _TIMEOUTS)).body == b'{"n": 1}'
        await asyncio.sleep(0.05)
        # The kept connection is gone: the request goes again on a fresh one.
        assert (await t.send_raw(origin, plain, _TIMEOUTS)).body == b'{"n": 2}'
        r = await t.send_raw(origin, _raw(url, "/close")[1], _TIMEOUTS)
        assert r.body == b"until the end"
        assert not t._idle[origin]  # a close-delimited body's connection is not kept
        await t.aclose()

    asyncio.run(_with_server(handler, test))
    assert len(connections) == 2


def test_send_raw_errors_and_a_cancelled_call_close_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await _request_head(reader)
                if b"/short" in head:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
                    await writer.drain()
                    break
                if b"/slow-body" in head:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst")
                    await writer.drain()
                    await asyncio.sleep(2)
                    break
                if b"/silent" in head:
                    await asyncio.sleep(2)
                    break
                if b"/hangup" in head:
                    break
                writer.write(_ok(b"{}"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def test(url: str) -> None:
        t = FastTransport()
        origin = _raw(url, "/x")[0]
        with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
            await t.send_raw(origin, _raw(url, "/short")[1], _TIMEOUTS)
        with pytest.raises(httpx.ReadTimeout):
            await t.send_raw(origin, _raw(url, "/silent")[1], _TIMEOUTS)
        with pytest.raises(httpx.ReadTimeout):
            await t.send_raw(origin, _raw(url, "/slow-body")[1], _TIMEOUTS)
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await t.send_raw(origin, _raw(url, "/hangup")[1], _TIMEOUTS)
        with pytest.raises(httpx.ConnectError):
            await t.send_raw(("http", "127.0.0.1", free_port()), b"", _TIMEOUTS)
        assert not t._idle[origin] and not list(t._open)  # nothing half-read is kept
        call = asyncio.create_task(t.send_raw(origin, _raw(url, "/silent")[1], _TIMEOUTS))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert not t._idle[origin] and not list(t._open)
        assert (await t.send_raw(origin, _raw(url, "/ok")[1], _TIMEOUTS)).body == b"{}"
        assert len(t._idle[origin]) == 1
        await t.aclose()

    asyncio.run(_with_server(handler, test))
    with pytest.raises(httpx.UnsupportedProtocol):
        origin_of(httpx.URL("ftp://x/y"))


def test_providers_send_what_httpx_would_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean path's request head matches httpx's (Host, headers, Content-Length)."""
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                heads.append(await _request_head(reader))
                writer.write(_ok(b'{"choices": []}'))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    async def test(url: str) -> None:
        endpoint = ModelEndpoint(base_url=url + "/v1/", api_key_env="LLMD_TEST_TRANSPORT_KEY")
        for transport in (FastTransport(), httpx.AsyncHTTPTransport()):
            provider = Provider("m", endpoint, transport, 0.0)
            result = await provider.complete({"messages": [{"role": "user", "content": "hi"}]})
            assert result.body == {"choices": []}
            await transport.aclose()

    monkeypatch.setenv("LLMD_TEST_TRANSPORT_KEY", "sk-test")
    asyncio.run(_with_server(handler, test))
    lean, reference = heads
    assert lean == reference
    assert b"authorization: Bearer sk-test\r\n" in lean


def test_the_gateway_does_not_load_httpx_command_line_interface() -> None:
    code = (
        "import sys, llmdispatch.gateway.providers, httpx\n"
        "assert httpx.AsyncClient and 'rich' not in sys.modules and 'pygments' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_large_requests_wait_for_the_socket_and_time_out_if_never_read() -> None:
    big = b"x" * (32 << 20)  # more than the socket buffers hold

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"/stuck" in head:
                await asyncio.sleep(2)  # never reads the body
            else:
                await reader.readexactly(len(big))
                writer.write(_ok(b"{}"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def test(url: str) -> None:
        t = FastTransport()
        origin, fine = _raw(url, "/fine", big)
        assert (await t.send_raw(origin, fine, {**_TIMEOUTS, "read": 5.0})).body == b"{}"
        with pytest.raises(httpx.WriteTimeout):
            await t.send_raw(origin, _raw(url, "/stuck", big)[1], _TIMEOUTS)
        await t.aclose()

    asyncio.run(_with_server(handler, test))
