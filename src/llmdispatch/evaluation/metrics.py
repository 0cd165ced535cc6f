"""The field's cost/quality metrics, computed from curve points and the single models.

Every figure is a function of a policy's curve (mean cost and mean quality per knob value)
and of the single models' points on the same prompts; :mod:`llmdispatch.evaluation.bootstrap`
recomputes them on resampled prompts for confidence intervals.

Conventions (stated once, used everywhere):

* The frontier of a curve is its non-decreasing convex hull (:mod:`.hull`) **with the
  cheapest single model's point added**: a deployment can always send a share of its traffic
  to the cheapest model, so that point is achievable by every policy. The zero router is the
  hull of the single models alone.
* ``c_min``/``c_max`` are the cheapest and the most expensive single model's mean cost per
  query; ``q_best`` is the best single model's mean quality (ties: the cheaper) and
  ``c_best`` its mean cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmdispatch.evaluation.hull import Hull, area, nondecreasing_hull
from llmdispatch.types import FloatMatrix, FloatVector

#: Fractions of the most expensive model's cost at which quality is reported.
COST_FRACTIONS = (0.10, 0.25, 0.50)
#: RouterArena's constants: β and the cost range in USD per 1,000 queries.
ARENA_BETA = 0.1
ARENA_C_MIN = 0.0044
ARENA_C_MAX = 200.0


@dataclass(frozen=True)
class References:
    """The single models' mean cost and quality on one set of prompts."""

    models: tuple[str, ...]
    cost: FloatVector
    quality: FloatVector

    @classmethod
    def from_matrices(
        cls, models: tuple[str, ...], score: FloatMatrix, cost: FloatMatrix
    ) -> References:
        """Means over the prompts where each value is known."""
        with np.errstate(invalid="ignore"):
            q = np.nanmean(np.where(np.isnan(score), np.nan, score), axis=0)
            c = np.nanmean(np.where(np.isnan(cost), np.nan, cost), axis=0)
        return cls(models, np.asarray(c, np.float64), np.asarray(q, np.float64))

    @property
    def valid(self) -> np.ndarray:
        """Models with both a mean cost and a mean quality."""
        return ~(np.isnan(self.cost) | np.isnan(self.quality))

    @property
    def c_min(self) -> float:
        """The cheapest single model's mean cost."""
        return float(self.cost[self.valid].min())

    @property
    def c_max(self) -> float:
        """The most expensive single model's mean cost."""
        return float(self.cost[self.valid].max())

    @property
    def cheapest(self) -> int:
        """Index of the cheapest model (ties: the better one)."""
        idx = np.flatnonzero(self.valid)
        return int(idx[np.lexsort((-self.quality[idx], self.cost[idx]))[0]])

    @property
    def best(self) -> int:
        """Index of the best model (ties: the cheaper one)."""
        idx = np.flatnonzero(self.valid)
        return int(idx[np.lexsort((self.cost[idx], -self.quality[idx]))[0]])

    def zero_hull(self) -> Hull:
        """The zero router: the hull of the single models (RouterBench)."""
        return nondecreasing_hull(self.cost, self.quality)


def frontier(cost: FloatVector, quality: FloatVector, refs: References) -> Hull:
    """A curve's hull with the cheapest single model's point added (module docstring)."""
    j = refs.cheapest
    return nondecreasing_hull(
        np.append(np.asarray(cost, np.float64), refs.cost[j]),
        np.append(np.asarray(quality, np.float64), refs.quality[j]),
    )


def arena_score(accuracy: float, cost_per_query: float) -> float:
    """RouterArena's accuracy–cost score (Lu et al., arXiv:2510.00202, 2025).

    ``S = (1 + β)·A·C / (β·A + C)`` with ``β = 0.1``, ``A`` the accuracy and
    ``C = (log₂ c_max − log₂ c) / (log₂ c_max − log₂ c_min)`` for ``c`` in USD per 1,000
    queries, ``c_max = 200``, ``c_min = 0.0044`` (``c`` is clipped to that range).
    """
    c = min(max(cost_per_query * 1000.0, ARENA_C_MIN), ARENA_C_MAX)
    cost_score = (math.log2(ARENA_C_MAX) - math.log2(c)) / (
        math.log2(ARENA_C_MAX) - math.log2(ARENA_C_MIN)
    )
    den = ARENA_BETA * accuracy + cost_score
    return float((1 + ARENA_BETA) * accuracy * cost_score / den) if den > 0 else 0.0


def aiq(cost: FloatVector, quality: FloatVector, refs: References) -> float:
    """AIQ alone (see :func:`curve_metrics`): what the per-benchmark intervals need."""
    hull = frontier(cost, quality, refs)
    lo, hi = refs.c_min, refs.c_max
    return area(hull, lo, hi) if hi > lo else float(hull.at(hi)[0])


