"""``llmdispatch route ARTIFACT "prompt"``: show a trained policy's decision and why.

``--file`` decides on many prompts at once (JSON lines with ``prompt``, or one prompt per line)
and writes one JSON line per prompt: the choice, the fallbacks and every model's estimate.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmdispatch.query import Query


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
    p.add_argument(
        "--file",
        type=Path,
        help="decide on every prompt of a file (.jsonl: objects with 'prompt' and optionally "
        "'id', 'system'; otherwise one prompt per line) and print one JSON line per prompt",
    )
    p.set_defaults(func=run)


#: Prompts whose estimates are computed together when deciding on a file.
BATCH = 256


def run(args: argparse.Namespace) -> int:
    """Explain the decision."""
    from rich.console import Console
    from rich.table import Table

    from llmdispatch.artifacts import load_artifact

    if args.file is not None:
        if args.prompt is not None:
            raise ValueError("give a prompt or --file, not both")
        return route_file(args)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        raise ValueError("empty prompt")
    policy, meta = load_artifact(args.artifact)
    query = make_query(prompt, args.system, args.image)
    allowed = allowed_models(policy, args.only)
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


def make_query(prompt: str, system: str | None, image: bool) -> Query:
    """The query ``route`` decides on (with an image part when ``image``)."""
    from llmdispatch.query import Query

    query = Query.from_text(prompt, system=system)
    return replace(query, modalities=frozenset({"text", "image"})) if image else query


def allowed_models(policy: Any, only: list[str] | None) -> frozenset[str] | None:
    """``--only`` as the allowed set, after checking that the artifact knows every name."""
    allowed = frozenset(only) if only else None
    known = getattr(policy, "models_", None) or getattr(policy, "rungs", None)
    if allowed and known:
        unknown = sorted(allowed - set(known))
        if unknown:
            raise ValueError(
                f"--only names models this artifact does not know: {', '.join(unknown)}; "
                f"known: {', '.join(known)}"
            )
    return allowed


def read_prompts(path: Path) -> list[tuple[str, str, str | None]]:
    """``(id, prompt, system)`` per prompt of a ``.jsonl`` file or a one-per-line text file;
    a bad line is an error naming the file and line."""
    from llmdispatch.data import DataError

    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out: list[tuple[str, str, str | None]] = []
    jsonl = path.suffix in (".jsonl", ".json")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if not jsonl:
                out.append((str(lineno), line.rstrip("\n"), None))
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
            prompt = rec.get("prompt") if isinstance(rec, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise DataError(f"{path}:{lineno}: field 'prompt': expected a non-empty string")
            system = rec.get("system")
            if system is not None and not isinstance(system, str):
                raise DataError(f"{path}:{lineno}: field 'system': expected a string")
            out.append((str(rec.get("id", lineno)), prompt, system))
    if not out:
        raise DataError(f"{path}: no prompts")
    return out


def route_file(args: argparse.Namespace) -> int:
    """One JSON line per prompt of ``args.file``: the choice, fallbacks and estimates."""
    from llmdispatch.artifacts import load_artifact

    prompts = read_prompts(args.file)
    policy, _meta = load_artifact(args.artifact)
    allowed = allowed_models(policy, args.only)
    for start in range(0, len(prompts), BATCH):
        chunk = prompts[start : start + BATCH]
        queries = [
            make_query(prompt, system or args.system, args.image) for _, prompt, system in chunk
        ]
        policy.prefetch(queries)  # one batched estimate for the chunk (routers)
        for (pid, _, _), query in zip(chunk, queries, strict=True):
            plan = policy.explain(query, allowed)
            doc = {
                "id": pid,
                "choice": plan.choice,
                "fallbacks": plan.fallbacks,
                "knob": plan.knob,
                "quality": {c.model: round(c.quality, 6) for c in plan.candidates},
                "cost": {c.model: c.cost for c in plan.candidates},
                "excluded": {c.model: c.excluded for c in plan.candidates if c.excluded},
            }
            print(json.dumps(doc))
    return 0
