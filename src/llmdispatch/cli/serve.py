"""``llmdispatch serve``, ``serve-replay`` and ``keys``: run the gateway and its helpers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from llmdispatch.gateway.replay_server import add_arguments


def register(subparsers: Any) -> None:
    """Add ``serve``, ``serve-replay`` and ``keys``."""
    p = subparsers.add_parser(
        "serve",
        help="run the OpenAI-compatible gateway",
        description="Serve trained policies behind /v1/chat/completions (uvicorn).",
    )
    p.add_argument("config", type=Path, help="gateway YAML config")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=run_serve)

    r = subparsers.add_parser(
        "serve-replay",
        help="serve an outcome table as an OpenAI-compatible upstream (tests, demo, benchmarks)",
        description="Answer chat completions with the recorded responses of a data set, with "
        "optional recorded latency, streaming chunk size and injected faults.",
    )
    add_arguments(r)
    r.set_defaults(func=run_replay)

    k = subparsers.add_parser("keys", help="API key helpers")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    h = ksub.add_parser("hash", help="print the stored form of a key for the config")
    h.add_argument("secret")
    h.set_defaults(func=run_hash)


def run_serve(args: argparse.Namespace) -> int:
    """Validate the config, then hand it to uvicorn."""
    import uvicorn

    from llmdispatch.gateway.config import CONFIG_ENV, load_config

    cfg = load_config(args.config)  # fail fast with line-precise errors
    if args.workers > 1:
        # The supervising process only starts and watches the workers: it does not import
        # the application (scipy, starlette, httpx, the policies' code: ~20 MiB held idle).
        os.environ[CONFIG_ENV] = str(args.config.resolve())
        uvicorn.run(
            "llmdispatch.gateway.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            log_config=log_config(args.log_level),
        )
    else:
        from llmdispatch.gateway.app import create_app
        from llmdispatch.gateway.memory import release_free_memory

        app = create_app(cfg)
        release_free_memory()  # what loading the policies freed
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            log_config=log_config(args.log_level),
        )
    return 0


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration plus the gateway's own loggers (``llmdispatch.*``:
    reloads, request-log problems), on uvicorn's handler and at the same level."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["llmdispatch"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def run_replay(args: argparse.Namespace) -> int:
    """Serve a table's recorded answers."""
    from llmdispatch.gateway.replay_server import serve

    return serve(args)


def run_hash(args: argparse.Namespace) -> int:
    """Print ``sha256:<hex>``."""
    from llmdispatch.gateway.auth import hash_api_key

    print(hash_api_key(args.secret))
    return 0
