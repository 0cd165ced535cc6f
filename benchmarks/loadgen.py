"""A small, fast HTTP/1.1 load generator for loopback benchmarks (run as its own process).

    python benchmarks/loadgen.py --url http://127.0.0.1:8000/v1/chat/completions \
        --body body.json --concurrency 16 --requests 2000 --max-seconds 30 [--stream]

Keep-alive connections, one asyncio task per connection, raw sockets (a client library would
cost more CPU than the servers under test on a 2-core machine). Each request's latency and,
for streams, time to the first body chunk are recorded; the summary is printed as JSON on
stdout: counts, errors by kind, requests/s, and latency percentiles in milliseconds.
Bodies may be a JSON list: requests cycle through them. Bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        """(Re)connect."""
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, head: bytes, body: bytes) -> tuple[int, float | None, int]:
        """Send one request; returns (status, seconds to first body byte, body bytes)."""
        if self.writer is None or self.reader is None:
            await self.open()
        assert self.writer is not None and self.reader is not None
        t0 = time.perf_counter()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("server closed the connection")
        status = int(status_line.split()[1])
        length, chunked, close = None, False, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            if key == "content-length":
                length = int(value)
            elif key == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif key == "connection" and "close" in value.lower():
                close = True
        first: float | None = None
        size = 0
        if chunked:
            while True:
                size_line = await self.reader.readline()
                n = int(size_line.split(b";")[0], 16)
                if first is None:
                    first = time.perf_counter() - t0
                if n == 0:
                    await self.reader.readline()
                    break
                await self.reader.readexactly(n + 2)
                size += n
        elif length is not None:
            await self.reader.readexactly(length)
            first = time.perf_counter() - t0
            size = length
        if close:
            self.writer.close()
            self.reader = self.writer = None
        return status, first, size


async def run(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    total: int,
    max_seconds: float,
    headers: dict[str, str],
) -> dict[str, Any]:
    """Send ``total`` requests over ``concurrency`` connections (stop at ``max_seconds``)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    heads = [
        (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n{extra}\r\n"
        ).encode()
        for b in bodies
    ]
    latencies: list[float] = []
    ttft: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(total))
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        conn = Conn(host, port)
        for i in counter:
            if time.perf_counter() > deadline:
                return
            k = i % len(bodies)
            t0 = time.perf_counter()
            try:
                status, first, _ = await asyncio.wait_for(conn.request(heads[k], bodies[k]), 30)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                conn = Conn(host, port)
                continue
            if status != 200:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)
            if first is not None:
                ttft.append(first)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1e3
    first_ms = np.array(ttft) * 1e3

    def pct(a: np.ndarray, q: float) -> float | None:
        return float(np.percentile(a, q)) if len(a) else None

    return {
        "ok": len(latencies),
        "errors": errors,
        "seconds": wall,
        "rps": len(latencies) / wall if wall > 0 else 0.0,
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "ttft_p50_ms": pct(first_ms, 50),
        "ttft_p99_ms": pct(first_ms, 99),
        "latencies_ms": lat.round(4).tolist(),
    }


def main() -> None:
    """Parse arguments, run, print the JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", type=Path, required=True, help="JSON body, or a JSON list of them")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--header", action="append", default=[], help="Name: value")
    args = ap.parse_args()
    doc = json.loads(args.body.read_text())
    bodies = [json.dumps(b).encode() for b in (doc if isinstance(doc, list) else [doc])]
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    result = asyncio.run(
        run(args.url, bodies, args.concurrency, args.requests, args.max_seconds, headers)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
