"""``llmdispatch route ARTIFACT "prompt"``: show a trained policy's decision and why."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``route`` command."""
    p = subparsers.add_parser(
        "route",
        help="show which model a trained policy picks for a prompt, and why",
        description="Load an artifact and explain its first decision for a prompt without "
        "calling any model: per-model estimated quality, expected cost, utility, and the "
        "constraints that removed a model.",
    )
    p.add_argument("artifact", type=Path, help="artifact folder written by `llmdispatch train`")
    p.add_argument("prompt", nargs="?", help="the prompt (read from stdin when omitted)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--image", action="store_true", help="the request carries an image")
    p.add_argument("--only", nargs="+", metavar="MODEL", help="models allowed for this request")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Explain the decision."""
    from rich.console import Console
    from rich.table import Table

    from llmdispatch.artifacts import load_artifact
    from llmdispatch.query import Query

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        raise ValueError("empty prompt")
    policy, meta = load_artifact(args.artifact)
    query = Query.from_text(prompt, system=args.system)
    if args.image:
        query = Query(
            text=query.text,
            messages=query.messages,
            modalities=frozenset({"text", "image"}),
        )
    allowed = frozenset(args.only) if args.only else None
    known = getattr(policy, "models_", None) or getattr(policy, "rungs", None)
    if allowed and known:
        unknown = sorted(allowed - set(known))
        if unknown:
            raise ValueError(
                f"--only names models this artifact does not know: {', '.join(unknown)}; "
                f"known: {', '.join(known)}"
            )
    plan = policy.explain(query, allowed)
    if args.json:
        doc = {
            "policy": plan.policy,
            "choice": plan.choice,
            "knob": plan.knob,
            "candidates": [c.__dict__ for c in plan.candidates],
        }
        print(json.dumps(doc, indent=2))
        return 0
    table = Table(title=f"{plan.policy}: {plan.choice}  (λ = {plan.knob})")
    for col in ("model", "est. quality", "expected cost", "utility", "excluded because"):
        table.add_column(col, justify="left" if col in ("model", "excluded because") else "right")
    for c in plan.candidates:
        mark = "→ " if c.model == plan.choice else "  "
        table.add_row(
            mark + c.model,
            f"{c.quality:.3f}",
            f"${c.cost:.6f}",
            f"{c.utility:.4f}",
            c.excluded or "",
        )
    Console().print(table)
    weights = getattr(policy, "trained_on_", {}).get("member_weights", {})
    if len(weights) > 1:  # an ensemble or a stack: say how its members are mixed
        mix = " · ".join(f"{name} {w:.2f}" for name, w in weights.items())
        Console().print(f"estimates mixed over members: {mix}")
    trained = meta.get("config", {}).get("data")
    if trained:
        Console().print(f"trained on {trained}; fallbacks in order: {', '.join(plan.fallbacks)}")
    return 0
