"""FrugalGPT: choose the cascade's models and thresholds under a budget, on validation data.

Chen, Zaharia & Zou, "FrugalGPT: How to Use Large Language Models While Reducing Cost and
Improving Performance" (arXiv:2305.05176, 2023), Section 3: the LLM cascade is a list
``L = (m_1, …, m_k)`` and thresholds ``τ_1 … τ_{k−1}``; answer ``a_r`` of ``m_r`` is returned
when ``g(q, a_r) ≥ τ_r`` (the last rung always answers). They solve

    max_{L, τ}  E[ quality(L, τ) ]   subject to   E[ cost(L, τ) ] ≤ b

on held-out data by searching lists and thresholds. Implemented here as an exhaustive search
on the validation split over lists of up to ``max_rungs`` models ordered by training cost
(from the ``max_candidates`` models that are best by training cost–quality trade-off), with
each rung's thresholds from quantiles of its calibrated signal. For a fixed list, every
threshold combination is evaluated at once by a backward recursion over the rungs:

    V_r = A_r ⊙ q_r + (1 − A_r) ⊙ V_{r+1},   C_r = c_r + (1 − A_r) ⊙ C_{r+1}

with ``A_r`` the accept indicator of rung ``r`` for every threshold on its grid. Adapted:
``g`` is any calibrated signal (the FrugalGPT scorer is one: ``frugalgpt-scorer``), not only a
trained scorer, and one search yields the best cascade for every budget on a grid (the knob).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from llmdispatch.data.splits import train_validation
from llmdispatch.data.table import OutcomeTable
from llmdispatch.policies.base import Decisions, Plan, Policy
from llmdispatch.policies.cascade import (
    ModelStats,
    ladder_decisions,
    ladder_plan,
    live_ladder,
    make_signal,
)
from llmdispatch.policies.ladder import LiveFlow, run_ladder
from llmdispatch.query import Query
from llmdispatch.registry import register
from llmdispatch.signals.base import Signal
from llmdispatch.signals.calibrated import CalibratedSignal
from llmdispatch.types import BoolMatrix, FloatMatrix, FloatVector, IntVector


@dataclass(frozen=True)
class CascadeConfig:
    """One cascade: its rungs, thresholds (the last one unused) and validation figures."""

    rungs: tuple[str, ...]
    thresholds: tuple[float, ...]
    cost: float
    quality: float

    def state(self) -> dict[str, Any]:
        """JSON-able state."""
        return {
            "rungs": list(self.rungs),
            "thresholds": list(self.thresholds),
            "cost": self.cost,
            "quality": self.quality,
        }


def pareto_front(stats: ModelStats) -> list[str]:
    """Models no cheaper model matches in training quality, cheapest first."""
    front: list[str] = []
    best = -np.inf
    for m in stats.by_cost():
        if stats.quality[m] > best:
            front.append(m)
            best = stats.quality[m]
    return front


def frontier_candidates(stats: ModelStats, limit: int) -> list[str]:
    """Up to ``limit`` models, cheapest first: the cost–quality Pareto front (its dearest
    members when it is longer than ``limit``), then the best of the rest by quality."""
    front = pareto_front(stats)
    rest = sorted(set(stats.quality) - set(front), key=lambda m: (-stats.quality[m], m))
    chosen = (front[-limit:] if len(front) > limit else front) + rest
    return stats.by_cost(chosen[:limit])


def threshold_grid(p: FloatVector, size: int) -> FloatVector:
    """Distinct quantiles of the finite values of ``p`` (accept-all first); [0] if none."""
    finite = p[np.isfinite(p)]
    if not len(finite):
        return np.array([0.0])
    return np.unique(np.quantile(finite, np.linspace(0.0, 1.0, size)))


def evaluate_list(
    q: FloatMatrix,
    c: FloatMatrix,
    p: FloatMatrix,
    avail: BoolMatrix,
    grids: Sequence[FloatVector],
    fallback: tuple[FloatVector, FloatVector],
    on_missing: str = "escalate",
    check: FloatMatrix | None = None,
) -> tuple[FloatVector, FloatVector]:
    """Mean quality and cost of one list for every threshold combination (row-major over
    ``grids`` of the rungs but the last). ``q, c, p, avail`` (and ``check``, the cost of
    reading the signal) are ``(n, k)`` for the rungs; a rung's signal is read, and its check
    paid, unless it is the last available rung of its row."""
    n, k = q.shape
    value, cost = fallback[0][:, None], fallback[1][:, None]
    last = np.where(avail.any(axis=1), k - 1 - np.argmax(avail[:, ::-1], axis=1), -1)
    extra = np.zeros((n, k)) if check is None else check
    for r in range(k - 1, -1, -1):
        grid = grids[r] if r < k - 1 else np.array([0.0])
        pr = p[:, r : r + 1]
        ok = np.where(np.isnan(pr), on_missing == "accept", pr >= grid[None, :])
        accept = avail[:, r : r + 1] & ((last == r)[:, None] | ok)  # (n, G_r)
        a = accept[:, :, None]
        value = (a * q[:, r, None, None] + (~a) * value[:, None, :]).reshape(n, -1)
        checked = avail[:, r] & (last != r)
        paid = np.where(avail[:, r], c[:, r] + np.where(checked, extra[:, r], 0.0), 0.0)
        cost = (paid[:, None, None] + (~a) * cost[:, None, :]).reshape(n, -1)
    return value.mean(axis=0), cost.mean(axis=0)


def search_cascades(
    table: OutcomeTable,
    p: FloatMatrix,
    available: BoolMatrix,
    candidates: Sequence[str],
    stats: ModelStats,
    max_rungs: int = 3,
    grid: int = 16,
    on_missing: str = "escalate",
    check: FloatMatrix | None = None,
) -> list[CascadeConfig]:
    """Every list (ordered by training cost) × threshold combination, scored on ``table``
    (``check``: the signal's cost per answer beyond ``table.cost``, paid where it is read)."""
    cols = {m: table.model_index(m) for m in candidates}
    q = np.nan_to_num(table.score)
    c = np.nan_to_num(table.cost)
    k = np.zeros_like(c) if check is None else np.nan_to_num(check)
    fb_col = _fallback_cols(table, available, stats)
    rows = np.arange(table.n_prompts)
    fallback = (q[rows, fb_col], c[rows, fb_col])
    grids = {m: threshold_grid(p[:, cols[m]], grid) for m in candidates}
    out: list[CascadeConfig] = []
    for size in range(1, max_rungs + 1):
        for rungs in itertools.combinations(stats.by_cost(candidates), size):
            idx = [cols[m] for m in rungs]
            gs = [grids[m] for m in rungs[:-1]]
            quality, cost = evaluate_list(
                q[:, idx],
                c[:, idx],
                p[:, idx],
                available[:, idx],
                gs,
                fallback,
                on_missing,
                k[:, idx],
            )
            combos = itertools.product(*[list(g) for g in gs])
            for i, taus in enumerate(combos):
                out.append(
                    CascadeConfig(
                        rungs, (*map(float, taus), 0.0), float(cost[i]), float(quality[i])
                    )
                )
    return out


def best_under_budgets(
    configs: Sequence[CascadeConfig], budgets: FloatVector
) -> list[CascadeConfig]:
    """For each budget, the best-quality config whose validation cost fits (ties: cheaper);
    the cheapest config when none fits."""
    cost = np.array([x.cost for x in configs])
    quality = np.array([x.quality for x in configs])
    order = np.lexsort((cost, -quality))  # best quality first, then cheaper
    picks = []
    for b in budgets:
        fits = order[cost[order] <= b * (1 + 1e-9)]
        picks.append(configs[int(fits[0])] if len(fits) else configs[int(np.argmin(cost))])
    return picks


def _fallback_cols(table: OutcomeTable, available: BoolMatrix, stats: ModelStats) -> IntVector:
    order = np.array([table.model_index(m) for m in stats.by_quality() if m in table.models])
    return np.asarray(order[np.argmax(available[:, order], axis=1)], dtype=np.intp)


@register("policy", "frugalgpt")
class FrugalGPTCascade(Policy):
    """The best cascade per budget, searched on validation data (FrugalGPT).

    Parameters
    ----------
    signal, calibration, by_dataset:
        The deferral signal and how it is calibrated (on the training part).
    max_rungs, max_candidates, grid:
        Search space: list length, models considered, thresholds per rung.
    budgets:
        Mean USD per query to fit cascades for (the knob); default a geometric grid of
        ``n_budgets`` between the cheapest and the dearest single model on validation.
    budget:
        The live operating point (the cascade of the largest fitted budget ≤ ``budget``);
        None: the best validation quality whatever it costs.
    validation_fraction:
        Share of ``train`` held out when ``fit`` gets no validation table.
    """

    knob_name = "budget"

    def __init__(
        self,
        signal: Signal | str = "recorded",
        calibration: str = "isotonic",
        by_dataset: bool = True,
        max_rungs: int = 3,
        max_candidates: int = 8,
        grid: int = 16,
        budgets: Sequence[float] | None = None,
        n_budgets: int = 30,
        budget: float | None = None,
        on_missing: str = "escalate",
        validation_fraction: float = 0.3,
    ) -> None:
        self.signal = signal
        self.calibration = calibration
        self.by_dataset = by_dataset
        self.max_rungs = max_rungs
        self.max_candidates = max_candidates
        self.grid = grid
        self.budgets = budgets
        self.n_budgets = n_budgets
        self.budget = budget
        self.on_missing = on_missing
        self.validation_fraction = validation_fraction

    def fit(self, train: OutcomeTable, validation: OutcomeTable | None = None) -> Self:
        """Calibrate on ``train``, search lists and thresholds on ``validation``."""
        if self.max_rungs < 1 or self.max_candidates < 1 or self.grid < 1:
            raise ValueError("max_rungs, max_candidates and grid must be at least 1")
        if validation is None:
            train, validation = train_validation(train, self.validation_fraction)
        self.stats_ = ModelStats.of(train)
        self.calibrated_ = CalibratedSignal(
            make_signal(self.signal), self.calibration, self.by_dataset
        ).fit(train)
        self.candidates_ = frontier_candidates(self.stats_, self.max_candidates)
        p = self.calibrated_.transform(validation)
        configs = search_cascades(
            validation,
            p,
            validation.known,
            self.candidates_,
            self.stats_,
            self.max_rungs,
            self.grid,
            self.on_missing,
            self.calibrated_.signal.offline_overhead(validation)[0],
        )
        if self.budgets is not None:
            budgets = np.asarray(sorted(self.budgets), dtype=np.float64)
        else:
            singles = validation.mean_cost()
            lo, hi = np.nanmin(singles), np.nanmax(singles)
            budgets = np.geomspace(max(lo, 1e-12), max(hi, lo * 1.0001, 1e-12), self.n_budgets)
        self.budgets_ = budgets
        self.configs_ = best_under_budgets(configs, budgets)
        self.n_searched_ = len(configs)
        return self

    def config_for(self, budget: float | None) -> CascadeConfig:
        """The fitted cascade for a budget (largest fitted budget ≤ it; None: the best)."""
        if budget is None:
            return max(self.configs_, key=lambda x: (x.quality, -x.cost))
        fits = [i for i, b in enumerate(self.budgets_) if b <= budget * (1 + 1e-9)]
        return self.configs_[fits[-1] if fits else 0]

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """Replay the fitted cascade of every budget."""
        p = self.calibrated_.transform(table)
        return [
            (
                float(b),
                ladder_decisions(
                    table,
                    available,
                    p,
                    cfg.rungs,
                    cfg.thresholds,
                    self.stats_,
                    self.calibrated_.signal,
                    self.on_missing,
                ),
            )
            for b, cfg in zip(self.budgets_, self.configs_, strict=True)
        ]

    def start(self, query: Query, allowed: frozenset[str]) -> LiveFlow:
        """The live ladder of the cascade fitted for ``budget``."""
        cfg = self.config_for(self.budget)
        ladder = live_ladder(cfg.rungs, cfg.thresholds, allowed, self.stats_)
        label = self.label or "frugalgpt"
        return (yield from run_ladder(query, ladder, self.calibrated_, self.on_missing, label))

    def explain(self, query: Query, allowed: frozenset[str]) -> Plan:
        """The rungs of the cascade at ``budget``."""
        cfg = self.config_for(self.budget)
        knob = float(self.budget) if self.budget is not None else float("nan")
        return ladder_plan(self.label or "frugalgpt", cfg.rungs, allowed, self.stats_, knob)

    def get_state(self) -> dict[str, Any]:
        """Parameters, fitted cascades per budget and the calibrated signal."""
        return {
            "params": {
                "calibration": self.calibration,
                "by_dataset": self.by_dataset,
                "max_rungs": self.max_rungs,
                "max_candidates": self.max_candidates,
                "grid": self.grid,
                "n_budgets": self.n_budgets,
                "budget": self.budget,
                "on_missing": self.on_missing,
                "validation_fraction": self.validation_fraction,
            },
            "budgets": self.budgets_,
            "configs": [cfg.state() for cfg in self.configs_],
            "candidates": list(self.candidates_),
            "stats": self.stats_.state(),
            "calibrated": self.calibrated_.get_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a fitted FrugalGPT cascade."""
        calibrated = CalibratedSignal.from_state(state["calibrated"])
        obj = cls(signal=calibrated.signal, **state["params"])
        obj.budgets_ = np.asarray(state["budgets"], dtype=np.float64)
        obj.configs_ = [
            CascadeConfig(tuple(c["rungs"]), tuple(c["thresholds"]), c["cost"], c["quality"])
            for c in state["configs"]
        ]
        obj.candidates_ = list(state["candidates"])
        obj.stats_ = ModelStats(**state["stats"])
        obj.calibrated_ = calibrated
        return obj
