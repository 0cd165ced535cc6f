"""Helpers for the gateway tests: servers on free loopback ports, configs, artifacts."""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from llmdispatch.data.table import OutcomeTable


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def gateway_config(
    path: Path,
    table: OutcomeTable,
    upstreams: dict[str, str],
    policies: dict[str, Path] | None = None,
    **extra: Any,
) -> Path:
    """Write a gateway YAML: every model of ``table`` at its upstream base URL."""
    models = {}
    for name in table.models:
        card = table.card(name)
        models[name] = {
            "base_url": upstreams[name],
            "price_in_per_mtok": card.price_in_per_mtok,
            "price_out_per_mtok": card.price_out_per_mtok,
            "timeout_s": 5,
            "max_retries": 1,
        }
    doc: dict[str, Any] = {"models": models, "retry_backoff_s": 0.0}
    if policies:
        doc["policies"] = {k: {"artifact": str(v)} for k, v in policies.items()}
        doc["default_policy"] = next(iter(policies))
    doc.update(extra)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Flaky:
    """An ASGI upstream wrapper that answers the first ``failures`` chat calls with ``status``.

    ``retry_after`` is sent as the ``Retry-After`` header; ``calls`` counts chat calls, and
    ``times`` records when each arrived (``time.monotonic``).
    """

    def __init__(
        self, app: Any, failures: int, status: int = 429, retry_after: str | None = None
    ) -> None:
        self.app, self.failures, self.status, self.retry_after = app, failures, status, retry_after
        self.calls = 0
        self.times: list[float] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        self.calls += 1
        self.times.append(time.monotonic())
        if self.calls > self.failures:
            await self.app(scope, receive, send)
            return
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"application/json")]
        if self.retry_after is not None:
            headers.append((b"retry-after", self.retry_after.encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        body = b'{"error": {"message": "flaky upstream", "type": "server_error"}}'
        await send({"type": "http.response.body", "body": body})


class Switch:
    """An ASGI upstream wrapper that answers 503 while ``down`` is set."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.down = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.down:
            while (await receive()).get("more_body"):
                pass
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": b'{"error": {"message": "down"}}'})
            return
        await self.app(scope, receive, send)


_TRAINED: dict[str, Path] = {}


def trained(kind: str, table: OutcomeTable, root: Path) -> Path:
    """A policy artifact fitted on ``table``'s train split, trained once per test process.

    ``kind``: ``router`` (kNN, λ = 0.1), ``cascade`` (FrugalGPT at $3e-4 per query) or
    ``bandit`` (LinUCB warm-started from kNN). ``root`` must outlive the session (a
    ``tmp_path_factory`` folder).
    """
    key = f"{table.name}:{kind}"
    if key not in _TRAINED:
        from llmdispatch.artifacts import save_artifact
        from llmdispatch.policies.bandit import BanditRouter
        from llmdispatch.policies.cascade_fit import FrugalGPTCascade
        from llmdispatch.policies.router import Router

        train = table.split("train")
        policy: Any
        if kind == "router":
            policy = Router(lam=0.1).fit(train)
        elif kind == "cascade":
            policy = FrugalGPTCascade(budget=3e-4).fit(train)
        elif kind == "bandit":
            policy = BanditRouter(algorithm="linucb", warm_start="knn", lam=0.0).fit(train)
        else:
            raise ValueError(f"unknown artifact kind {kind!r}")
        save_artifact(root / kind, policy)
        _TRAINED[key] = root / kind
    return _TRAINED[key]


@functools.lru_cache(maxsize=4)
def shared_table(path: Path) -> OutcomeTable:
    """An outcome table loaded once per test process (tables are immutable)."""
    from llmdispatch.data import load_table

    return load_table(path)