def curve_metrics(cost: FloatVector, quality: FloatVector, refs: References) -> dict[str, float]:
    """Headline figures of one curve.

    ``aiq``: RouterBench's Average Improvement in Quality — the area under the frontier over
    ``[c_min, c_max]`` divided by ``c_max − c_min``; ``aiq_log``: the same over ``log10``
    cost (costs span orders of magnitude). ``q@10``/``q@25``/``q@50``: frontier quality at
    that share of ``c_max``. ``cost_to_best``/``cost_to_95``: the least frontier cost reaching
    ``q_best`` / ``0.95·q_best``, divided by ``c_best`` (RouteLLM's "cost at 95 % of GPT-4
    quality"; ``1 −`` it is the saving; ``inf`` when never reached). ``arena``: the best
    RouterArena score over the curve's points. ``q_max``/``c_at_q_max``: its best point.
    """
    hull = frontier(cost, quality, refs)
    lo, hi = refs.c_min, refs.c_max
    out: dict[str, float] = {}
    if hi > lo:
        out["aiq"] = area(hull, lo, hi)
        out["aiq_log"] = area(hull, lo, hi, log=True) if lo > 0 else float("nan")
    else:
        out["aiq"] = out["aiq_log"] = float(hull.at(hi)[0])
    at = hull.at(np.array(COST_FRACTIONS) * hi)
    for f, value in zip(COST_FRACTIONS, at, strict=True):
        out[f"q@{round(f * 100)}"] = float(value)
    best = refs.best
    q_best, c_best = float(refs.quality[best]), float(refs.cost[best])
    out["cost_to_best"] = hull.cost_to_reach(q_best) / c_best if c_best > 0 else float("nan")
    out["cost_to_95"] = hull.cost_to_reach(0.95 * q_best) / c_best if c_best > 0 else float("nan")
    c = np.asarray(cost, np.float64)
    q = np.asarray(quality, np.float64)
    out["arena"] = float(arena_scores(q, c).max())
    k = int(np.argmax(q))
    out["q_max"], out["c_at_q_max"] = float(q[k]), float(c[k])
    return out


def arena_scores(accuracy: FloatVector, cost_per_query: FloatVector) -> FloatVector:
    """:func:`arena_score` for many points at once."""
    c = np.clip(np.asarray(cost_per_query, np.float64) * 1000.0, ARENA_C_MIN, ARENA_C_MAX)
    top = math.log2(ARENA_C_MAX)
    cost_score = (top - np.log2(c)) / (top - math.log2(ARENA_C_MIN))
    a = np.asarray(accuracy, np.float64)
    den = ARENA_BETA * a + cost_score
    safe = np.where(den > 0, den, 1.0)
    return np.asarray(np.where(den > 0, (1 + ARENA_BETA) * a * cost_score / safe, 0.0))


def gap_closed(aiq: float, aiq_zero: float, aiq_oracle: float) -> float:
    """Share of the zero router's AIQ gap to the oracle that a policy closes.

    ``(AIQ − AIQ_zero) / (AIQ_oracle − AIQ_zero)``: 0 is no better than mixing models
    blindly, 1 is the oracle (LLMRouterBench reports the same gap in quality terms).
    """
    den = aiq_oracle - aiq_zero
    return float((aiq - aiq_zero) / den) if den > 1e-12 else float("nan")


def pgr_metrics(
    strong_share: FloatVector, quality: FloatVector, q_weak: float, q_strong: float
) -> dict[str, float]:
    """RouteLLM's two-model metrics (Ong et al., arXiv:2406.18665, 2024).

    ``PGR = (q − q_weak) / (q_strong − q_weak)``; ``APGR`` is the area under PGR against the
    share of calls to the strong model on [0, 1], here under the non-decreasing hull of the
    policy's points plus the two pure policies ``(0, 0)`` (all weak) and ``(1, 1)`` (all
    strong), both always achievable. ``CPT(x %)`` is the least strong-call share whose PGR
    reaches ``x``.
    """
    if not q_strong > q_weak:
        nan = float("nan")
        return {"apgr": nan, "cpt20": nan, "cpt50": nan, "cpt80": nan}
    pgr = (np.asarray(quality, np.float64) - q_weak) / (q_strong - q_weak)
    share = np.asarray(strong_share, np.float64)
    hull = nondecreasing_hull(np.append(share, [0.0, 1.0]), np.append(pgr, [0.0, 1.0]))
    out = {"apgr": area(hull, 0.0, 1.0)}
    for x in (0.2, 0.5, 0.8):
        out[f"cpt{round(x * 100)}"] = hull.cost_to_reach(x)
    return out


def summarize(values: dict[str, Any]) -> dict[str, float]:
    """Plain floats (for JSON)."""
    return {k: float(v) for k, v in values.items()}
