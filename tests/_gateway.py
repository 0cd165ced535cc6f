"""Helpers for the gateway tests: servers on free loopback ports, configs, artifacts."""

from __future__ import annotations

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
