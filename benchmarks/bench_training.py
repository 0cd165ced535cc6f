"""Training time of every registered quality estimator on the largest shared data set.

    .venv/bin/python benchmarks/bench_training.py [--data llmrouter-dc] [--estimators knn ...]
        [--max-train N] [--minilm-prompts 1000] [--out results]

Each estimator is fitted with default arguments on the train split of one shared data set
(default: the one with the most training prompts) on the default TF-IDF features, which are
computed once and timed separately; MiniLM's encoding time is measured on a sample of the
training prompts when the ``embeddings`` extra is installed. Per estimator: ``fit`` seconds,
batch ``predict`` µs per query on the test split, peak resident memory added by ``fit``
(Linux: the high-water mark is reset through ``/proc/self/clear_refs`` before each fit) and
the test split's mean score when routing to ``argmax Q`` (a sanity check, not a benchmark).
A fit over ``--flag-seconds`` (60 s) is flagged.

Then the benchmark's routers that fit several estimators (``--routers``, default the tuned
kNN, the encoder ensemble and the six-member stack of ``llmdispatch bench``: members, a
choice on validation, a refit) are fitted end to end on the same train split, once per
``--router-jobs`` value (default: 1 thread, then one per core), side by side: wall and CPU
seconds, the speed-up over one thread, and whether the test split's estimates are identical
to the one-thread router's (they must be). MiniLM encodings come from the on-disk encoding
cache as in ``llmdispatch bench`` (filled, untimed, before the first fit). Writes
``OUT/training/training.{json,md}``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from llmdispatch.data.locate import available_datasets, load_table
from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.suites.routers import ROUTERS
from llmdispatch.features import TfidfEncoder
from llmdispatch.features.cache import encode_with_cache
from llmdispatch.policies.router import Router, resolve_jobs
from llmdispatch.registry import REGISTRY
from llmdispatch.types import Features

console = Console(width=120)
#: Estimators that cannot be fitted with default arguments: name → reason (listed, not run).
SKIP = {"rules": "needs a route spec"}
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def largest_dataset() -> str:
    """The shared data set with the most training prompts."""
    sizes = {
        name: load_table(path).split("train").n_prompts
        for name, path in available_datasets().items()
    }
    if not sizes:
        raise SystemExit("no shared data sets found (set LLMDISPATCH_DATA)")
    return max(sizes, key=lambda name: sizes[name])


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> int | None:
    """Reset the peak-RSS mark (Linux ≥ 4.0); the current RSS in KiB, or None if unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return None
    return _status_kib("VmRSS")


def routed_score(Q: np.ndarray, models: tuple[str, ...], test: OutcomeTable) -> float:
    """Mean realised test score of ``argmax Q`` (over the estimator's own models)."""
    cols = np.array([test.model_index(m) for m in models])
    pick = cols[np.argmax(Q, axis=1)]
    return float(np.nanmean(test.score[np.arange(test.n_prompts), pick]))


def bench_estimator(
    name: str, train: OutcomeTable, test: OutcomeTable, X_train: Features, X_test: Features
) -> dict[str, Any]:
    """Fit once (timed, peak memory), predict the test split once (timed)."""
    gc.collect()
    before = reset_peak_rss()
    est = REGISTRY.get("estimator", name)()
    t0, c0 = time.perf_counter(), time.process_time()
    est.fit(train, X_train)
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    peak = _status_kib("VmHWM") if before is not None else None
    est.predict(X_test[:8])  # warm-up: lazy caches (similarity indexes) are built once
    t0 = time.perf_counter()
    Q = est.predict(X_test)
    predict_us = (time.perf_counter() - t0) / X_test.shape[0] * 1e6
    return {
        "estimator": name,
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu_s,
        "predict_us_per_query": predict_us,
        "peak_rss_delta_mib": (peak - before) / 1024
        if peak is not None and before is not None
        else None,
        "n_models": len(est.models_),
        "routed_test_score": routed_score(Q, tuple(est.models_), test),
    }


def time_minilm(texts: list[str], n: int) -> dict[str, Any] | None:
    """MiniLM encoding time on the first ``n`` texts, or None if the extra is missing."""
    if n <= 0 or importlib.util.find_spec("sentence_transformers") is None:
        return None
    encoder = REGISTRY.get("encoder", "minilm")().fit(texts[:8])
    encoder.encode(texts[:8])  # loads the model once
    sample = texts[:n]
    t0 = time.perf_counter()
    encoder.encode(sample)
    seconds = time.perf_counter() - t0
    return {
        "prompts": len(sample),
        "encode_s": seconds,
        "ms_per_prompt": seconds / len(sample) * 1e3,
        "train_split_s_estimated": seconds / len(sample) * len(texts),
    }


