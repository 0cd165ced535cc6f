"""``llmdispatch data export-log DB OUT``: the gateway's request log as an outcome table.

``OUT`` ending in ``.jsonl`` or ``.jsonl.gz`` is one file in the common format; any other
``OUT`` is a data-set folder (``outcomes.jsonl.gz``, ``models.json`` with the prices from
``--config``, and a short ``README.md`` card) that ``llmdispatch train`` and ``bench`` load
like the shared data sets. See :mod:`llmdispatch.gateway.logexport` for what is exported.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmdispatch.catalog import ModelCard


def _instant(text: str) -> float:
    """UNIX seconds from a number or an ISO date/time (UTC unless it names a zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither UNIX seconds nor an ISO date such as 2026-11-01"
        ) from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def add_export_log(sub: Any) -> None:
    """Add ``export-log`` to the ``data`` command group (``sub`` is its sub-parsers)."""
    p = sub.add_parser(
        "export-log",
        help="write the gateway's request log as an outcome table (JSONL) to train on",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("database", help="SQLite path or postgresql:// URL of the request log")
    p.add_argument("out", type=Path, help="output .jsonl[.gz] file, or a folder for a data set")
    p.add_argument("--since", type=_instant, help="only requests from then on (ISO or UNIX s)")
    p.add_argument("--until", type=_instant, help="only requests before then (ISO or UNIX s)")
    p.add_argument(
        "--policy", action="append", dest="policies", help="only this policy (repeatable)"
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="share of prompts in the test split (hash of the prompt; default 0: all train)",
    )
    p.add_argument("--dataset", default="log", help="the records' dataset label (default log)")
    p.add_argument("--config", type=Path, help="gateway config whose model prices to export")
    p.set_defaults(func=run_export_log)


def register_export(data_subparsers: Any) -> None:
    """Alias of :func:`add_export_log` (the name the gateway brief used)."""
    add_export_log(data_subparsers)


def _cards(config: Path | None) -> list[ModelCard]:
    if config is None:
        return []
    from llmdispatch.gateway.config import load_config

    cfg = load_config(config)
    return [ep.card(name) for name, ep in cfg.models.items()]


def _card_text(name: str, source: str, n: int, models: tuple[str, ...], args: Any) -> str:
    window = []
    if args.since is not None:
        window.append(f"from {datetime.fromtimestamp(args.since, UTC).isoformat()}")
    if args.until is not None:
        window.append(f"until {datetime.fromtimestamp(args.until, UTC).isoformat()}")
    return (
        f"# {name}\n\nExported from the llmdispatch request log `{source}`"
        f"{' (' + ', '.join(window) + ')' if window else ''}"
        f"{'; policies: ' + ', '.join(args.policies) if args.policies else ''}.\n\n"
        f"{n} prompts, {len(models)} models: {', '.join(models)}.\n\n"
        "`score` is the mean feedback reward sent to `/v1/feedback` (absent without one); "
        "cost, tokens and latency are the means of the logged requests, `response` the latest "
        "answer. Costs are what the gateway computed from its configured prices.\n"
    )


def run_export_log(args: argparse.Namespace) -> int:
    """Request log → common JSONL format (a file or a data-set folder)."""
    from llmdispatch.gateway.logexport import (
        read_log,
        table_from_records,
        write_models_json,
        write_records,
    )

    log = read_log(
        args.database,
        since=args.since,
        until=args.until,
        policies=args.policies,
        test_fraction=args.test_fraction,
        dataset=args.dataset,
    )
    cards = _cards(args.config)
    out: Path = args.out
    # Validate before writing: a table the loaders would reject is an error here.
    table = table_from_records(log.records, out.name, args.database, cards)
    if "".join(out.suffixes[-2:]).endswith((".jsonl", ".jsonl.gz")):
        target = out
        n = write_records(log.records, out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        target = out / "outcomes.jsonl.gz"
        n = write_records(log.records, target)
        write_models_json(cards, table.models, out / "models.json")
        card = _card_text(out.name, args.database, n, table.models, args)
        (out / "README.md").write_text(card, encoding="utf-8")
    scored = int(table.known.sum())
    print(
        f"wrote {n} prompts × {table.n_models} models ({scored} with feedback scores, "
        f"{log.preferences} preferences not scored) from {log.requests_read} requests "
        f"to {target}"
    )
    return 0
