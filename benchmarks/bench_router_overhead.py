"""Router decision overhead: per-query latency (features included) and batch throughput.

    .venv/bin/python benchmarks/bench_router_overhead.py [--data llmrouter-dc] [--queries 2000]
        [--routers knn linear ...] [--encoders tfidf minilm] [--out results]

Each router is trained on the train split of one shared data set (default: the largest,
``llmrouter-dc``) and asked about test prompts the way the gateway asks: one live
decision per request (``Router.start``: encode, estimate, expected cost, constraints,
choice), timed one query at a time after ``Router.warm()`` (as the gateway loads a policy)
and a warm-up, in one process, interleaving routers round-robin so that machine noise hits
them alike. Every router runs its default (numpy) path; with numba installed the default
kNN is timed a second time on the opt-in compiled kernels (:mod:`llmdispatch.kernels`,
the gateway's ``compiled_kernels: true``): ``knn (tfidf, compiled kernels)``, side by side
in the same rounds, its batch throughput too.
Batch throughput is the vectorised path over all queries (``Router.quality`` with 1
thread, then with one thread per core: this machine's 2), the median of 3 rounds.
Writes ``OUT/overhead/overhead.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from llmdispatch import kernels
from llmdispatch.data.locate import load_table
from llmdispatch.data.table import OutcomeTable
from llmdispatch.policies.router import Router
from llmdispatch.query import Query

console = Console()
DEFAULT_ROUTERS = (
    "knn",
    "knn-exact",
    "linear",
    "mlp",
    "mf",
    "embedllm",
    "uniroute",
    "bradley-terry",
)
#: Router names that are an estimator with non-default parameters.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "knn-exact": ("knn", {"n_components": None}),  # exact search over the sparse rows
}


def live_queries(test: OutcomeTable) -> list[Query]:
    """A test split's prompts as the gateway would see them."""
    return [Query.from_text(str(p), s) for p, s in zip(test.prompts, test.systems, strict=True)]


def time_decision(router: Router, query: Query, allowed: frozenset[str]) -> float:
    """Seconds of one live decision: the router's flow up to its first call."""
    t0 = time.perf_counter()
    flow = router.start(query, allowed)
    next(flow)
    elapsed = time.perf_counter() - t0
    flow.close()
    return elapsed


def time_single(router: Router, queries: list[Query], allowed: frozenset[str]) -> np.ndarray:
    """Seconds per live decision, one query at a time."""
    return np.array([time_decision(router, q, allowed) for q in queries])


def time_batch(router: Router, queries: list[Query], n_jobs: int = 1, rounds: int = 3) -> float:
    """Queries per second through the vectorised path (quality, cost, choice): the median
    of ``rounds`` runs with ``n_jobs`` threads."""
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        Q = router.quality(queries, n_jobs=n_jobs)
        C = router.expected_cost(queries)
        allowed = np.ones(Q.shape, dtype=bool)
        router.choose(Q, C, allowed, router.lam_, router.cost_scale_)
        rates.append(len(queries) / (time.perf_counter() - t0))
    return float(np.median(rates))


def main() -> None:
    """Train, time, print and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="llmrouter-dc")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--routers", nargs="+", default=list(DEFAULT_ROUTERS))
    ap.add_argument("--encoders", nargs="+", default=["tfidf", "minilm"])
    ap.add_argument("--minilm-routers", nargs="+", default=["knn"])
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # as the gateway runs: one BLAS thread per worker

    table = load_table(args.data)
    train, test = table.split("train"), table.split("test")
    queries = live_queries(test)
    queries = (queries * (args.queries // max(len(queries), 1) + 1))[: args.queries]
    routers: dict[str, Router] = {}
    for encoder in args.encoders:
        names = args.routers if encoder == "tfidf" else args.minilm_routers
        for name in names:
            label = f"{name} ({encoder})"
            t0 = time.perf_counter()
            try:
                estimator, params = VARIANTS.get(name, (name, {}))
                routers[label] = Router(
                    estimator=estimator, estimator_params=params, encoder=encoder
                ).fit(train)
            except Exception as exc:  # report and go on: one broken router must not hide others
                console.print(f"[red]{label}: {exc}[/red]")
                continue
            console.print(f"trained {label} in {time.perf_counter() - t0:.1f} s")
    allowed = frozenset(table.models)
    for router in routers.values():
        router.warm()  # what the gateway does on loading a policy (the kNN's index)
    # label → whether the compiled kernels are on while it is timed
    compiled = {label: False for label in routers}
    if "knn (tfidf)" in routers and kernels.warm():
        at = list(routers).index("knn (tfidf)") + 1
        items = list(routers.items())
        items.insert(at, ("knn (tfidf, compiled kernels)", routers["knn (tfidf)"]))
        routers = dict(items)
        compiled["knn (tfidf, compiled kernels)"] = True

    def switch(on: bool) -> None:
        if on:
            kernels.warm()
        else:
            kernels.deactivate()

    for label, router in routers.items():  # warm-up: caches, lazy imports, BLAS threads
        switch(compiled[label])
        time_single(router, queries[:50], allowed)
    samples: dict[str, list[np.ndarray]] = {label: [] for label in routers}
    chunk = 100
    for start in range(0, len(queries), chunk):
        for label, router in routers.items():
            switch(compiled[label])
            samples[label].append(time_single(router, queries[start : start + chunk], allowed))
    rows: list[dict[str, Any]] = []
    cores = len(os.sched_getaffinity(0))
    for label, router in routers.items():
        lat = np.concatenate(samples[label]) * 1e3
        switch(compiled[label])
        rows.append(
            {
                "router": label,
                "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "batch_qps": time_batch(router, queries),
                "batch_qps_threads": time_batch(router, queries, n_jobs=cores),
                "threads": cores,
                "kernels": compiled[label],
            }
        )
    switch(False)
    base = next((r for r in rows if r["router"] == "knn (tfidf)"), rows[0] if rows else None)
    out = args.out / "overhead"
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "data": args.data,
        "train_prompts": train.n_prompts,
        "queries": len(queries),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{cores} cores, Python {platform.python_version()}",
    }
    (out / "overhead.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"Router decision overhead on `{args.data}` ({train.n_prompts} training prompts, "
        f"{len(queries)} queries), one live decision at a time, features included.",
        "",
        "| router | p50 ms | p99 ms | batch queries/s, 1 thread "
        f"| batch queries/s, {cores} threads | p50 vs kNN (tfidf) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    tab = Table(title=lines[0])
    for col in ("router", "p50 ms", "p99 ms", "batch q/s", f"batch q/s ({cores} thr)", "p50 ratio"):
        tab.add_column(col, justify="right" if col != "router" else "left")
    for r in rows:
        ratio = r["p50_ms"] / base["p50_ms"] if base else float("nan")
        lines.append(
            f"| {r['router']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['batch_qps']:,.0f} | {r['batch_qps_threads']:,.0f} | {ratio:.2f}× |"
        )
        tab.add_row(
            r["router"],
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['batch_qps']:,.0f}",
            f"{r['batch_qps_threads']:,.0f}",
            f"{ratio:.2f}×",
        )
    (out / "overhead.md").write_text("\n".join(lines) + "\n")
    console.print(tab)
    console.print(f"wrote {out / 'overhead.md'}")


if __name__ == "__main__":
    main()
