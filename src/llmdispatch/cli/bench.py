"""``llmdispatch bench``: every registered policy on every data set, with honest numbers.

``--config`` adds the user's own training configurations (the YAML files ``train`` reads)
beside the references and the tuned kNN baseline, so a router of one's own is judged on the
same test split, with the same paired intervals, as the field's methods.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmdispatch.evaluation.suites import BenchmarkPolicy

#: Benchmark family of each registered policy kind, for a configuration's entry.
POLICY_FAMILIES = {
    "router": "router",
    "cascade": "cascade",
    "frugalgpt": "cascade",
    "guaranteed-cascade": "cascade",
    "router-cascade": "composition",
    "cascade-routing": "composition",
    "bandit": "bandit",
}
#: What a configuration is compared with when ``--policies`` is not given.
CONFIG_REFERENCES = ("zero-router", "random", "oracle")


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
    p.add_argument(
        "--config",
        nargs="+",
        type=Path,
        metavar="YAML",
        help="your own training configs (as for `train`), each run as a policy named after its "
        "file; without --policies they run beside the references and the tuned kNN baseline, "
        "on the configs' data sets unless data sets are named",
    )
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
    data, policies, labels, models = args.data or None, args.policies, args.labels, args.models
    extra: list[BenchmarkPolicy] = []
    if args.config:
        suite = config_suite(args.config, labels, models)
        extra, labels, models = suite.entries, suite.labels, suite.models
        data = data or suite.data
        if policies is None:
            policies = [*CONFIG_REFERENCES, baseline_name()]
        for note in suite.notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
    start = time.perf_counter()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("bench", total=None)
        results = run_bench(
            data,
            policies,
            bootstrap=args.bootstrap,
            seed=args.seed,
            drop_leaked=args.drop_leaks,
            allow_pickle=args.allow_pickle,
            on_step=lambda msg: progress.update(task, description=msg),
            labels=labels,
            models=models,
            extra=extra,
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


def baseline_name() -> str:
    """The tuned kNN baseline (TF-IDF or MiniLM, chosen on validation), or its TF-IDF form
    when the ``embeddings`` extra is not installed."""
    import importlib.util

    from llmdispatch.evaluation.bench import BASELINE, FALLBACK_BASELINE

    has_minilm = importlib.util.find_spec("sentence_transformers") is not None
    return BASELINE if has_minilm else FALLBACK_BASELINE


@dataclass
class ConfigSuite:
    """What ``--config`` adds to a benchmark run."""

    entries: list[BenchmarkPolicy]
    data: list[str]
    labels: list[str] | None
    models: list[str] | None
    notes: list[str]


def config_suite(
    paths: list[Path], labels: list[str] | None, models: list[str] | None
) -> ConfigSuite:
    """Benchmark entries for training configs, the data sets they name, and the label and
    model filters to apply (the command line's, else the configs', which must then agree)."""
    from llmdispatch.cli.train import TrainConfig
    from llmdispatch.evaluation.bench import VALIDATION_FRACTION
    from llmdispatch.evaluation.suites import BenchmarkPolicy
    from llmdispatch.registry import REGISTRY
    from llmdispatch.yamlconfig import load_yaml_model

    entries: list[BenchmarkPolicy] = []
    data: list[str] = []
    notes: list[str] = []
    filters: dict[str, set[tuple[str, ...] | None]] = {"datasets": set(), "models": set()}
    for path in paths:
        cfg = load_yaml_model(path, TrainConfig)
        cls = REGISTRY.get("policy", cfg.policy)
        params = cfg.policy_params()
        cls(**params)  # a bad parameter fails now, naming the file, not mid-benchmark
        family = POLICY_FAMILIES.get(cfg.policy, "router")
        entries.append(BenchmarkPolicy(path.stem, family, _factory(cls, params)))
        if cfg.data not in data:
            data.append(cfg.data)
        filters["datasets"].add(tuple(cfg.datasets) if cfg.datasets else None)
        filters["models"].add(tuple(cfg.models) if cfg.models else None)
        if cfg.validation_fraction != VALIDATION_FRACTION:
            notes.append(
                f"{path}: validation_fraction {cfg.validation_fraction} is not used here: "
                f"bench carves the same {VALIDATION_FRACTION:.0%} validation split for "
                "every policy, so that they are compared on equal terms"
            )
    return ConfigSuite(
        entries,
        data,
        _agreed(labels, filters["datasets"], "datasets", "--labels"),
        _agreed(models, filters["models"], "models", "--models"),
        notes,
    )


def _factory(cls: Any, params: dict[str, Any]) -> Any:
    return lambda: cls(**params)


def _agreed(
    given: list[str] | None, found: set[tuple[str, ...] | None], key: str, flag: str
) -> list[str] | None:
    """The command line's filter, else the one every config names (or none)."""
    if given is not None:
        return given
    if len(found) > 1:
        raise ValueError(
            f"the configs keep different {key} ({', '.join(sorted(str(f) for f in found))}); "
            f"bench runs every policy on the same table: pass {flag} to choose one"
        )
    (only,) = found
    return list(only) if only else None
