"""Encoders compared: can routing keep MiniLM's quality at hashing speed? (issue 3)

    .venv/bin/python benchmarks/bench_encoders.py [--data cascades9 ...]
        [--encoders tfidf tfidf-svd minilm static] [--bootstrap 1000] [--queries 300]
        [--batch-prompts 300] [--rounds 3] [--out results]

Quality: on each shared data set, one kNN router per encoder (``Router(estimator="knn",
encoder=…)``, ``k``, ``τ`` and ``α`` chosen by the kNN's own leave-one-out) goes through
:func:`llmdispatch.evaluation.bench.bench_dataset`, exactly as ``llmdispatch bench`` runs its
routers: fitted on the train split minus the validation share bench carves, replayed over its
λ sweep on the test split. AIQ and the paired bootstrap 95 % intervals of its difference to
the TF-IDF kNN come from bench; the difference to the MiniLM kNN is computed on the very same
resamples (same seed) with :mod:`llmdispatch.evaluation.bootstrap`. MiniLM encodings go
through the on-disk encoding cache, so they are computed once across runs.

Speed, one thread, in one process, interleaved (every encoder runs on the same chunk of
queries before the next chunk) so that machine noise hits all encoders alike: batch encoding
throughput on the test prompts (median of ``--rounds``), and single-query latency p50/p99 of
the encoder alone (``encode_queries([q])``, what the live path calls) and of a full live
decision (``Router.start``, as ``bench_router_overhead.py`` times it). No encoding cache is
involved in any timing.

If the static table is not in the cache it is distilled first (``llmdispatch encoders
distill``) and the time it took is reported. Writes ``OUT/encoders/encoders.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench_router_overhead import time_single  # this folder is the script's sys.path[0]
from llmdispatch.data.locate import load_table
from llmdispatch.data.splits import hash_split
from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators.knn import KNNEstimator
from llmdispatch.evaluation.bench import FALLBACK_BASELINE, DatasetResult, bench_dataset
from llmdispatch.evaluation.bootstrap import (
    Resamples,
    interval,
    metric_samples,
    references_samples,
)
from llmdispatch.evaluation.suites import BenchmarkPolicy
from llmdispatch.policies.base import Policy
from llmdispatch.policies.router import Router
from llmdispatch.query import Query

console = Console(width=None if sys.stdout.isatty() else 200)
DATASETS = ("cascades9", "routerbench-subset", "llmrouter-dc", "arena-hard-v1", "alpaca-eval")
ENCODERS = ("tfidf", "tfidf-svd", "minilm", "static")
BASE = "tfidf"  # the default encoder: bench's kNN baseline
REFERENCE = "minilm"  # the quality the static encoder tries to keep
CHUNK = 50  # queries per encoder before moving to the next (interleaving)
COMMAND = ".venv/bin/python benchmarks/bench_encoders.py"


def label(encoder: str) -> str:
    """Bench entry name; the TF-IDF one is bench's fallback kNN baseline."""
    return f"router-knn-{encoder}"


assert label(BASE) == FALLBACK_BASELINE


# ---- setup ----------------------------------------------------------------------------------
def limit_threads(encoders: list[str]) -> None:
    """One BLAS / torch thread, as a gateway worker runs (and the machine is shared)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    if {"minilm", "static"} & set(encoders):
        import torch

        torch.set_num_threads(1)


def ensure_static() -> dict[str, Any]:
    """The cached static table's facts, distilling it first when it is missing."""
    from llmdispatch.features.distill import distill_static
    from llmdispatch.features.static import META_FILE, static_model_dir

    folder = static_model_dir()
    distilled_now = not (folder / META_FILE).is_file()
    seconds = None
    if distilled_now:
        console.print(f"static table not in {folder}: distilling it (llmdispatch encoders distill)")
        t0 = time.perf_counter()
        distill_static()
        seconds = time.perf_counter() - t0
        console.print(f"distilled the static table in {seconds:.1f} s")
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    return {
        "folder": str(folder),
        "distilled_now": distilled_now,
        "distill_seconds": seconds if seconds is not None else meta.get("seconds"),
        "dims": meta.get("dims"),
        "tokens": meta.get("tokens"),
        "digest": meta.get("digest"),
    }


def test_split(spec: str) -> OutcomeTable:
    """The test split exactly as ``bench_dataset`` makes it (no leak filter)."""
    table = load_table(spec)
    if not (table.splits == "test").any():
        table = hash_split(table)
    return table.split("test")


