"""Write ``bench`` results: a Markdown report, a JSON file of every figure and curve."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from llmdispatch.evaluation.bench import (
    BASELINE,
    FALLBACK_BASELINE,
    HEADLINE,
    DatasetResult,
    PolicyResult,
)

_TITLES = {
    "aiq": "AIQ",
    "aiq_log": "AIQ(log)",
    "q@10": "q@10%",
    "q@25": "q@25%",
    "q@50": "q@50%",
    "cost_to_best": "cost→best",
    "cost_to_95": "cost→95%",
    "arena": "arena",
    "gap_closed": "gap closed",
    "d_aiq_zero": "ΔAIQ vs zero",
    "d_aiq_knn": "ΔAIQ vs kNN",
}
#: Figures shown with their interval in the main table.
_WITH_CI = ("aiq", "cost_to_95", "d_aiq_zero", "d_aiq_knn")


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table: ``—`` when missing, ``never`` when a target is not reached."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "never"
    return f"{value:.{digits}f}"


def fmt_ci(value: float | None, ci: tuple[float, float] | None, digits: int = 3) -> str:
    """``value [lo, hi]``."""
    if ci is None:
        return fmt(value, digits)
    return f"{fmt(value, digits)} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def _row(p: PolicyResult, columns: list[str]) -> list[str]:
    cells = [p.name, p.family]
    for key in columns:
        value = p.metrics.get(key)
        cells.append(fmt_ci(value, p.ci.get(key)) if key in _WITH_CI else fmt(value))
    cells.append(f"{p.fit_seconds:.1f}")
    return cells


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] * 2 + ["---:"] * (len(header) - 2)
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def dataset_markdown(d: DatasetResult, plot: str | None = None) -> list[str]:
    """One data set's section."""
    lines = [f"## {d.name}", ""]
    p = d.prompts
    lines.append(
        f"{p['train']} train / {p['validation']} validation / {p['test']} test prompts, "
        f"{len(d.models)} models; loaded in {d.load_seconds:.2f} s; "
        f"{d.bootstrap} paired bootstrap resamples of the test prompts (95 % intervals)."
    )
    if d.leaks_dropped is not None:
        lines.append(f"Dropped {d.leaks_dropped} test prompts that also occur in train.")
    if d.costs_estimated:
        lines.append("Costs in this set are estimates (see its card).")
    lines += ["", "Single models on the test split:", ""]
    singles = sorted(range(len(d.models)), key=lambda j: d.refs.cost[j])
    lines += _table(
        ["model", "", "quality", "cost/query (USD)"],
        [[d.models[j], "", fmt(d.refs.quality[j]), f"{d.refs.cost[j]:.3g}"] for j in singles],
    )
    columns = [*HEADLINE, "gap_closed", "d_aiq_zero", "d_aiq_knn"]
    if any("apgr" in r.metrics for r in d.policies):
        columns += ["apgr", "cpt50", "cpt80"]
    header = ["policy", "family"] + [_TITLES.get(c, c) for c in columns] + ["fit s"]
    ok = [r for r in d.policies if r.run is not None]
    zero_row = ["zero router (hull of single models)", "reference"]
    zero_row += [fmt(d.zero.get(c)) for c in columns] + ["0.0"]
    lines += ["", *_table(header, [zero_row] + [_row(r, columns) for r in ok])]
    if d.label_refs:
        labels = list(d.label_refs)
        lines += ["", "AIQ per benchmark inside the set (95 % interval of ΔAIQ vs kNN):", ""]
        rows = []
        for r in ok:
            cells = [r.name, r.family]
            for lab in labels:
                info = r.labels.get(lab, {})
                aiq = info.get("metrics", {}).get("aiq")
                dk = info.get("ci", {}).get("d_aiq_knn")
                cells.append(fmt(aiq) + (f" ({fmt(dk[0])}, {fmt(dk[1])})" if dk else ""))
            rows.append(cells)
        lines += _table(["policy", "family", *labels], rows)
    bad = [r for r in d.policies if r.error or r.skipped]
    if bad:
        lines += ["", "Not run:", ""]
        for r in bad:
            why = r.skipped or (r.error or "").splitlines()[0]
            lines.append(f"- `{r.name}`: {why}")
    if plot:
        lines += ["", f"![{d.name}]({plot})"]
    return [*lines, ""]


def _verdict(ci: tuple[float, float] | None) -> str:
    """``yes`` when a paired interval lies above zero, ``no`` when it lies below, else ``tie``."""
    if ci is None:
        return "—"
    return "yes" if ci[0] > 0 else ("no" if ci[1] < 0 else "tie")


