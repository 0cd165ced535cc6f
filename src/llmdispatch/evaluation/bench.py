"""``bench``: fit every chosen policy on each data set's train split and judge it on test.

Per data set: load (timed), optionally drop test prompts leaked from train, carve a
validation split from train (for calibration and tuning), fit each policy, replay it on the
test split, and compute every metric with paired bootstrap intervals, pooled and per
``dataset`` label. A policy that fails is reported with its error; the others go on.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmdispatch.data.leaks import drop_leaks
from llmdispatch.data.locate import available_datasets, load_table, resolve_dataset
from llmdispatch.data.splits import hash_split, train_validation
from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.bootstrap import (
    Resamples,
    interval,
    metric_samples,
    references_samples,
    zero_samples,
)
from llmdispatch.evaluation.metrics import References, curve_metrics, gap_closed, pgr_metrics
from llmdispatch.evaluation.replay import PolicyRun, replay
from llmdispatch.evaluation.suites import BenchmarkPolicy, benchmark_entries

#: Metrics that get intervals and appear in reports, in order.
HEADLINE = ("aiq", "aiq_log", "q@10", "q@25", "q@50", "cost_to_best", "cost_to_95", "arena")
BASELINE = "router-knn"
#: The share of each training split carved out for validation, the same for every policy.
VALIDATION_FRACTION = 0.25
#: The baseline when ``router-knn`` (encoder chosen on validation) was not run.
FALLBACK_BASELINE = "router-knn-tfidf"


@dataclass
class PolicyResult:
    """One policy on one data set."""

    name: str
    family: str
    run: PolicyRun | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    fit_seconds: float = 0.0
    replay_seconds: float = 0.0
    error: str | None = None
    skipped: str | None = None


@dataclass
class DatasetResult:
    """Everything measured on one data set."""

    name: str
    path: str
    load_seconds: float
    prompts: dict[str, int]
    models: tuple[str, ...]
    refs: References
    label_refs: dict[str, References]
    leaks_dropped: int | None
    costs_estimated: bool
    policies: list[PolicyResult]
    zero: dict[str, float]
    bootstrap: int


def _label_masks(table: OutcomeTable) -> dict[str, np.ndarray]:
    tops = np.array([d.split("/", 1)[0] for d in table.datasets])
    labels = sorted(set(tops.tolist()))
    return {lab: tops == lab for lab in labels} if len(labels) > 1 else {}


def _cis(samples: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    return {k: interval(v) for k, v in samples.items()}


def bench_dataset(
    spec: str | Path,
    entries: list[BenchmarkPolicy],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    drop_leaked: bool = False,
    allow_pickle: bool = False,
    on_step: Callable[[str], None] | None = None,
    labels: list[str] | None = None,
    models: list[str] | None = None,
) -> DatasetResult:
    """Run ``entries`` on one data set (optionally only some labels and some models)."""
    step = on_step or (lambda _msg: None)
    start = time.perf_counter()
    table = load_table(spec, allow_pickle=allow_pickle)
    load_seconds = time.perf_counter() - start
    if labels:
        table = table.only_datasets(labels)
        if table.n_prompts == 0:
            raise ValueError(f"{spec}: no prompts with the dataset labels {labels}")
    if models:
        table = table.select_models(models)
    name = Path(str(spec)).name if Path(str(spec)).exists() else str(spec)
    if not (table.splits == "test").any():
        table = hash_split(table)
    leaks: int | None = None
    if drop_leaked:
        table, leaks = drop_leaks(table)
    train, test = table.split("train"), table.split("test")
    fit_part, validation = train_validation(train, VALIDATION_FRACTION)
    refs = References.from_matrices(test.models, test.score, test.cost)
    masks = _label_masks(test)
    label_refs = {
        lab: References.from_matrices(test.models, test.score[m], test.cost[m])
        for lab, m in masks.items()
    }
    rs = Resamples.draw(test.n_prompts, bootstrap, seed)
    ref_samples = references_samples(test, rs)
    zero_aiq = zero_samples(ref_samples)
    zero_hull = refs.zero_hull()
    zero = curve_metrics(zero_hull.cost, zero_hull.quality, refs)
    label_rs = {
        lab: Resamples.draw(int(m.sum()), bootstrap, seed + 1 + i)
        for i, (lab, m) in enumerate(masks.items())
    }
    label_ref_samples = {
        lab: references_samples(test.take(m), label_rs[lab]) for lab, m in masks.items()
    }
    results: list[PolicyResult] = []
    samples: dict[str, dict[str, np.ndarray]] = {}
    label_samples: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for entry in entries:
        res = PolicyResult(entry.name, entry.family)
        results.append(res)
        reason = entry.skip_reason(table)
        if reason:
            res.skipped = reason
            continue
        step(f"{name}: {entry.name}")
        try:
            policy = entry.build()
            t0 = time.perf_counter()
            policy.fit(fit_part, validation)
            res.fit_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            run = replay(policy, test, label=entry.name)
            res.replay_seconds = time.perf_counter() - t0
        except Exception as exc:  # one failing policy must not stop the benchmark
            res.error = f"{type(exc).__name__}: {exc}"
            res.error += "\n" + "".join(traceback.format_exception_only(exc)).strip()
            continue
        res.run = run
        res.metrics = curve_metrics(run.mean_cost, run.mean_quality, refs)
        samples[entry.name] = metric_samples(run, ref_samples, rs)
        res.ci = _cis(samples[entry.name])
        label_samples[entry.name] = {}
        for lab, m in masks.items():
            sub = run.columns(m)
            point = curve_metrics(sub.mean_cost, sub.mean_quality, label_refs[lab])
            s = metric_samples(sub, label_ref_samples[lab], label_rs[lab], aiq_only=True)
            label_samples[entry.name][lab] = s
            res.labels[lab] = {"metrics": point, "ci": {"aiq": interval(s["aiq"])}}
    _comparisons(results, samples, zero_aiq, zero, label_samples, masks, label_ref_samples)
    if test.n_models == 2:
        _two_model(results, test, refs)
    return DatasetResult(
        name=name,
        path=str(resolve_dataset(spec)),
        load_seconds=load_seconds,
        prompts={
            "train": fit_part.n_prompts,
            "validation": validation.n_prompts,
            "test": test.n_prompts,
        },
        models=test.models,
        refs=refs,
        label_refs=label_refs,
        leaks_dropped=leaks,
        costs_estimated=bool(
            table.costs_estimated or any(c.prices_estimated for c in table.cards.values())
        ),
        policies=results,
        zero=zero,
        bootstrap=bootstrap,
    )


def _comparisons(
    results: list[PolicyResult],
    samples: dict[str, dict[str, np.ndarray]],
    zero_aiq: np.ndarray,
    zero: dict[str, float],
    label_samples: dict[str, dict[str, dict[str, np.ndarray]]],
    masks: dict[str, np.ndarray],
    label_ref_samples: dict[str, list[References]],
) -> None:
    """Paired differences vs the zero router and the kNN baseline; gap closed to the oracle."""
    oracle = samples.get("oracle")
    baseline_name = next((b for b in (BASELINE, FALLBACK_BASELINE) if b in samples), BASELINE)
    base = samples.get(baseline_name)
    for res in results:
        s = samples.get(res.name)
        if s is None:
            continue
        d = s["aiq"] - zero_aiq
        res.metrics["d_aiq_zero"] = res.metrics["aiq"] - zero["aiq"]
        res.ci["d_aiq_zero"] = interval(d)
        if oracle is not None:
            o = next(r for r in results if r.name == "oracle").metrics["aiq"]
            res.metrics["gap_closed"] = gap_closed(res.metrics["aiq"], zero["aiq"], o)
            triples = zip(s["aiq"], zero_aiq, oracle["aiq"], strict=True)
            res.ci["gap_closed"] = interval(np.array([gap_closed(*t) for t in triples]))
        if base is not None and res.name != baseline_name:
            baseline = next(r for r in results if r.name == baseline_name)
            res.metrics["d_aiq_knn"] = res.metrics["aiq"] - baseline.metrics["aiq"]
            res.ci["d_aiq_knn"] = interval(s["aiq"] - base["aiq"])
        for lab in masks:
            ls = label_samples.get(res.name, {}).get(lab)
            if ls is None:
                continue
            zs = zero_samples(label_ref_samples[lab])
            res.labels[lab]["ci"]["d_aiq_zero"] = interval(ls["aiq"] - zs)
            lb = label_samples.get(baseline_name, {}).get(lab)
            if lb is not None and res.name != baseline_name:
                res.labels[lab]["ci"]["d_aiq_knn"] = interval(ls["aiq"] - lb["aiq"])


def _two_model(results: list[PolicyResult], test: OutcomeTable, refs: References) -> None:
    """APGR and CPT for two-model tables (RouteLLM)."""
    strong = int(np.nanargmax(refs.quality))
    weak = 1 - strong
    for res in results:
        if res.run is None:
            continue
        res.metrics.update(
            pgr_metrics(
                res.run.called[:, strong],
                res.run.mean_quality,
                float(refs.quality[weak]),
                float(refs.quality[strong]),
            )
        )


def run_bench(
    datasets: list[str] | None = None,
    policies: list[str] | None = None,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    drop_leaked: bool = False,
    allow_pickle: bool = False,
    on_step: Callable[[str], None] | None = None,
    labels: list[str] | None = None,
    models: list[str] | None = None,
    extra: list[BenchmarkPolicy] | None = None,
) -> list[DatasetResult]:
    """Run ``policies`` (default: every registered one, or none when ``extra`` is given) and
    the ``extra`` entries (a user's own configurations) on ``datasets`` (default: all found).
    """
    specs: list[str] = datasets or sorted(available_datasets())
    if not specs:
        raise ValueError("no data sets found; pass paths or set LLMDISPATCH_DATA")
    for spec in specs:
        resolve_dataset(spec)  # fail early, with the list of what was found
    entries = benchmark_entries(policies) if policies is not None or not extra else []
    taken = {e.name for e in entries}
    for entry in extra or []:
        if entry.name in taken:
            raise ValueError(f"two policies are named {entry.name!r}; rename one")
        taken.add(entry.name)
        entries.append(entry)
    return [
        bench_dataset(
            spec,
            entries,
            bootstrap=bootstrap,
            seed=seed,
            drop_leaked=drop_leaked,
            allow_pickle=allow_pickle,
            on_step=on_step,
            labels=labels,
            models=models,
        )
        for spec in specs
    ]