def bench_router(
    name: str, n_jobs: int, train: OutcomeTable, test: OutcomeTable
) -> tuple[dict[str, Any], np.ndarray]:
    """Fit the benchmark router ``name`` with ``n_jobs`` threads (timed); its test ``Q̂``."""
    gc.collect()
    router = Router(**ROUTERS[name], n_jobs=n_jobs)
    t0, c0 = time.perf_counter(), time.process_time()
    router.fit(train)
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    row = {
        "router": f"router-{name}",
        "n_jobs": n_jobs,
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu_s,
        "members": len(router.member_specs()),
        "kept": list(router.member_labels_),
    }
    return row, router.quality_table(test)


def bench_routers(
    names: list[str], jobs: list[int], train: OutcomeTable, test: OutcomeTable
) -> list[dict[str, Any]]:
    """:func:`bench_router` for every name and thread count; speed-up and sameness are
    relative to the first thread count."""
    rows: list[dict[str, Any]] = []
    for name in names:
        first: tuple[dict[str, Any], np.ndarray] | None = None
        for n_jobs in jobs:
            try:
                row, Q = bench_router(name, n_jobs, train, test)
            except Exception as exc:  # report and go on
                console.print(f"[red]router-{name}: {type(exc).__name__}: {exc}[/red]")
                rows.append({"router": f"router-{name}", "n_jobs": n_jobs, "error": str(exc)})
                continue
            if first is None:
                first = (row, Q)
            row["speedup"] = first[0]["fit_s"] / row["fit_s"]
            row["max_abs_diff"] = float(np.abs(Q - first[1]).max())
            console.print(
                f"fitted router-{name} with n_jobs={n_jobs} in {row['fit_s']:.1f} s "
                f"({row['fit_cpu_s']:.1f} s CPU)"
            )
            rows.append(row)
    return rows


def router_lines(rows: list[dict[str, Any]], limit: float) -> list[str]:
    """The routers' Markdown table."""
    lines = [
        "",
        "Benchmark routers fitted end to end (members, choice on validation, refit), one "
        "thread and more side by side; MiniLM encodings from the encoding cache.",
        "",
        "| router | n_jobs | members fitted | fit s | fit CPU s | speed-up | same estimates "
        "| flag |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['router']} | {r['n_jobs']} | | | | | | error: {r['error']} |")
            continue
        same = "yes" if r["max_abs_diff"] == 0 else f"no (max |ΔQ| {r['max_abs_diff']:.2g})"
        flag = f"over {limit:.0f} s" if r["fit_s"] > limit else ""
        lines.append(
            f"| {r['router']} | {r['n_jobs']} | {r['members']} | {r['fit_s']:.1f} | "
            f"{r['fit_cpu_s']:.1f} | {r['speedup']:.2f}× | {same} | {flag} |"
        )
    return lines


#: Table columns: header, row key, number format.
COLUMNS = (
    ("fit s", "fit_s", ".2f"),
    ("fit CPU s", "fit_cpu_s", ".2f"),
    ("predict µs/query", "predict_us_per_query", ",.0f"),
    ("peak RSS Δ MiB", "peak_rss_delta_mib", ",.0f"),
    ("routed test score", "routed_test_score", ".3f"),
)


def table_cells(row: dict[str, Any], limit: float) -> list[str]:
    """Formatted cells of one row: estimator, :data:`COLUMNS`, flag."""
    cells = [row["estimator"]]
    cells += ["n/a" if row.get(k) is None else format(row[k], f) for _, k, f in COLUMNS]
    if "skipped" in row:
        flag = f"skipped: {row['skipped']}"
    elif "error" in row:
        flag = f"error: {row['error']}"
    else:
        flag = f"over {limit:.0f} s" if row["fit_s"] > limit else ""
    return [*cells, flag]


