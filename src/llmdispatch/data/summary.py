"""What an outcome table holds: counts, per-model means, oracle, missing fields, leaks."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from llmdispatch.data.leaks import find_leaks
from llmdispatch.data.table import NUMERIC_FIELDS, OutcomeTable


def summarize_table(table: OutcomeTable, load_seconds: float | None = None) -> dict[str, Any]:
    """A JSON-able summary (``llmdispatch data info`` prints it)."""
    tops = [str(d).split("/", 1)[0] for d in table.datasets]
    counts = Counter(zip(tops, (str(s) for s in table.splits), strict=True))
    per_dataset = {
        d: {s: counts.get((d, s), 0) for s in ("train", "test")} for d in sorted(set(tops))
    }
    known = table.known
    q = table.mean_score()
    c = table.mean_cost()
    models: list[dict[str, Any]] = []
    for j, name in enumerate(table.models):
        card = table.card(name)
        models.append(
            {
                "model": name,
                "coverage": float(known[:, j].mean()) if table.n_prompts else 0.0,
                "mean_score": None if np.isnan(q[j]) else float(q[j]),
                "mean_cost": None if np.isnan(c[j]) else float(c[j]),
                "prices_estimated": bool(card.prices_estimated),
            }
        )
    scored = [m for m in models if m["mean_score"] is not None and m["coverage"] >= 0.9]
    best = max(scored, key=lambda m: float(m["mean_score"]), default=None)
    missing = {}
    for field in NUMERIC_FIELDS:
        values = getattr(table, field)
        missing[field] = float(np.isnan(values).mean()) if values.size else 1.0
    has_response = np.vectorize(lambda r: isinstance(r, str) and bool(r), otypes=[bool])
    missing["response"] = (
        float(1 - has_response(table.responses).mean()) if table.responses.size else 1.0
    )
    report = table.report
    return {
        "name": table.name,
        "source": report.source,
        "prompts": table.n_prompts,
        "models": len(table.models),
        "load_seconds": load_seconds,
        "per_dataset": per_dataset,
        "per_model": models,
        "oracle": table.oracle_score(),
        "best_single": None
        if best is None
        else {"model": best["model"], "mean_score": best["mean_score"]},
        "missing_share": missing,
        "costs_estimated": bool(table.costs_estimated)
        or any(m["prices_estimated"] for m in models),
        "leaked_test_prompts": len(find_leaks(table)),
        "rows_read": report.rows_read,
        "rows_skipped": report.rows_skipped,
        "derived_costs": report.derived_costs,
        "problems": list(report.problems),
        "notes": list(report.notes),
    }
