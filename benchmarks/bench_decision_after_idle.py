"""One live routing decision after the process waited: idle, busy, or sweeping memory.

    .venv/bin/python benchmarks/bench_decision_after_idle.py [--data llmrouter-dc]
        [--queries 300] [--out results]

A gateway at low load decides each request after waiting on the network, while a timing loop
decides one query after another. This study times the default kNN router's live decision
(``Router.start``, features included, as in ``bench_router_overhead.py``) right after each
of: nothing (back to back), ``time.sleep`` of 1 and 5 ms (the thread idles and the CPU may
sleep), 1 ms of busy spinning (the CPU stays awake, its caches untouched), and a sweep over
8 MiB of other memory (caches polluted, the CPU awake). The conditions take turns in chunks of
50 queries, so the machine's noise hits them alike. Writes ``OUT/after-idle/after-idle.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bench_router_overhead import live_queries, time_decision  # this folder is sys.path[0]
from llmdispatch.data.locate import load_table
from llmdispatch.policies.router import Router

console = Console()


def spin(seconds: float) -> None:
    """Keep the CPU busy for ``seconds`` without touching memory."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> None:
    """Train the default router, time decisions after each condition, print and write."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="llmrouter-dc")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # as the gateway runs: one BLAS thread per worker
    table = load_table(args.data)
    train, test = table.split("train"), table.split("test")
    queries = live_queries(test)[: args.queries]
    router = Router(estimator="knn", encoder="tfidf").fit(train)
    router.warm()
    allowed = frozenset(table.models)
    scratch = np.ones(1 << 20)  # 8 MiB
    conditions: dict[str, Callable[[], object]] = {
        "back to back": lambda: None,
        "after sleeping 1 ms": lambda: time.sleep(0.001),
        "after sleeping 5 ms": lambda: time.sleep(0.005),
        "after spinning 1 ms": lambda: spin(0.001),
        "after sweeping 8 MiB": lambda: scratch.__iadd__(1.0),
    }

    for query in queries[:50]:  # warm-up
        time_decision(router, query, allowed)
    samples: dict[str, list[float]] = {name: [] for name in conditions}
    chunk = 50
    for _ in range(args.rounds):
        for start in range(0, len(queries), chunk):
            for name, before in conditions.items():
                for query in queries[start : start + chunk]:
                    before()
                    samples[name].append(time_decision(router, query, allowed))
    base = float(np.median(samples["back to back"]))
    rows = [
        {
            "condition": name,
            "p50_ms": float(np.median(v)) * 1e3,
            "p99_ms": float(np.percentile(v, 99)) * 1e3,
            "p50_vs_back_to_back": float(np.median(v)) / base,
        }
        for name, v in samples.items()
    ]
    out = args.out / "after-idle"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"data": args.data, "queries": len(queries), "rounds": args.rounds}
    (out / "after-idle.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    title = (
        f"Default kNN router, one live decision on `{args.data}` ({len(queries)} test queries "
        f"× {args.rounds} rounds, conditions taking turns by chunks of 50)"
    )
    lines = [title, "", "| before the decision | p50 ms | p99 ms | p50 vs back to back |"]
    lines.append("|---|---:|---:|---:|")
    tab = Table(title=title)
    for col in ("before the decision", "p50 ms", "p99 ms", "p50 ratio"):
        tab.add_column(col, justify="left" if col.startswith("before") else "right")
    for r in rows:
        cells = (
            r["condition"],
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['p50_vs_back_to_back']:.2f}×",
        )
        lines.append("| " + " | ".join(cells) + " |")
        tab.add_row(*cells)
    (out / "after-idle.md").write_text("\n".join(lines) + "\n")
    console.print(tab)
    console.print(f"wrote {out / 'after-idle.md'}")


if __name__ == "__main__":
    main()
