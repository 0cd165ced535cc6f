"""``llmdispatch data``: look at outcome tables (``info``, ``list``) and export the request log.

Each action is a function in :data:`DATA_COMMANDS` that adds one sub-parser to the group and
sets ``func``. To add an action from another module, decorate its adder with
:func:`add_data_command` and make sure the module is imported before :func:`register` runs
(or append the adder here)::

    @add_data_command
    def _my_action(sub: Any) -> None:
        p = sub.add_parser("my-action", help="...")
        p.set_defaults(func=run_my_action)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmdispatch.data.summary import TableSummary

DataCommand = Callable[[Any], None]

#: Adders of the ``data`` actions, in the order ``llmdispatch data --help`` lists them.
DATA_COMMANDS: list[DataCommand] = []


def add_data_command(adder: DataCommand) -> DataCommand:
    """Register an adder of one ``data`` action (usable as a decorator)."""
    DATA_COMMANDS.append(adder)
    return adder


def register(subparsers: Any) -> None:
    """Add the ``data`` command group with every action in :data:`DATA_COMMANDS`."""
    p = subparsers.add_parser("data", help="inspect outcome tables and export the request log")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for adder in DATA_COMMANDS:
        adder(sub)


@add_data_command
def _add_info(sub: Any) -> None:
    info = sub.add_parser(
        "info",
        help="summary of a table: counts, per-model means, oracle, missing fields, leaks",
    )
    info.add_argument("data", help="data-set name or path (folder, .jsonl[.gz], .csv, .parquet)")
    info.add_argument(
        "--allow-pickle", action="store_true", help="allow pickle tables (pickle can run code)"
    )
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=run_info)


@add_data_command
def _add_list(sub: Any) -> None:
    ls = sub.add_parser("list", help="data sets found by name, with prompt counts")
    ls.set_defaults(func=run_list)


@add_data_command
def _add_export_log(sub: Any) -> None:
    from llmdispatch.cli.data_export import add_export_log

    add_export_log(sub)


def run_info(args: argparse.Namespace) -> int:
    """Print a table's summary (rich tables, or JSON with ``--json``)."""
    from llmdispatch.data import load_table
    from llmdispatch.data.summary import summarize_table

    start = time.perf_counter()
    table = load_table(args.data, allow_pickle=args.allow_pickle)
    summary = summarize_table(table, time.perf_counter() - start)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=1))
    else:
        _print_summary(summary)
    return 0


def _print_summary(s: TableSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(
        f"[bold]{s.name}[/bold]: {s.prompts} prompts × {s.models} models "
        f"(loaded in {s.load_seconds:.2f} s from {s.source})"
    )
    t = Table(title="prompts per data set and split")
    for col in ("dataset", "train", "test", "test also in train"):
        t.add_column(col, justify="left" if col == "dataset" else "right")
    for d in s.per_dataset:
        t.add_row(d.dataset, str(d.train), str(d.test), str(d.leaked))
    con.print(t)
    t = Table(title="models (means over the prompts where each value is known)")
    for col in ("model", "coverage", "mean score", "mean cost (USD)"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for m in s.per_model:
        cost = "—" if m.mean_cost is None else f"{m.mean_cost:.6f}"
        if m.prices_estimated:
            cost += " (est.)"
        score = "—" if m.mean_score is None else f"{m.mean_score:.4f}"
        t.add_row(m.model, f"{m.coverage:.1%}", score, cost)
    con.print(t)
    best = s.best_single
    oracle = "—" if s.oracle is None else f"{s.oracle:.4f}"
    con.print(
        f"oracle {oracle}; best single model "
        + (f"{best.model} {best.mean_score:.4f}" if best else "—")
    )
    missing = ", ".join(
        f"{k} {'<0.1%' if v < 0.001 else f'{v:.1%}'}" for k, v in s.missing_share.items() if v > 0
    )
    con.print(f"missing values (share of prompt × model cells): {missing or 'none'}")
    if s.costs_estimated:
        con.print("costs are estimates (see the data set's card)")
    if s.derived_costs:
        con.print(f"{s.derived_costs} costs derived from tokens × price")
    con.print(
        f"test prompts whose text is also in train: {s.leaked_test_prompts}"
        + (" (bench --drop-leaks drops them)" if s.leaked_test_prompts else "")
    )
    con.print(f"rows read {s.rows_read}, skipped {s.rows_skipped}")
    for note in s.notes:
        con.print(f"note: {note}", markup=False)
    if s.problems:
        con.print(f"{len(s.problems)} problems while loading:")
        for problem in s.problems[:10]:
            con.print(f"  {problem}", markup=False)


def run_list(args: argparse.Namespace) -> int:
    """Names, sizes and folders of the data sets found by name."""
    from llmdispatch.data.locate import ENV_VAR, available_datasets, data_roots
    from llmdispatch.data.summary import count_prompts

    found = available_datasets()
    if not found:
        roots = ", ".join(str(r) for r in data_roots()) or "(none)"
        print(f"no data sets under {roots}; set {ENV_VAR}")
        return 1
    print(f"{'name':24s} {'prompts':>8s} {'models':>7s}  folder")
    for name, path in found.items():
        counts = count_prompts(path)
        prompts, models = (str(counts[0]), str(counts[1])) if counts else ("?", "?")
        print(f"{name:24s} {prompts:>8s} {models:>7s}  {path}")
    return 0