# ---- quality --------------------------------------------------------------------------------
def run_quality(
    spec: str, encoders: list[str], bootstrap: int, seed: int
) -> tuple[DatasetResult, dict[str, Router]]:
    """One kNN router per encoder through ``bench_dataset``; the fitted routers too."""
    routers: dict[str, Router] = {}

    def factory(encoder: str) -> Callable[[], Policy]:
        def build() -> Policy:
            router = Router(estimator="knn", encoder=encoder, cache_encodings=encoder == "minilm")
            routers[encoder] = router
            return router

        return build

    entries = [BenchmarkPolicy(label(e), "router", factory(e)) for e in encoders]
    result = bench_dataset(
        spec, entries, bootstrap=bootstrap, seed=seed, on_step=lambda m: console.print(f"  {m}")
    )
    fitted = {e: routers[e] for e, r in zip(encoders, result.policies, strict=True) if r.run}
    return result, fitted


def versus_reference(
    result: DatasetResult, test: OutcomeTable, seed: int
) -> dict[str, dict[str, Any]]:
    """AIQ difference of every encoder to MiniLM on bench's resamples (same seed, paired)."""
    rs = Resamples.draw(test.n_prompts, result.bootstrap, seed)
    refs = references_samples(test, rs)
    samples = {
        r.name: metric_samples(r.run, refs, rs, aiq_only=True)["aiq"]
        for r in result.policies
        if r.run is not None
    }
    base, ref = samples.get(label(BASE)), samples.get(label(REFERENCE))
    if base is not None:  # the same resamples as bench's: its interval must come out again
        for r in result.policies:
            if r.name in samples and "d_aiq_knn" in r.ci:
                again = interval(samples[r.name] - base)
                if not np.allclose(again, r.ci["d_aiq_knn"]):
                    console.print(f"[red]{r.name}: resamples differ from bench's[/red]")
    out: dict[str, dict[str, Any]] = {}
    if ref is None:
        return out
    point = next(r for r in result.policies if r.name == label(REFERENCE)).metrics["aiq"]
    for r in result.policies:
        if r.name in samples and r.name != label(REFERENCE):
            out[r.name] = {
                "d_aiq": r.metrics["aiq"] - point,
                "ci": interval(samples[r.name] - ref),
            }
    return out


# ---- speed ----------------------------------------------------------------------------------
def time_encoder(router: Router, queries: list[Query]) -> np.ndarray:
    """Seconds per query of the encoder alone, as the live path calls it."""
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        router.encoder_.encode_queries([q])
        out[i] = time.perf_counter() - t0
    return out


def time_batch(router: Router, texts: list[str]) -> float:
    """Prompts per second through one ``encode`` call (no encoding cache)."""
    t0 = time.perf_counter()
    router.encoder_.encode(texts)
    return len(texts) / (time.perf_counter() - t0)