def summary_markdown(results: list[DatasetResult]) -> list[str]:
    """The best router and the best policy of any family per data set, against the zero
    router and the tuned kNN router, with the count of data sets where each claim holds."""
    rows = []
    beats_zero = beats_knn = n_sets = 0
    above_knn: list[str] = []
    for d in results:
        ran = [r for r in d.policies if r.run is not None and r.family != "reference"]
        routers = [r for r in ran if r.family == "router"]
        winners = [r for r in routers if _verdict(r.ci.get("d_aiq_knn")) == "yes"]
        listed = ", ".join(
            f"{r.name} {fmt_ci(r.metrics.get('d_aiq_knn'), r.ci.get('d_aiq_knn'))}"
            for r in sorted(winners, key=lambda r: -r.metrics["aiq"])
        )
        above_knn.append(f"{d.name}: {listed or 'none'}")
        picks = []
        if routers:
            picks.append(("router", max(routers, key=lambda r: r.metrics["aiq"])))
        if ran:
            best = max(ran, key=lambda r: r.metrics["aiq"])
            if not routers or best is not picks[0][1]:
                picks.append(("any", best))
        for kind, best in picks:
            ci_zero, ci_knn = best.ci.get("d_aiq_zero"), best.ci.get("d_aiq_knn")
            is_knn = best.name in (BASELINE, FALLBACK_BASELINE) and ci_knn is None
            if kind == "router":
                n_sets += 1
                beats_zero += _verdict(ci_zero) == "yes"
                beats_knn += _verdict(ci_knn) == "yes"
            rows.append(
                [
                    d.name,
                    kind,
                    best.name,
                    fmt(best.metrics["aiq"]),
                    fmt_ci(best.metrics.get("d_aiq_zero"), ci_zero),
                    _verdict(ci_zero),
                    fmt_ci(best.metrics.get("d_aiq_knn"), ci_knn),
                    "is kNN" if is_knn else _verdict(ci_knn),
                    fmt(best.metrics.get("cost_to_95")),
                ]
            )
    lines = [
        "## Summary",
        "",
        "Per data set, the best router (decides before generation) and, where another family "
        "does better, the best policy of any family, by AIQ on the test split, with the paired "
        "95 % intervals of the AIQ difference to the zero router and to the tuned kNN router "
        "(encoder chosen on validation; k and exact or LSA search by leave-one-out). `yes`: the "
        "interval lies above zero; `tie`: it includes zero; `no`: it lies below.",
        "",
        f"The best router beats the zero router on {beats_zero} of {n_sets} data sets and the "
        f"tuned kNN router on {beats_knn} of {n_sets} (interval above zero).",
        "",
    ]
    lines += _table(
        [
            "data set",
            "family",
            "best policy",
            "AIQ",
            "ΔAIQ vs zero",
            "> zero",
            "ΔAIQ vs kNN",
            "> kNN",
            "cost→95%",
        ],
        rows,
    )
    lines += [
        "",
        "Every router whose interval against the tuned kNN lies above zero, not only the best "
        "by AIQ (each is one of many comparisons per data set, so one such interval in 40 is "
        "expected by chance alone): " + "; ".join(above_knn) + ".",
    ]
    return [*lines, ""]


def write_markdown(results: list[DatasetResult], path: Path, plots: dict[str, str]) -> None:
    """The whole report."""
    lines = [
        "# llmdispatch bench",
        "",
        "Every policy is fitted on the train split (a validation split is carved from it for "
        "calibration) and replayed on the test split. AIQ: area under the non-decreasing "
        "convex hull between the cheapest and the dearest single model's cost, divided by "
        "that range (RouterBench); AIQ(log): the same over log cost; q@x%: hull quality at x % "
        "of the dearest model's cost; cost→best / cost→95%: the least cost reaching the best "
        "single model's quality (or 95 % of it) relative to that model's cost; arena: the best "
        "RouterArena score on the curve; gap closed: share of the zero-router→oracle AIQ gap.",
        "",
    ]
    lines += summary_markdown(results)
    for d in results:
        lines += dataset_markdown(d, plots.get(d.name))
    path.write_text("\n".join(lines), encoding="utf-8")


def _floats(values: Any) -> Any:
    if isinstance(values, dict):
        return {k: _floats(v) for k, v in values.items()}
    if isinstance(values, list | tuple):
        return [_floats(v) for v in values]
    if isinstance(values, np.ndarray):
        return _floats(values.tolist())
    if isinstance(values, float | np.floating):
        v = float(values)
        return None if math.isnan(v) else ("inf" if math.isinf(v) else v)
    return values


def write_json(results: list[DatasetResult], path: Path) -> None:
    """Every figure and every curve."""
    doc = []
    for d in results:
        pols = []
        for r in d.policies:
            item: dict[str, Any] = {
                "name": r.name,
                "family": r.family,
                "metrics": r.metrics,
                "ci": r.ci,
                "per_label": r.labels,
                "fit_seconds": r.fit_seconds,
                "replay_seconds": r.replay_seconds,
                "error": r.error,
                "skipped": r.skipped,
            }
            if r.run is not None:
                item["curve"] = {
                    "knob_name": r.run.knob_name,
                    "knob": r.run.knobs,
                    "cost": r.run.mean_cost,
                    "quality": r.run.mean_quality,
                    "latency_ms": r.run.mean_latency_ms,
                    "rungs": r.run.rungs,
                    "called_share": r.run.called,
                    "answered_share": r.run.answered,
                    "models": list(r.run.models),
                }
            pols.append(item)
        doc.append(
            {
                "dataset": d.name,
                "path": d.path,
                "load_seconds": d.load_seconds,
                "prompts": d.prompts,
                "leaks_dropped": d.leaks_dropped,
                "costs_estimated": d.costs_estimated,
                "bootstrap": d.bootstrap,
                "single_models": {
                    m: {"quality": d.refs.quality[j], "cost": d.refs.cost[j]}
                    for j, m in enumerate(d.models)
                },
                "zero_router": d.zero,
                "policies": pols,
            }
        )
    path.write_text(json.dumps(_floats(doc), indent=1), encoding="utf-8")
