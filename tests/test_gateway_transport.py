"""The gateway's HTTP/1.1 transport against hand-written servers: keep-alive, framing, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from _gateway import free_port
from llmdispatch.gateway.transport import FastTransport

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


def test_chunked_and_close_delimited_bodies() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _request_head(reader)
        if b"/chunked" in head:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for piece in (b"data: 1\n\n", b"data: 2\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
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