def run_speed(
    routers: dict[str, Router], test: OutcomeTable, n_queries: int, batch: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Batch throughput and single-query latencies, all encoders interleaved."""
    texts = test.full_prompts()
    queries = [
        Query.from_text(str(p), s if isinstance(s, str) and s else None)
        for p, s in zip(test.prompts, test.systems, strict=True)
    ]
    queries = (queries * (n_queries // max(len(queries), 1) + 1))[:n_queries]
    batch_texts = texts[:batch]
    allowed = frozenset(test.models)
    for router in routers.values():  # warm-up: model loading, lazy imports, index caches
        router.encoder_.encode(batch_texts[:16])
        time_single(router, queries[:20], allowed)
    rates: dict[str, list[float]] = {e: [] for e in routers}
    for _ in range(rounds):
        for e, router in routers.items():
            rates[e].append(time_batch(router, batch_texts))
    enc: dict[str, list[np.ndarray]] = {e: [] for e in routers}
    dec: dict[str, list[np.ndarray]] = {e: [] for e in routers}
    for start in range(0, len(queries), CHUNK):
        part = queries[start : start + CHUNK]
        for e, router in routers.items():
            enc[e].append(time_encoder(router, part))
            dec[e].append(time_single(router, part, allowed))
    out: dict[str, dict[str, float]] = {}
    for e in routers:
        le, ld = np.concatenate(enc[e]) * 1e3, np.concatenate(dec[e]) * 1e3
        out[e] = {
            "batch_prompts_per_s": float(np.median(rates[e])),
            "encode_p50_ms": float(np.percentile(le, 50)),
            "encode_p99_ms": float(np.percentile(le, 99)),
            "decision_p50_ms": float(np.percentile(ld, 50)),
            "decision_p99_ms": float(np.percentile(ld, 99)),
        }
    return out


# ---- one data set ---------------------------------------------------------------------------
def run_dataset(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """Quality and speed of every encoder on one data set, as a JSON-ready dict."""
    t0 = time.perf_counter()
    result, routers = run_quality(spec, args.encoders, args.bootstrap, args.seed)
    quality_seconds = time.perf_counter() - t0
    test = test_split(spec)
    if test.n_prompts != result.prompts["test"]:
        raise RuntimeError(f"{spec}: test split differs from bench's")
    vs_ref = versus_reference(result, test, args.seed)
    t0 = time.perf_counter()
    speed = run_speed(routers, test, args.queries, args.batch_prompts, args.rounds)
    speed_seconds = time.perf_counter() - t0
    rows: dict[str, dict[str, Any]] = {}
    for e, res in zip(args.encoders, result.policies, strict=True):
        row: dict[str, Any] = {"error": res.error}
        if res.run is not None:
            est = routers[e].estimator_
            assert isinstance(est, KNNEstimator)
            row |= {
                "dims": int(est.n_features_),
                # The kNN searches sparse TF-IDF rows in an LSA projection by default.
                "search_dims": None if est.projection_ is None else est.projection_.n_components,
                "knn": {"k": est.k_, "temperature": est.temperature_, "alpha": est.prior_strength_},
                "aiq": res.metrics["aiq"],
                "aiq_ci": res.ci["aiq"],
                "metrics": res.metrics,
                "d_aiq_tfidf": res.metrics.get("d_aiq_knn", 0.0 if e == BASE else None),
                "d_aiq_tfidf_ci": res.ci.get("d_aiq_knn"),
                "d_aiq_minilm": vs_ref.get(res.name, {}).get("d_aiq"),
                "d_aiq_minilm_ci": vs_ref.get(res.name, {}).get("ci"),
                "fit_seconds": res.fit_seconds,
                "replay_seconds": res.replay_seconds,
                **speed[e],
            }
        rows[e] = row
    return {
        "dataset": result.name,
        "prompts": result.prompts,
        "models": len(result.models),
        "bootstrap": result.bootstrap,
        "quality_seconds": quality_seconds,
        "speed_seconds": speed_seconds,
        "queries": args.queries,
        "batch_prompts": min(args.batch_prompts, test.n_prompts),
        "encoders": rows,
    }


# ---- reporting ------------------------------------------------------------------------------
def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _ci(v: float | None, ci: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if ci is None:
        return _f(v, digits)
    return f"{_f(v, digits)} [{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:.1f}"


def _dims(r: dict[str, Any]) -> str:
    """Feature width, and the LSA width the kNN searches in when it projects."""
    width = "2^20 sparse" if r["dims"] == 1 << 20 else str(r["dims"])
    return width if r.get("search_dims") is None else f"{width} (kNN in LSA {r['search_dims']})"


def _ok(row: dict[str, Any] | None) -> bool:
    return row is not None and row.get("error") is None and "aiq" in row


def dataset_rows(ds: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of one data set's table."""
    head = [
        "encoder",
        "dims",
        "k",
        "AIQ [95 % CI]",
        f"ΔAIQ vs {BASE}",
        f"ΔAIQ vs {REFERENCE}",
        "batch prompts/s",
        "encode p50 / p99 ms",
        "decision p50 / p99 ms",
    ]
    cells = []
    for e, r in ds["encoders"].items():
        if not _ok(r):
            cells.append([e, *["–"] * 7, f"failed: {(r.get('error') or '').splitlines()[0]}"])
            continue
        cells.append(
            [
                e,
                _dims(r),
                str(r["knn"]["k"]),
                _ci(r["aiq"], r["aiq_ci"]),
                "(baseline)" if e == BASE else _ci(r["d_aiq_tfidf"], r["d_aiq_tfidf_ci"]),
                "(reference)" if e == REFERENCE else _ci(r["d_aiq_minilm"], r["d_aiq_minilm_ci"]),
                _rate(r["batch_prompts_per_s"]),
                f"{r['encode_p50_ms']:.2f} / {r['encode_p99_ms']:.2f}",
                f"{r['decision_p50_ms']:.2f} / {r['decision_p99_ms']:.2f}",
            ]
        )
    return head, cells


def summary_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per data set: TF-IDF's AIQ, every Δ, static − MiniLM, speeds side by side."""
    encoders = list(results[0]["encoders"]) if results else []
    others = [e for e in encoders if e != BASE]
    head = ["data set", "test prompts", f"AIQ {BASE}", *[f"Δ {e} vs {BASE}" for e in others]]
    pair = "static" in encoders and REFERENCE in encoders
    if pair:
        head.append(f"Δ static vs {REFERENCE}")
    head += [f"batch prompts/s ({' · '.join(encoders)})", "decision p50 ms"]
    cells = []
    for ds in results:
        rows = ds["encoders"]
        base = rows.get(BASE)
        line = [ds["dataset"], str(ds["prompts"]["test"]), _f(base["aiq"]) if _ok(base) else "–"]
        for e in others:
            r = rows[e]
            line.append(_ci(r["d_aiq_tfidf"], r["d_aiq_tfidf_ci"]) if _ok(r) else "failed")
        if pair:
            r = rows["static"]
            line.append(_ci(r["d_aiq_minilm"], r["d_aiq_minilm_ci"]) if _ok(r) else "–")
        line.append(
            " · ".join(_rate(r["batch_prompts_per_s"]) if _ok(r) else "–" for r in rows.values())
        )
        line.append(
            " · ".join(_f(r["decision_p50_ms"], 2) if _ok(r) else "–" for r in rows.values())
        )
        cells.append(line)
    return head, cells


def _span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{lo:{fmt}}–{hi:{fmt}}"


def overall(results: list[dict[str, Any]]) -> str:
    """The answer across data sets, in plain words, from the intervals and the timings."""
    both = [
        ds for ds in results if all(_ok(ds["encoders"].get(e)) for e in (BASE, REFERENCE, "static"))
    ]
    if not both:
        return "TF-IDF, MiniLM and static did not all run; no overall answer."
    rows = [ds["encoders"] for ds in both]
    lost = [
        ds["dataset"]
        for ds, r in zip(both, rows, strict=True)
        if r["static"]["d_aiq_minilm_ci"][1] < 0
    ]
    won = [
        ds["dataset"]
        for ds, r in zip(both, rows, strict=True)
        if r["static"]["d_aiq_minilm_ci"][0] > 0
    ]
    mini_up = [
        ds["dataset"]
        for ds, r in zip(both, rows, strict=True)
        if r[REFERENCE]["d_aiq_tfidf_ci"][0] > 0
    ]
    n = len(both)
    kept = n - len(lost)
    text = f"Quality: on {kept} of {n} data sets the static encoder's kNN router has no "
    text += "detectable AIQ loss to MiniLM's"
    text += f" (it is ahead on {', '.join(won)})" if won else ""
    text += f"; on {', '.join(lost)} it loses (see below)." if lost else "."
    mini_down = [
        ds["dataset"]
        for ds, r in zip(both, rows, strict=True)
        if r[REFERENCE]["d_aiq_tfidf_ci"][1] < 0
    ]
    if mini_up:
        text += f" MiniLM beats TF-IDF on {', '.join(mini_up)}."
    else:
        below = f" and is below it on {', '.join(mini_down)}" if mini_down else ""
        text += (
            f" But MiniLM itself does not beat the TF-IDF default on any of them{below}, so "
            "there is no MiniLM gain for static to keep here: as far as these test sets can "
            "tell, TF-IDF already routes as well at hashing speed, and static is a fast "
            "stand-in for MiniLM, not an improvement on the default."
        )
    ratio = [r["static"]["batch_prompts_per_s"] / r[REFERENCE]["batch_prompts_per_s"] for r in rows]
    vs_tf = [r["static"]["batch_prompts_per_s"] / r[BASE]["batch_prompts_per_s"] for r in rows]
    dec = {e: [r[e]["decision_p50_ms"] for r in rows] for e in (BASE, "static", REFERENCE)}
    text += (
        f" Speed: static encodes {_span(ratio, ',.0f')}× as many prompts per second as MiniLM "
        f"({_span(vs_tf, '.1f')}× TF-IDF's batch throughput), and a live decision takes "
        f"{_span(dec['static'], '.1f')} ms (p50) with static, {_span(dec[BASE], '.1f')} ms with "
        f"TF-IDF and {_span(dec[REFERENCE], '.0f')} ms with MiniLM: hashing speed, yes."
    )
    return text


def verdict(ds: dict[str, Any]) -> str:
    """A plain-language answer for one data set, from the intervals (whichever way it goes)."""
    rows = ds["encoders"]
    st, mi, tf = rows.get("static"), rows.get(REFERENCE), rows.get(BASE)
    if not (_ok(st) and _ok(mi)):
        return f"**{ds['dataset']}**: static or MiniLM did not run; no answer."
    assert st is not None and mi is not None
    d, (lo, hi) = st["d_aiq_minilm"], st["d_aiq_minilm_ci"]
    span = f"{d:+.3f} AIQ, 95 % CI [{lo:+.3f}, {hi:+.3f}]"
    if hi < 0:
        keeps = f"no: static loses to MiniLM ({span})"
    elif lo > 0:
        keeps = f"yes, and more: static beats MiniLM ({span})"
    else:
        keeps = f"no detectable difference on {ds['prompts']['test']} test prompts ({span}"
        keeps += f"; a loss of up to {-lo:.3f} is not ruled out)" if lo < -0.005 else ")"
    text = f"**{ds['dataset']}**: does static keep MiniLM's quality? {keeps}."
    if _ok(tf):
        assert tf is not None
        mlo, mhi = mi["d_aiq_tfidf_ci"]
        if mhi < 0:
            text += f" MiniLM itself is below TF-IDF here ({_ci(mi['d_aiq_tfidf'], (mlo, mhi))})"
        elif mlo > 0:
            text += f" MiniLM beats TF-IDF here ({_ci(mi['d_aiq_tfidf'], (mlo, mhi))})"
        else:
            text += " MiniLM and TF-IDF are not distinguishable here"
        slo, shi = st["d_aiq_tfidf_ci"]
        text += f"; static vs TF-IDF: {_ci(st['d_aiq_tfidf'], (slo, shi))}."
    ratio = st["batch_prompts_per_s"] / mi["batch_prompts_per_s"]
    text += (
        f" Speed: static encodes {ratio:,.0f}× as many prompts/s as MiniLM in batch; one live "
        f"decision takes {st['decision_p50_ms']:.2f} ms (p50) against MiniLM's "
        f"{mi['decision_p50_ms']:.2f} ms"
    )
    if _ok(tf):
        assert tf is not None
        vs_tfidf = st["batch_prompts_per_s"] / tf["batch_prompts_per_s"]
        text += (
            f" and TF-IDF's {tf['decision_p50_ms']:.2f} ms "
            f"(static/TF-IDF batch throughput {vs_tfidf:.1f}×)"
        )
    return text + "."


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The report: command, answer, summary table, one table per data set."""
    static = meta.get("static") or {}
    lines = [
        f"`{meta['command']}`",
        "",
        "The question: does a static token-embedding encoder distilled from MiniLM "
        "(Model2Vec-style, `llmdispatch encoders distill`, numpy-only at inference) keep "
        "MiniLM's routing quality at the speed of the hashed TF-IDF default. Each encoder feeds "
        "the same kNN router (k, τ, α by its own leave-one-out), fitted and replayed exactly as "
        "`llmdispatch bench` does (train split minus bench's validation share; λ swept on "
        f"test); ΔAIQ are paired bootstrap 95 % intervals ({meta['bootstrap']} resamples of "
        "the test prompts). Speed is one thread, encoders interleaved chunk by chunk: batch "
        "throughput on up to "
        f"{meta['batch_prompts']} test prompts (median of {meta['rounds']} rounds), and "
        f"single-query p50/p99 of the encoder alone and of a full live decision "
        f"(`Router.start`) over {meta['queries']} test queries.",
        "",
    ]
    if static:
        how = "distilled in this run" if static.get("distilled_now") else "already in the cache"
        lines += [
            f"Static table: {static.get('dims')} dimensions, {static.get('tokens')} tokens, "
            f"{how} (its distillation took {_f(static.get('distill_seconds'), 1)} s).",
            "",
        ]
    lines += [
        f"Machine: {meta['machine']}; load average {meta['load_average_start']:.1f} at the "
        f"start and {meta['load_average_end']:.1f} at the end (shared with other jobs, so "
        "absolute timings are pessimistic; interleaving keeps the comparison between "
        f"encoders fair). Wall time {meta['seconds'] / 60:.1f} min.",
        "",
    ]
    lines += ["# Answer", "", overall(results), ""]
    lines += [f"- {verdict(ds)}" for ds in results]
    lines += ["", "# Summary", ""]
    head, cells = summary_rows(results)
    lines += _md_table(head, cells, left=1)
    for ds in results:
        lines += [
            "",
            f"# {ds['dataset']}",
            "",
            f"{ds['prompts']['train']} training, {ds['prompts']['validation']} validation "
            f"(unused by kNN) and {ds['prompts']['test']} test prompts, {ds['models']} models.",
            "",
        ]
        head, cells = dataset_rows(ds)
        lines += _md_table(head, cells, left=1)
    return "\n".join(lines) + "\n"


def _md_table(head: list[str], cells: list[list[str]], left: int) -> list[str]:
    align = ["---"] * left + ["---:"] * (len(head) - left)
    return [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(align) + " |",
        *["| " + " | ".join(c) + " |" for c in cells],
    ]


def rich_table(title: str, head: list[str], cells: list[list[str]]) -> Table:
    """The same cells for the terminal."""
    tab = Table(title=title)
    for i, h in enumerate(head):
        tab.add_column(h, justify="left" if i == 0 else "right")
    for c in cells:
        tab.add_row(*c)
    return tab


def _clean(v: Any) -> Any:
    """JSON-safe values: NaN → null, ±inf → "inf"/"-inf", tuples → lists."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, float | np.floating):
        f = float(v)
        return None if math.isnan(f) else (("inf" if f > 0 else "-inf") if math.isinf(f) else f)
    if isinstance(v, np.integer):
        return int(v)
    return v


def shown_command(argv: list[str]) -> str:
    """The command as run, without ``--out`` (the report says where it was written)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            kept.append(a)
    return " ".join([COMMAND, *kept])


def main(argv: list[str] | None = None) -> int:
    """Run quality and speed on every data set; print and write the reports."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", nargs="+", default=list(DATASETS))
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS))
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=300, help="single-query timings per set")
    ap.add_argument("--batch-prompts", type=int, default=300, help="prompts per batch timing")
    ap.add_argument("--rounds", type=int, default=3, help="batch timings per encoder")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument(
        "--report-only", action="store_true", help="rewrite the reports from OUT's encoders.json"
    )
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    if args.report_only:
        doc = json.loads((args.out / "encoders" / "encoders.json").read_text(encoding="utf-8"))
        report(doc["datasets"], doc["meta"], args.out / "encoders")
        return 0
    if BASE not in args.encoders:
        ap.error(f"--encoders must include the baseline {BASE!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # MiniLM is bundled: never download
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = time.perf_counter()
    limit_threads(args.encoders)
    meta: dict[str, Any] = {
        "command": shown_command(argv),
        "bootstrap": args.bootstrap,
        "queries": args.queries,
        "batch_prompts": args.batch_prompts,
        "rounds": args.rounds,
        "threads": 1,
        "load_average_start": os.getloadavg()[0],
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"Python {platform.python_version()}",
    }
    if "static" in args.encoders:
        meta["static"] = ensure_static()
    results = []
    for spec in args.data:
        console.rule(spec)
        t0 = time.perf_counter()
        ds = run_dataset(spec, args)
        ds["seconds"] = time.perf_counter() - t0
        results.append(ds)
        head, cells = dataset_rows(ds)
        console.print(rich_table(f"{spec}: kNN router per encoder", head, cells))
        console.print(f"{spec}: {ds['seconds']:.0f} s (quality {ds['quality_seconds']:.0f} s)")
    meta["seconds"] = time.perf_counter() - started
    meta["load_average_end"] = os.getloadavg()[0]
    report(results, meta, args.out / "encoders")
    return 0


def report(results: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    """Print the summary and answers; write ``encoders.json`` and ``encoders.md`` to ``out``."""
    head, cells = summary_rows(results)
    console.print(rich_table("encoders: summary", head, cells))
    console.print(overall(results))
    for ds in results:
        console.print(verdict(ds))
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "datasets": results}
    (out / "encoders.json").write_text(json.dumps(_clean(doc), indent=1), encoding="utf-8")
    (out / "encoders.md").write_text(markdown(results, meta), encoding="utf-8")
    console.print(f"wrote {out / 'encoders.md'} (run took {meta['seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    raise SystemExit(main())