def write_outputs(
    out: Path,
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
    router_rows: list[dict[str, Any]] | None = None,
) -> Path:
    """``training.json`` and ``training.md`` in ``out``; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    router_rows = router_rows or []
    (out / "training.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "routers": router_rows}, indent=1)
    )
    enc = meta["tfidf"]
    lines = [
        f"Estimator training time on `{meta['data']}` ({meta['train_prompts']} training prompts, "
        f"{meta['models']} models; predict on {meta['test_prompts']} test prompts), "
        f"{meta['machine']}, load average at the end {meta['load_average']}. Wall seconds "
        "are inflated when other jobs share the cores; CPU seconds are not.",
        "",
        f"TF-IDF features (computed once, not part of fit): encoder fit + encode train "
        f"{enc['fit_encode_train_s']:.2f} s, encode test {enc['encode_test_s']:.2f} s.",
    ]
    if meta.get("minilm"):
        m = meta["minilm"]
        lines.append(
            f"MiniLM encoding: {m['ms_per_prompt']:.1f} ms/prompt over {m['prompts']} prompts "
            f"(≈ {m['train_split_s_estimated']:.0f} s for the train split)."
        )
    headers = ["estimator", *(h for h, _, _ in COLUMNS), "flag"]
    lines += ["", "| " + " | ".join(headers) + " |", "|---|" + "---:|" * len(COLUMNS) + "---|"]
    lines += ["| " + " | ".join(table_cells(r, meta["flag_seconds"])) + " |" for r in rows]
    if router_rows:
        lines += router_lines(router_rows, meta["flag_seconds"])
    (out / "training.md").write_text("\n".join(lines) + "\n")
    return out / "training.md"


def main() -> None:
    """Encode, fit every estimator, print and write the table."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--data", default=None, help="data set name or path (default: largest)")
    ap.add_argument("--estimators", nargs="+", default=None, help="default: all registered")
    ap.add_argument("--max-train", type=int, default=None, help="subsample the train split")
    ap.add_argument("--minilm-prompts", type=int, default=1000, help="0 skips MiniLM")
    ap.add_argument("--flag-seconds", type=float, default=60.0)
    ap.add_argument(
        "--routers",
        nargs="*",
        default=["knn", "knn-ensemble", "stack"],
        choices=sorted(ROUTERS),
        help="benchmark routers fitted end to end (none: skip)",
    )
    ap.add_argument(
        "--router-jobs",
        nargs="+",
        type=int,
        default=None,
        help="thread counts to fit them with (default: 1 and one per core)",
    )
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # the machine is shared; one BLAS thread like the gateway workers

    data = args.data or largest_dataset()
    table = load_table(data)
    train, test = table.split("train"), table.split("test")
    if args.max_train is not None and args.max_train < train.n_prompts:
        rng = np.random.default_rng(0)
        train = train.take(np.sort(rng.choice(train.n_prompts, args.max_train, replace=False)))
    texts_train, texts_test = train.full_prompts(), test.full_prompts()
    t0 = time.perf_counter()
    encoder = TfidfEncoder().fit(texts_train)
    X_train = encoder.encode(texts_train)
    t1 = time.perf_counter()
    X_test = encoder.encode(texts_test)
    t2 = time.perf_counter()
    console.print(f"TF-IDF: fit + encode {train.n_prompts} train prompts {t1 - t0:.2f} s")
    minilm = time_minilm(texts_train, args.minilm_prompts)
    if minilm:
        console.print(f"MiniLM: {minilm['ms_per_prompt']:.1f} ms/prompt")
    names = args.estimators or REGISTRY.names("estimator")
    rows: list[dict[str, Any]] = []
    for name in names:
        if name in SKIP:
            rows.append({"estimator": name, "skipped": SKIP[name]})
            continue
        try:
            row = bench_estimator(name, train, test, X_train, X_test)
        except Exception as exc:  # report and go on: one broken estimator must not hide others
            console.print(f"[red]{name}: {type(exc).__name__}: {exc}[/red]")
            rows.append({"estimator": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        console.print(f"fitted {name} in {row['fit_s']:.1f} s ({row['fit_cpu_s']:.1f} s CPU)")
        rows.append(row)
    cores = resolve_jobs(-1)
    jobs = args.router_jobs or sorted({1, cores})
    if any(j < 1 for j in jobs):
        ap.error(f"--router-jobs takes thread counts >= 1, got {jobs}")
    if args.routers and importlib.util.find_spec("sentence_transformers") is not None:
        # A cold cache would charge MiniLM's encoding to whichever fit runs first.
        t0 = time.perf_counter()
        minilm_encoder = REGISTRY.get("encoder", "minilm")().fit(texts_train)
        encode_with_cache(minilm_encoder, texts_train + texts_test)
        console.print(f"MiniLM encodings cached in {time.perf_counter() - t0:.1f} s")
    router_rows = bench_routers(args.routers, jobs, train, test)
    meta = {
        "data": str(data),
        "train_prompts": train.n_prompts,
        "test_prompts": test.n_prompts,
        "models": table.n_models,
        "features": int(X_train.shape[1]),
        "tfidf": {"fit_encode_train_s": t1 - t0, "encode_test_s": t2 - t1},
        "minilm": minilm,
        "flag_seconds": args.flag_seconds,
        "load_average": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
        "machine": f"{platform.machine()}, {cores} cores, "
        f"Python {platform.python_version()}, 1 BLAS thread",
    }
    md = write_outputs(args.out / "training", meta, rows, router_rows)
    tab = Table(title=f"fit time on {data} ({train.n_prompts} train prompts)")
    tab.add_column("estimator", no_wrap=True)
    for header, _, _ in COLUMNS:
        tab.add_column(header, justify="right")
    tab.add_column("flag", style="red")
    for r in rows:
        tab.add_row(*table_cells(r, args.flag_seconds))
    console.print(tab)
    if router_rows:
        console.print("\n".join(router_lines(router_rows, args.flag_seconds)))
    console.print(f"wrote {md}")


if __name__ == "__main__":
    main()
