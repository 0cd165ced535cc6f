"""Choose a router's λ for a target on held-out data, and check the target on other data.

Targets (one per router):

* ``cost_per_query``: mean USD per query at most this; the best quality within it.
* ``strong_share``: at most this share of calls to the strongest model (highest mean
  score on the training table; RouteLLM's "% calls to GPT-4" knob).
* ``quality_fraction``: mean quality at least this fraction of the best single model's
  (on the same prompts); the cheapest λ that reaches it ("95 % of GPT-4's quality").
* ``lambda``: a fixed λ.

λ is chosen on a validation table from the router's own sweep; the figure it achieves there
is recorded, and :func:`achieved` measures the same figure on any other table (the test split).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmdispatch.data.table import OutcomeTable
from llmdispatch.policies.base import Decisions

TargetKind = Literal["cost_per_query", "strong_share", "quality_fraction", "lambda"]
TARGET_KINDS: tuple[str, ...] = ("cost_per_query", "strong_share", "quality_fraction", "lambda")


class CalibrationError(ValueError):
    """A target that cannot be met or does not make sense."""


class CalibrationTarget(BaseModel):
    """What λ should achieve, e.g. ``{"quality_fraction": 0.95}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: TargetKind
    value: float = Field(ge=0.0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kind" not in data:
            keys = [k for k in data if k in TARGET_KINDS]
            if len(keys) != 1 or len(data) != 1:
                raise ValueError(
                    f"a calibration target is one of {', '.join(TARGET_KINDS)} with a value, "
                    f"e.g. {{quality_fraction: 0.95}}; got {data!r}"
                )
            return {"kind": keys[0], "value": data[keys[0]]}
        return data

    @model_validator(mode="after")
    def _range(self) -> CalibrationTarget:
        if self.kind in ("strong_share", "quality_fraction") and self.value > 1:
            raise ValueError(f"{self.kind} must be in [0, 1], got {self.value}")
        return self


def figures(table: OutcomeTable, d: Decisions, strong: int) -> dict[str, float]:
    """Mean cost, mean quality, strong share and the best single model's quality."""
    rows = np.arange(table.n_prompts)
    cost = np.where(np.isnan(table.cost), 0.0, table.cost)
    quality = table.score[rows, d.final]
    means = np.nanmean(table.score, axis=0)
    return {
        "cost_per_query": float(((cost * d.called).sum(axis=1) + d.overhead_cost).mean()),
        "quality": float(np.nanmean(quality)),
        "strong_share": float(d.called[:, strong].mean()),
        "best_single_quality": float(np.nanmax(means)),
    }


def achieved(
    target: CalibrationTarget, table: OutcomeTable, d: Decisions, strong: int
) -> dict[str, float]:
    """The target's figure measured on ``table`` (with its scores), plus the basics."""
    f = figures(table, d, strong)
    if target.kind == "quality_fraction":
        f["achieved"] = f["quality"] / f["best_single_quality"] if f["best_single_quality"] else 0
    elif target.kind == "lambda":
        f["achieved"] = target.value
    else:
        f["achieved"] = f[target.kind]
    return f


def choose_lambda(
    target: CalibrationTarget,
    table: OutcomeTable,
    sweep: list[tuple[float, Decisions]],
    strong: int,
) -> tuple[float, dict[str, float]]:
    """The λ of ``sweep`` (on a validation ``table`` with scores) that meets ``target``.

    Cost and share targets take the best-quality point within the limit; a quality target
    takes the cheapest point that reaches it. When none qualifies, the closest point is taken
    and ``met`` is 0 in the returned figures.
    """
    if target.kind == "lambda":
        return target.value, {"achieved": target.value, "met": 1.0}
    points = [(lam, achieved(target, table, d, strong)) for lam, d in sweep]
    if not points:
        raise CalibrationError("cannot calibrate on an empty sweep")
    if target.kind == "quality_fraction":
        ok = [(lam, f) for lam, f in points if f["achieved"] >= target.value - 1e-12]
        if ok:
            lam, f = min(ok, key=lambda p: (p[1]["cost_per_query"], -p[1]["quality"]))
            return lam, {**f, "met": 1.0}
        lam, f = max(points, key=lambda p: p[1]["achieved"])
        return lam, {**f, "met": 0.0}
    ok = [(lam, f) for lam, f in points if f["achieved"] <= target.value + 1e-12]
    if ok:
        lam, f = max(ok, key=lambda p: (p[1]["quality"], -p[1]["cost_per_query"]))
        return lam, {**f, "met": 1.0}
    lam, f = min(points, key=lambda p: p[1]["achieved"])
    return lam, {**f, "met": 0.0}


def describe_target(target: dict[str, Any]) -> str:
    """A calibration target in words, e.g. ``quality ≥ 95.0 % of the best single model's``."""
    kind, value = str(target["kind"]), float(target["value"])
    if kind == "quality_fraction":
        return f"quality ≥ {value:.1%} of the best single model's"
    if kind == "cost_per_query":
        return f"cost ≤ ${value:.6f} per query"
    if kind == "strong_share":
        return f"≤ {value:.1%} of calls to the strongest model"
    return f"fixed λ = {value:g}"


def describe_figures(f: dict[str, float]) -> str:
    """Quality (against the best single model), cost per query and strong share in words."""
    best = f["best_single_quality"]
    share = f"{f['quality'] / best:.1%} of the best single model's {best:.3f}" if best else "n/a"
    return (
        f"quality {f['quality']:.3f} ({share}), ${f['cost_per_query']:.6f} per query, "
        f"{f['strong_share']:.1%} of calls to the strongest model"
    )


def describe(calibration: dict[str, Any]) -> str:
    """A router's ``calibration_`` record (target, chosen λ, validation figures) in words."""
    target, lam = calibration["target"], calibration["lambda"]
    if target["kind"] == "lambda":
        return f"calibration: fixed λ = {lam:g}"
    text = f"calibration: {describe_target(target)} → λ = {lam:g}"
    found = calibration.get("validation")
    if not found:
        return text + " (no validation prompts: λ kept, not calibrated)"
    n = calibration.get("validation_prompts")
    where = f"on validation ({n:,} prompts)" if n else "on validation"
    verdict = "met" if found.get("met", 1.0) else "NOT met: the closest λ was taken"
    return f"{text}\n  {where}: {describe_figures(found)}; target {verdict}"
