"""Cross-fitted evaluation of routers on the small shared sets: every prompt judged once.

    .venv/bin/python benchmarks/bench_crossfit.py [--data arena-hard-v1 alpaca-eval]
        [--folds 5] [--routers router-knn router-mlp ...] [--bootstrap 1000] [--out results]

The shared split judges a router on its test half only: 147 prompts on arena-hard-v1, whose
bootstrap intervals are then too wide to tell a router from the zero router. Here the whole
table is cut into ``--folds`` folds (a fixed shuffle); for each fold every router is fitted on
the other folds exactly as ``llmdispatch bench`` fits it on a train split (a validation
share carved out for its own tuning), and replayed on the held-out fold. Each prompt is then
judged once, by a router that never saw it, and the per-prompt outcomes of the folds are
pooled into one cost/quality curve per router (the λ grid is the same in every fold). AIQ,
the zero router and the paired bootstrap intervals are computed over all prompts as
``bench`` computes them over a test split. This is a second look with more prompts, not a
replacement for the shared split's figures: the folds' routers are trained on four fifths
of the table instead of the split's train half.

Writes ``OUT/crossfit/crossfit.json`` and ``crossfit.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from llmdispatch.data.locate import load_table
from llmdispatch.data.splits import kfold_indices, train_validation
from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.bootstrap import (
    Resamples,
    interval,
    metric_samples,
    references_samples,
    zero_samples,
)
from llmdispatch.evaluation.metrics import References, curve_metrics
from llmdispatch.evaluation.replay import PolicyRun, replay
from llmdispatch.evaluation.suites import benchmark_entries

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ".venv/bin/python benchmarks/bench_crossfit.py"
BASELINE = "router-knn"
DEFAULT_ROUTERS = [
    "router-knn",
    "router-knn-tfidf",
    "router-knn-ensemble",
    "router-stack",
    "router-linear",
    "router-mlp",
    "router-mf",
    "router-embedllm",
    "router-uniroute",
    "router-bradley-terry",
    "router-sw-ranking",
    "router-eagle",
]

console = Console()


def pooled(runs: list[tuple[np.ndarray, PolicyRun]], n: int) -> PolicyRun:
    """One run over all ``n`` prompts from the folds' runs (each with its prompt indices)."""
    first = runs[0][1]
    for _, run in runs[1:]:
        if not np.array_equal(run.knobs, first.knobs):
            raise ValueError(f"{first.label}: the folds swept different knob values")
    quality = np.empty((len(first.knobs), n))
    cost = np.empty_like(quality)
    latency = np.empty_like(quality)
    datasets = np.empty(n, dtype=first.datasets.dtype)
    for rows, run in runs:
        quality[:, rows] = run.quality
        cost[:, rows] = run.cost
        latency[:, rows] = run.latency_ms
        datasets[rows] = run.datasets
    weights = np.array([len(rows) for rows, _ in runs], dtype=np.float64) / n
    return PolicyRun(
        label=first.label,
        knob_name=first.knob_name,
        knobs=first.knobs,
        quality=quality,
        cost=cost,
        latency_ms=latency,
        called=sum(w * r.called for w, (_, r) in zip(weights, runs, strict=True)),
        answered=sum(w * r.answered for w, (_, r) in zip(weights, runs, strict=True)),
        rungs=sum(w * r.rungs for w, (_, r) in zip(weights, runs, strict=True)),
        datasets=datasets,
        models=first.models,
    )


def crossfit_dataset(
    name: str, routers: list[str], folds: int, bootstrap: int, seed: int
) -> dict[str, Any]:
    """Every router on every fold of one data set; pooled metrics and paired intervals."""
    table: OutcomeTable = load_table(name)
    entries = benchmark_entries(routers)
    per_fold: dict[str, list[tuple[np.ndarray, PolicyRun]]] = {e.name: [] for e in entries}
    fit_seconds: dict[str, float] = {e.name: 0.0 for e in entries}
    errors: dict[str, str] = {}
    for k, (train_idx, test_idx) in enumerate(kfold_indices(table.n_prompts, folds, seed)):
        train, test = table.take(train_idx), table.take(test_idx)
        fit_part, validation = train_validation(train)
        for entry in entries:
            if entry.name in errors:
                continue
            console.print(f"{name}: fold {k + 1}/{folds} {entry.name}")
            try:
                policy = entry.build()
                t0 = time.perf_counter()
                policy.fit(fit_part, validation)
                fit_seconds[entry.name] += time.perf_counter() - t0
                per_fold[entry.name].append((test_idx, replay(policy, test, entry.name)))
            except Exception as exc:  # one failing router must not stop the others
                errors[entry.name] = f"{type(exc).__name__}: {exc}"
    refs = References.from_matrices(table.models, table.score, table.cost)
    rs = Resamples.draw(table.n_prompts, bootstrap, seed)
    ref_samples = references_samples(table, rs)
    zero_aiq = zero_samples(ref_samples)
    hull = refs.zero_hull()
    zero = curve_metrics(hull.cost, hull.quality, refs)["aiq"]
    samples: dict[str, np.ndarray] = {}
    rows: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.name in errors:
            rows[entry.name] = {"error": errors[entry.name]}
            continue
        run = pooled(per_fold[entry.name], table.n_prompts)
        aiq = curve_metrics(run.mean_cost, run.mean_quality, refs)["aiq"]
        samples[entry.name] = metric_samples(run, ref_samples, rs, aiq_only=True)["aiq"]
        rows[entry.name] = {
            "aiq": aiq,
            "aiq_ci": interval(samples[entry.name]),
            "d_zero": aiq - zero,
            "d_zero_ci": interval(samples[entry.name] - zero_aiq),
            "fit_seconds": fit_seconds[entry.name],
        }
    if BASELINE in samples:
        base = rows[BASELINE]["aiq"]
        for name_, s in samples.items():
            if name_ != BASELINE:
                rows[name_]["d_knn"] = rows[name_]["aiq"] - base
                rows[name_]["d_knn_ci"] = interval(s - samples[BASELINE])
    return {
        "dataset": name,
        "prompts": table.n_prompts,
        "folds": folds,
        "zero_aiq": zero,
        "routers": rows,
    }


