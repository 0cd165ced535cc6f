"""Choose methods without looking at test: routers compared on held-out parts of train.

    .venv/bin/python benchmarks/bench_dev.py [--data cascades9 llmrouter-dc ...]
        [--routers router-knn router-stack ...] [--salts dev dev2] [--out results]
        [--variant router-stack-cv router-stack weight_folds=5 ...] [--jobs 2]

Before a new method or default is adopted, it is compared here, on each data set's train
split only: a salted hash sets ``--dev-fraction`` of the training prompts aside as a
development set, every router is fitted on the rest exactly as ``llmdispatch bench`` fits
it on a train split (a validation share carved out for its own tuning) and replayed on the
development set. Each salt is another such cut, so a difference that holds across salts is
not one lucky split. The test split is never read.

``--variant NAME BASE KEY=VALUE ...`` (repeatable) adds a router to the comparison without
registering it: benchmark router ``BASE`` (``router-stack``) with some of its parameters
replaced (values are YAML: ``5``, ``true``, ``[tfidf, minilm]``), run under ``NAME``.

``--jobs N`` runs N cuts at a time in separate processes (every router is single-threaded;
the results are the same as with one job, in the same order).

Writes ``OUT/dev/dev.json`` and ``dev.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console

from llmdispatch.data.locate import load_table
from llmdispatch.data.splits import train_validation
from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.metrics import References, curve_metrics
from llmdispatch.evaluation.replay import replay
from llmdispatch.evaluation.suites import BenchmarkPolicy, benchmark_entries
from llmdispatch.evaluation.suites.routers import ROUTERS, router_factory
from llmdispatch.registry import UnknownComponentError

COMMAND = ".venv/bin/python benchmarks/bench_dev.py"
BASELINE = "router-knn"
DEFAULT_DATA = ["alpaca-eval", "arena-hard-v1", "cascades9", "llmrouter-dc", "routerbench-subset"]
DEFAULT_ROUTERS = [
    "router-knn",
    "router-knn-ensemble",
    "router-stack",
    "router-embedllm",
    "router-mlp",
    "router-eagle",
]

console = Console()


def router_variant(spec: list[str]) -> BenchmarkPolicy:
    """``[NAME, BASE, KEY=VALUE, ...]``: benchmark router ``BASE`` with these parameters
    replaced, under ``NAME``; a ``ValueError`` says what is wrong with the spec."""
    if len(spec) < 3:
        raise ValueError(f"--variant needs NAME BASE KEY=VALUE..., got {' '.join(spec)!r}")
    name, base, *pairs = spec
    label = base.removeprefix("router-")
    if label not in ROUTERS:
        known = ", ".join(f"router-{r}" for r in ROUTERS)
        raise ValueError(f"--variant {name}: {base!r} is not a benchmark router; known: {known}")
    params = dict(ROUTERS[label])
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--variant {name}: {pair!r} is not KEY=VALUE")
        params[key] = yaml.safe_load(value)
    factory = router_factory(name, params)
    try:
        factory()  # a wrong parameter name or value fails here, before any fitting
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--variant {name}: {exc}") from None
    return BenchmarkPolicy(name, "router", factory, None)


def dev_aiq(
    name: str, train: OutcomeTable, routers: list[BenchmarkPolicy], salt: str, fraction: float
) -> dict[str, Any]:
    """AIQ of every router and of the zero router on one development cut of data set
    ``name``'s train split ``train``."""
    rest, dev = train_validation(train, fraction, salt=salt)
    fit_part, validation = train_validation(rest)
    refs = References.from_matrices(dev.models, dev.score, dev.cost)
    hull = refs.zero_hull()
    out: dict[str, Any] = {
        "dataset": name,
        "salt": salt,
        "prompts": {"fit": fit_part.n_prompts, "validation": validation.n_prompts},
        "dev_prompts": dev.n_prompts,
        "zero": curve_metrics(hull.cost, hull.quality, refs)["aiq"],
        "aiq": {},
    }
    for entry in routers:
        console.print(f"{name} ({salt}): {entry.name}")
        policy = entry.build().fit(fit_part, validation)
        run = replay(policy, dev, entry.name)
        out["aiq"][entry.name] = curve_metrics(run.mean_cost, run.mean_quality, refs)["aiq"]
    return out


def entries_for(routers: list[str], variants: list[list[str]]) -> list[BenchmarkPolicy]:
    """The benchmark routers named and the ``--variant`` specs, in that order."""
    return benchmark_entries(routers) + [router_variant(v) for v in variants]


