"""``remote`` against a real OpenAI-style embeddings server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from llmdispatch.features import RemoteEncoder, RemoteEncoderError
from llmdispatch.features.remote import retry_after_seconds

DIM = 6


def fake_embedding(text: str) -> list[float]:
    """A deterministic, text-dependent vector (not normalised, to test normalisation)."""
    return [len(text), text.count("a"), text.count("e"), 1.0, float(len(text.split())), 2.0]


class EmbeddingServer:
    """A scripted ``POST /v1/embeddings`` server; ``script`` holds the next failures."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], str]] = []
        self.delays: list[float] = []
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), **body})
                if server.delays:
                    time.sleep(server.delays.pop(0))
                if server.script:
                    status, headers, text = server.script.pop(0)
                    self._send(status, headers, text.encode())
                    return
                items = [
                    {"object": "embedding", "index": i, "embedding": fake_embedding(t)}
                    for i, t in enumerate(body["input"])
                ][::-1]  # out of order on purpose: clients must sort by index
                payload = {"object": "list", "data": items, "model": body["model"]}
                self._send(200, {"Content-Type": "application/json"}, json.dumps(payload).encode())

            def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> EmbeddingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[EmbeddingServer]:
    with EmbeddingServer() as s:
        yield s


def _encoder(server: EmbeddingServer, **kwargs: Any) -> RemoteEncoder:
    params: dict[str, Any] = {"backoff": 0.01, "timeout": 5.0} | kwargs
    return RemoteEncoder(server.url, "test-embed", **params)


def _expected(texts: list[str]) -> np.ndarray:
    X = np.asarray([fake_embedding(t) for t in texts], dtype=np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_batches_in_order_with_auth(
    server: EmbeddingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_EMBED_KEY", "s3cret")
    texts = [f"text {'a' * i} {'e' * (i % 3)}" for i in range(10)]
    enc = _encoder(server, batch_size=4, api_key_env="TEST_EMBED_KEY", dimensions=DIM)
    X = enc.encode(texts)
    np.testing.assert_allclose(X, _expected(texts), rtol=1e-6)
    assert X.dtype == np.float32
    assert [len(r["input"]) for r in server.requests] == [4, 4, 2]
    first = server.requests[0]
    assert first["path"] == "/v1/embeddings" and first["model"] == "test-embed"
    assert first["headers"]["Authorization"] == "Bearer s3cret"
    assert first["dimensions"] == DIM
    enc.close()


def test_500_then_success_is_retried(server: EmbeddingServer) -> None:
    server.script = [(500, {}, "boom"), (502, {}, "bad gateway")]
    X = _encoder(server).encode(["hello there"])
    np.testing.assert_allclose(X, _expected(["hello there"]), rtol=1e-6)
    assert len(server.requests) == 3


def test_429_honours_retry_after(server: EmbeddingServer) -> None:
    server.script = [(429, {"Retry-After": "1"}, '{"error": "rate limited"}')]
    started = time.perf_counter()
    X = _encoder(server, backoff=0.0).encode(["slow down"])
    elapsed = time.perf_counter() - started
    assert 1.0 <= elapsed < 5.0
    assert len(server.requests) == 2 and X.shape == (1, DIM)


def test_429_honours_retry_after_ms(server: EmbeddingServer) -> None:
    server.script = [(429, {"retry-after-ms": "300", "Retry-After": "30"}, "")]
    started = time.perf_counter()
    _encoder(server, backoff=0.0).encode(["x"])
    assert 0.3 <= time.perf_counter() - started < 5.0


def test_client_errors_fail_at_once(server: EmbeddingServer) -> None:
    server.script = [(400, {}, '{"error": {"message": "input too long"}}')]
    with pytest.raises(RemoteEncoderError, match=r"HTTP 400.*input too long"):
        _encoder(server).encode(["x"])
    assert len(server.requests) == 1


def test_gives_up_after_max_retries(server: EmbeddingServer) -> None:
    server.script = [(503, {}, "down")] * 5
    with pytest.raises(RemoteEncoderError, match="HTTP 503 after 3 attempt"):
        _encoder(server, max_retries=2).encode(["x"])
    assert len(server.requests) == 3


def test_timeout_is_retried(server: EmbeddingServer) -> None:
    server.delays = [1.0]
    X = _encoder(server, timeout=0.3).encode(["late"])
    assert X.shape == (1, DIM) and len(server.requests) == 2


def test_connection_refused_retries_then_fails() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    enc = RemoteEncoder(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff=0.01)
    with pytest.raises(RemoteEncoderError, match="ConnectError"):
        enc.encode(["x"])


def test_malformed_response_and_missing_key(
    server: EmbeddingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.script = [(200, {"Content-Type": "application/json"}, '{"data": [{"index": 0}]}')]
    with pytest.raises(RemoteEncoderError, match="not an embeddings response"):
        _encoder(server).encode(["x"])
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(RemoteEncoderError, match="NO_SUCH_KEY_VAR"):
        _encoder(server, api_key_env="NO_SUCH_KEY_VAR").encode(["x"])


def test_state_holds_no_secret(monkeypatch: pytest.MonkeyPatch, server: EmbeddingServer) -> None:
    monkeypatch.setenv("TEST_EMBED_KEY", "s3cret")
    enc = _encoder(server, api_key_env="TEST_EMBED_KEY")
    state = enc.get_state()
    assert "s3cret" not in json.dumps(state)
    again = RemoteEncoder.from_state(state)
    assert again.key == enc.key
    np.testing.assert_array_equal(again.encode(["same"]), enc.encode(["same"]))
    assert enc.encode([]).shape[0] == 0


def test_retry_after_parsing() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert retry_after_seconds({"retry-after": later}, now=now) == pytest.approx(7.0)
    assert retry_after_seconds({"retry-after": "2.5"}) == 2.5
    assert retry_after_seconds({"retry-after": "garbage"}) is None
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