def verdict(ci: tuple[float, float]) -> str:
    """``yes`` above zero, ``no`` below, ``tie`` across."""
    return "yes" if ci[0] > 0 else "no" if ci[1] < 0 else "tie"


def markdown(results: list[dict[str, Any]], bootstrap: int, folds: int) -> str:
    """The report: one table per data set and a summary line each."""
    out = [
        "# Cross-fitted evaluation on the small sets",
        "",
        f"`{COMMAND} --folds {folds} --bootstrap {bootstrap}`",
        "",
        __doc__.split("\n\n", 2)[2].split("\n\nWrites")[0].replace("\n", " "),
        "",
    ]
    for r in results:
        ok = {k: v for k, v in r["routers"].items() if "aiq" in v}
        best = max(ok, key=lambda k: ok[k]["aiq"]) if ok else None
        out += [f"## {r['dataset']} ({r['prompts']} prompts, {r['folds']} folds)", ""]
        if best is not None:
            b = ok[best]
            line = (
                f"Best router: `{best}`, AIQ {b['aiq']:.3f}; vs the zero router "
                f"({r['zero_aiq']:.3f}) {b['d_zero']:+.3f} [{b['d_zero_ci'][0]:+.3f}, "
                f"{b['d_zero_ci'][1]:+.3f}] ({verdict(b['d_zero_ci'])})"
            )
            if "d_knn" in b:
                line += (
                    f"; vs the tuned kNN {b['d_knn']:+.3f} [{b['d_knn_ci'][0]:+.3f}, "
                    f"{b['d_knn_ci'][1]:+.3f}] ({verdict(b['d_knn_ci'])})"
                )
            out += [line + ".", ""]
        out += [
            "| router | AIQ [95 % CI] | ΔAIQ vs zero | > zero | ΔAIQ vs kNN | > kNN | fit s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, v in sorted(r["routers"].items(), key=lambda kv: -kv[1].get("aiq", -1.0)):
            if "error" in v:
                out.append(f"| {name} | error: {v['error']} | | | | | |")
                continue
            dk = (
                f"{v['d_knn']:+.3f} [{v['d_knn_ci'][0]:+.3f}, {v['d_knn_ci'][1]:+.3f}]"
                if "d_knn" in v
                else "—"
            )
            out.append(
                f"| {name} | {v['aiq']:.3f} [{v['aiq_ci'][0]:.3f}, {v['aiq_ci'][1]:.3f}] | "
                f"{v['d_zero']:+.3f} [{v['d_zero_ci'][0]:+.3f}, {v['d_zero_ci'][1]:+.3f}] | "
                f"{verdict(v['d_zero_ci'])} | {dk} | "
                f"{verdict(v['d_knn_ci']) if 'd_knn' in v else 'is kNN'} | "
                f"{v['fit_seconds']:.1f} |"
            )
        out.append("")
    return "\n".join(out)


def main() -> None:
    """Run every router on every fold of each data set; print and write the report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["arena-hard-v1", "alpaca-eval"])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--routers", nargs="+", default=DEFAULT_ROUTERS)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    if args.folds < 2:
        ap.error("--folds must be at least 2")
    start = time.perf_counter()
    results = [
        crossfit_dataset(d, args.routers, args.folds, args.bootstrap, args.seed) for d in args.data
    ]
    folder = args.out / "crossfit"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "crossfit.json").write_text(json.dumps(results, indent=1))
    report = markdown(results, args.bootstrap, args.folds)
    (folder / "crossfit.md").write_text(report + "\n", encoding="utf-8")
    for r in results:
        t = Table(title=f"{r['dataset']}: {r['prompts']} prompts, {r['folds']} folds")
        for col in ("router", "AIQ", "Δ zero", "Δ kNN"):
            t.add_column(col)
        for name, v in r["routers"].items():
            if "error" in v:
                t.add_row(name, "error", v["error"][:40], "")
                continue
            t.add_row(
                name,
                f"{v['aiq']:.3f}",
                f"{v['d_zero']:+.3f} {tuple(round(x, 3) for x in v['d_zero_ci'])}",
                f"{v['d_knn']:+.3f} {tuple(round(x, 3) for x in v['d_knn_ci'])}"
                if "d_knn" in v
                else "—",
            )
        console.print(t)
    console.print(f"wrote {folder / 'crossfit.md'} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
