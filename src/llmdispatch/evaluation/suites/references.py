"""Reference policies every report shows: the zero router, random routing and the oracle.

* ``zero-router`` (RouterBench): for each pair of neighbouring models on the single models'
  non-decreasing convex hull, send each query to the dearer one with probability ``p``
  (seeded); sweeping ``p`` walks the hull. It never looks at the query.
* ``random``: each query to a uniformly random model (one point), then random mixing of the
  cheapest and the most expensive model at every share (a line between them).
* ``oracle``: per query, the cheapest model with the best score; its curve sweeps
  ``argmax score − λ·cost/c̄`` per prompt (the best any router could do at each cost).
  It reads the scores it is judged on: a bound, not a policy.

Single models are not a policy here: reports compute their points from the table directly.
"""

from __future__ import annotations

import itertools
from typing import ClassVar

import numpy as np

from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.hull import nondecreasing_hull
from llmdispatch.evaluation.suites import benchmark_policy
from llmdispatch.policies.base import Decisions, Policy
from llmdispatch.policies.router import DEFAULT_LAMBDAS
from llmdispatch.types import BoolMatrix, IntVector


def _means(table: OutcomeTable, available: BoolMatrix) -> tuple[np.ndarray, np.ndarray]:
    cost = np.where(available, table.cost, np.nan)
    with np.errstate(invalid="ignore"):
        return np.nanmean(cost, axis=0), available.mean(axis=0)


class _Reference(Policy):
    """Base: learns per-model mean cost and quality on the training table."""

    def fit(self, train: OutcomeTable, validation: OutcomeTable | None = None) -> _Reference:
        """Single models' mean cost and quality on ``train`` (what a blind mixer knows)."""
        self.models_ = tuple(train.models)
        self.quality_ = np.nan_to_num(train.mean_score(), nan=0.0)
        self.cost_ = np.nan_to_num(train.mean_cost(), nan=0.0)
        return self

    def _fallback(self, choice: IntVector, available: BoolMatrix) -> IntVector:
        """Where the chosen model has no outcome, the cheapest available one answers."""
        rows = np.arange(len(choice))
        bad = ~available[rows, choice]
        if bad.any():
            cheap = np.where(available, self.cost_[None, :], np.inf).argmin(axis=1)
            choice = np.where(bad, cheap, choice)
        return np.asarray(choice, dtype=np.intp)


class ZeroRouter(_Reference):
    """Random mixing of neighbouring models on the single models' hull (query-blind)."""

    knob_name: ClassVar[str] = "share"

    def __init__(self, steps: int = 6, seed: int = 0) -> None:
        self.steps = steps
        self.seed = seed

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """Points along the training hull, position = index of segment + mixing share."""
        hull = nondecreasing_hull(self.cost_, self.quality_)
        vertices = [
            int(np.flatnonzero((self.cost_ == c) & (self.quality_ == q))[0])
            for c, q in zip(hull.cost, hull.quality, strict=True)
        ]
        rng = np.random.default_rng(self.seed)
        u = rng.random(table.n_prompts)
        out: list[tuple[float, Decisions]] = []
        n = table.n_prompts
        for s, (a, b) in enumerate(itertools.pairwise(vertices)):
            for p in np.linspace(0.0, 1.0, self.steps, endpoint=False):
                choice = np.where(u < p, b, a).astype(np.intp)
                mixed = Decisions.routed(self._fallback(choice, available), table.n_models)
                out.append((s + p, mixed))
        last = np.full(n, vertices[-1], dtype=np.intp)
        final = Decisions.routed(self._fallback(last, available), table.n_models)
        out.append((len(vertices) - 1.0, final))
        return out


class RandomRouter(_Reference):
    """A uniformly random model per query, and random cheapest/dearest mixing."""

    knob_name: ClassVar[str] = "share"

    def __init__(self, steps: int = 11, seed: int = 0) -> None:
        self.steps = steps
        self.seed = seed

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """Share of dearest-model calls from 0 to 1, plus the uniform point (knob −1)."""
        rng = np.random.default_rng(self.seed)
        n, m = table.n_prompts, table.n_models
        uniform = rng.integers(0, m, size=n).astype(np.intp)
        out = [(-1.0, Decisions.routed(self._fallback(uniform, available), m))]
        cheap, dear = int(np.argmin(self.cost_)), int(np.argmax(self.cost_))
        u = rng.random(n)
        for p in np.linspace(0.0, 1.0, self.steps):
            choice = np.where(u < p, dear, cheap).astype(np.intp)
            out.append((float(p), Decisions.routed(self._fallback(choice, available), m)))
        return out


class Oracle(_Reference):
    """Per query the cheapest model with the best score (reads the scores: a bound)."""

    needs_scores: ClassVar[bool] = True

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """``argmax score − λ·cost/c̄`` per prompt for every λ (λ = 0: the oracle point)."""
        score = np.where(available, table.score, -np.inf)
        cost = np.where(np.isnan(table.cost), 0.0, table.cost)
        scale = max(float(np.nanmax(self.cost_)), 1e-12)
        out = []
        for lam in DEFAULT_LAMBDAS:
            utility = score - lam * cost / scale - 1e-9 * cost / scale
            out.append((lam, Decisions.routed(utility.argmax(axis=1), table.n_models)))
        return out


@benchmark_policy("zero-router", family="reference")
def zero_router() -> Policy:
    """The zero router."""
    return ZeroRouter()


@benchmark_policy("random", family="reference")
def random_router() -> Policy:
    """Random routing."""
    return RandomRouter()


@benchmark_policy("oracle", family="reference")
def oracle() -> Policy:
    """The oracle bound."""
    return Oracle()


__all__ = ["Oracle", "RandomRouter", "ZeroRouter"]
