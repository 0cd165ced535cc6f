"""``llmdispatch bench``: every registered policy on every data set, with honest numbers."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``bench`` command."""
    p = subparsers.add_parser(
        "bench",
        help="replay policies on outcome tables and report cost/quality metrics",
        description="Fit each policy on a data set's train split, replay it on the test "
        "split, and write report.md (tables with bootstrap CIs), results.json (every figure "
        "and curve) and one PNG plot per data set.",
    )
    p.add_argument("data", nargs="*", help="data-set names or paths (default: all found)")
    p.add_argument("--policies", nargs="+", metavar="NAME", help="benchmark policies to run")
    p.add_argument("--list", action="store_true", help="list the benchmark policies and exit")
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--drop-leaks", action="store_true", help="drop test prompts whose text is also in train"
    )
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle tables (unsafe)")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="only these dataset labels")
    p.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help="only these models (e.g. two for RouteLLM's APGR/CPT)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write the reports."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from llmdispatch.evaluation.bench import run_bench
    from llmdispatch.evaluation.plots import plot_dataset
    from llmdispatch.evaluation.report import fmt, write_json, write_markdown
    from llmdispatch.evaluation.suites import benchmark_entries

    console = Console(stderr=True)
    if args.list:
        for e in benchmark_entries():
            print(f"{e.name:28s} {e.family}")
        return 0
    if args.bootstrap < 10:
        raise ValueError("--bootstrap must be at least 10")
    start = time.perf_counter()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("bench", total=None)
        results = run_bench(
            args.data or None,
            args.policies,
            bootstrap=args.bootstrap,
            seed=args.seed,
            drop_leaked=args.drop_leaks,
            allow_pickle=args.allow_pickle,
            on_step=lambda msg: progress.update(task, description=msg),
            labels=args.labels,
            models=args.models,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    plots = {}
    for d in results:
        png = plot_dataset(d, args.out / f"{d.name}.png")
        plots[d.name] = png.name
    write_markdown(results, args.out / "report.md", plots)
    write_json(results, args.out / "results.json")
    for d in results:
        ok = [r for r in d.policies if r.run is not None]
        best = max(
            (r for r in ok if r.family != "reference"),
            key=lambda r: r.metrics["aiq"],
            default=None,
        )
        line = f"{d.name}: {len(ok)} policies, zero-router AIQ {fmt(d.zero['aiq'])}"
        if best is not None:
            line += f", best {best.name} AIQ {fmt(best.metrics['aiq'])}"
        failed = [r.name for r in d.policies if r.error]
        if failed:
            line += f"; failed: {', '.join(failed)}"
        console.print(line)
    console.print(f"wrote {args.out / 'report.md'} in {time.perf_counter() - start:.0f} s")
    return 0
