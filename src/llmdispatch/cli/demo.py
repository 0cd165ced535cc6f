"""``llmdispatch demo``: train, serve and exercise a router and a cascade end to end."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    p = subparsers.add_parser(
        "demo",
        help="train a router and a cascade, serve them, send the test prompts, show the bill",
        description="Trains on the data set's train split, starts the replay provider and the "
        "gateway on loopback, sends the test prompts through the official openai client, and "
        "prints what was chosen, the quality from the recorded scores, and the cost against "
        "always using the strongest model.",
    )
    p.add_argument("--data", default="cascades9", help="data-set name or path")
    p.add_argument("--limit", type=int, default=600, help="test prompts to send (0: all)")
    p.add_argument("--concurrency", type=int, default=16)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its table."""
    from rich.console import Console
    from rich.table import Table

    from llmdispatch.gateway.demo import run_demo

    console = Console()
    result = run_demo(args.data, args.limit, args.concurrency, console)
    table = Table(
        title=f"{result['data']}: {result['prompts']} test prompts per policy through the "
        f"gateway ({result['seconds']:.1f} s)"
    )
    for col in ("policy", "quality", "cost $", "vs best", "rungs", "err", "most used"):
        table.add_column(col, justify="left" if col in ("policy", "most used") else "right")
    for r in result["rows"]:
        n = max(r["requests"], 1)
        models = ", ".join(f"{m} {c / n:.0%}" for m, c in r["top_models"][:2])
        table.add_row(
            r["policy"].removeprefix("llmdispatch/"),
            f"{r['quality']:.4f}",
            f"{r['cost']:.4f}",
            f"{r['cost_vs_strongest']:.0%}",
            f"{r['mean_rungs']:.2f}",
            str(r["errors"]),
            models,
        )
    console.print(table)
    console.print(
        f"quality is the recorded score of the model that answered; cost is what the gateway "
        f"billed; 'vs best' compares with always calling {result['strongest']}, the best "
        "model on the train split."
    )
    return 0 if all(r["errors"] == 0 for r in result["rows"]) else 3