def run_cut(
    name: str, salt: str, routers: list[str], variants: list[list[str]], fraction: float
) -> dict[str, Any]:
    """:func:`dev_aiq` of one cut from picklable arguments (a ``--jobs`` worker's task)."""
    return dev_aiq(name, train_split(name), entries_for(routers, variants), salt, fraction)


@functools.cache
def train_split(name: str) -> OutcomeTable:
    """Data set ``name``'s train split, loaded once per process (the test split is never
    passed on)."""
    return load_table(name).split("train")


def markdown(
    cuts: list[dict[str, Any]], routers: list[str], fraction: float, command: str = COMMAND
) -> str:
    """One row per data set and cut: each router's AIQ minus the tuned kNN's; then the mean
    over cuts and how many cuts each router won."""
    lines = [
        "# Development comparison (train splits only)",
        "",
        f"`{command}` (development share {fraction:.0%} of each train split)",
        "",
        "ΔAIQ against the tuned kNN (`router-knn`) on held-out parts of the train splits; "
        "positive: better than the kNN. The test splits are not read.",
        "",
        "| data set | cut | dev prompts | zero − kNN | "
        + " | ".join(r for r in routers if r != BASELINE)
        + " |",
        "|---|---|---:|---:|" + "---:|" * (len(routers) - (BASELINE in routers)),
    ]
    for cut in cuts:
        base = cut["aiq"].get(BASELINE)
        cells = [
            "—" if base is None else f"{cut['aiq'][r] - base:+.4f}"
            for r in routers
            if r != BASELINE
        ]
        zero = "—" if base is None else f"{cut['zero'] - base:+.4f}"
        lines.append(
            f"| {cut['dataset']} | {cut['salt']} | {cut['dev_prompts']} | {zero} | "
            + " | ".join(cells)
            + " |"
        )
    deltas = {
        r: [c["aiq"][r] - c["aiq"][BASELINE] for c in cuts if BASELINE in c["aiq"]]
        for r in routers
        if r != BASELINE
    }
    zeros = [c["zero"] - c["aiq"][BASELINE] for c in cuts if BASELINE in c["aiq"]]
    if zeros:  # every cut weighs the same, whatever its size
        lines.append(
            f"| all cuts | mean | | {np.mean(zeros):+.4f} | "
            + " | ".join(f"{np.mean(d):+.4f}" for d in deltas.values())
            + " |"
        )
        lines.append(
            f"| all cuts | above kNN | | {sum(z > 0 for z in zeros)}/{len(zeros)} | "
            + " | ".join(f"{sum(x > 0 for x in d)}/{len(d)}" for d in deltas.values())
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run every router on every cut; print and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=DEFAULT_DATA)
    ap.add_argument("--routers", nargs="+", default=DEFAULT_ROUTERS)
    ap.add_argument("--salts", nargs="+", default=["dev", "dev2"])
    ap.add_argument("--dev-fraction", type=float, default=0.35)
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME BASE KEY=VALUE",
        help="also run benchmark router BASE with these parameters replaced, as NAME",
    )
    ap.add_argument("--jobs", type=int, default=1, help="cuts run at a time (processes)")
    args = ap.parse_args()
    if not 0 < args.dev_fraction < 1:
        ap.error(f"--dev-fraction must lie between 0 and 1, got {args.dev_fraction}")
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    try:  # unknown names and bad variants fail here, before any fitting
        entries = entries_for(args.routers, args.variant)
    except (UnknownComponentError, ValueError) as exc:
        ap.error(str(exc))
    names = [e.name for e in entries]
    if len(set(names)) < len(names):
        ap.error(f"router names must be distinct, got {names}")
    tasks = [(name, salt) for name in args.data for salt in args.salts]
    if args.jobs == 1:
        cuts = [run_cut(n, s, args.routers, args.variant, args.dev_fraction) for n, s in tasks]
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [
                pool.submit(run_cut, n, s, args.routers, args.variant, args.dev_fraction)
                for n, s in tasks
            ]
            cuts = [f.result() for f in futures]
    command = shlex.join([*COMMAND.split(), *sys.argv[1:]])
    text = markdown(cuts, names, args.dev_fraction, command)
    out = args.out / "dev"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dev.json").write_text(json.dumps(cuts, indent=2), encoding="utf-8")
    (out / "dev.md").write_text(text, encoding="utf-8")
    console.print(text)
    console.print(f"wrote {out / 'dev.md'}")


if __name__ == "__main__":
    main()
