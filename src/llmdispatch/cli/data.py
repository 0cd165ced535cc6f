"""``llmdispatch data``: look at outcome tables (``info``, ``list``) and export the log."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``data`` command group."""
    p = subparsers.add_parser("data", help="inspect outcome tables and export the request log")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    info = sub.add_parser(
        "info",
        help="summary of a table: counts, per-model means, oracle, missing fields, leaks",
    )
    info.add_argument("data", help="data-set name or path (folder, .jsonl[.gz], .csv, .parquet)")
    info.add_argument("--allow-pickle", action="store_true", help="allow pickle tables (unsafe)")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=run_info)
    ls = sub.add_parser("list", help="data sets found by name")
    ls.set_defaults(func=run_list)
    export = sub.add_parser(
        "export-log",
        help="write the gateway's request log as an outcome table (JSONL) to train on",
    )
    export.add_argument("database", help="SQLite path or postgresql:// URL of the request log")
    export.add_argument("out", type=Path, help="output .jsonl or .jsonl.gz")
    export.set_defaults(func=run_export)


def run_info(args: argparse.Namespace) -> int:
    """Print a table's summary."""
    from rich.console import Console
    from rich.table import Table

    from llmdispatch.data import load_table
    from llmdispatch.data.summary import summarize_table

    start = time.perf_counter()
    table = load_table(args.data, allow_pickle=args.allow_pickle)
    s = summarize_table(table, time.perf_counter() - start)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    con = Console()
    con.print(
        f"[bold]{s['name']}[/bold]: {s['prompts']} prompts × {s['models']} models "
        f"(read in {s['load_seconds']:.2f} s from {s['source']})"
    )
    t = Table(title="prompts per data set and split")
    for col in ("dataset", "train", "test"):
        t.add_column(col, justify="left" if col == "dataset" else "right")
    for d, c in s["per_dataset"].items():
        t.add_row(d, str(c["train"]), str(c["test"]))
    con.print(t)
    t = Table(title="models (means over the prompts each has)")
    for col in ("model", "coverage", "mean score", "mean cost (USD)"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for m in s["per_model"]:
        cost = "—" if m["mean_cost"] is None else f"{m['mean_cost']:.3g}"
        if m["prices_estimated"]:
            cost += " (est.)"
        score = "—" if m["mean_score"] is None else f"{m['mean_score']:.4f}"
        t.add_row(m["model"], f"{m['coverage']:.0%}", score, cost)
    con.print(t)
    best = s["best_single"]
    con.print(
        f"oracle {s['oracle']:.4f}; best single model "
        + (f"{best['model']} {best['mean_score']:.4f}" if best else "—")
    )
    missing = ", ".join(f"{k} {v:.0%}" for k, v in s["missing_share"].items() if v > 0)
    con.print(f"missing values: {missing or 'none'}")
    if s["costs_estimated"]:
        con.print("costs are estimates (see the data set's card)")
    con.print(
        f"test prompts whose text is also in train: {s['leaked_test_prompts']}"
        + (" (bench --drop-leaks drops them)" if s["leaked_test_prompts"] else "")
    )
    for note in s["notes"]:
        con.print(f"note: {note}")
    if s["problems"]:
        con.print(f"{len(s['problems'])} problems while loading, e.g. {s['problems'][0]}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Names and folders of the data sets found."""
    from llmdispatch.data.locate import available_datasets, data_roots

    found = available_datasets()
    if not found:
        roots = ", ".join(str(r) for r in data_roots()) or "(none)"
        print(f"no data sets under {roots}; set LLMDISPATCH_DATA")
        return 1
    for name, path in found.items():
        print(f"{name:24s} {path}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Request log → common JSONL format."""
    from llmdispatch.gateway.requestlog import export_table, write_jsonl

    table = export_table(args.database)
    n = write_jsonl(table, args.out)
    scored = int(table.known.sum())
    print(
        f"wrote {n} prompts × {table.n_models} models ({scored} with feedback scores) to {args.out}"
    )
    return 0
