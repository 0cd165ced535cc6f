"""Cascade routing: route, read the answer, then route again or stop, by one utility.

Dekoninck, Baader & Vechev, "A Unified Approach to Routing and
Cascading for LLMs" (ICML 2025), Section 5. A *supermodel* ``S`` is a set of models still to
run; with ``b`` the best post-hoc quality among the answers seen (0 before the first), its
value is

    τ(S) = E[ max(b, max_{m ∈ S} X_m) ] − λ · Σ_{m ∈ S} (Ĉ_m + K̂_m) / c̄

where ``X_m`` is the post-hoc quality model ``m``'s answer would show, modelled as normal
around the router's recalibrated estimate (see :class:`GaussianOutlook`). At each step the
policy stops when no option beats stopping (``τ(∅) = b``; at least one model always runs)
and otherwise runs the cheapest model of the best supermodel; the answered model's quality
becomes its calibrated signal ``P_m`` (the outlook's mean when the signal is missing). The
reply is the answer with the highest post-hoc quality. As in the authors' code
(``force_order``), models run in order of training cost, so a supermodel only adds models
dearer than the last one run, and at most ``max_calls`` models run. Adapted: one ``λ`` for
every step (the paper tunes one per step for a budget), qualities are clipped to [0, 1]
inside the expectation, and a step may instead *commit* to one model as the final call
without reading its signal (value ``E[X_m]``, cost ``Ĉ_m``), which matters when the signal
costs a call of its own.

Shared parts (the router, the calibrated signal, the tuning prompts, the cost corrections)
are in :mod:`llmdispatch.policies.composite`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from llmdispatch.data.table import OutcomeTable
from llmdispatch.policies.base import Attempt, Decisions, Plan
from llmdispatch.policies.composite import TIE, Inputs, RouterWithSignal
from llmdispatch.policies.ladder import LiveFlow, NoAnswerError, assess
from llmdispatch.policies.router import DEFAULT_LAMBDAS
from llmdispatch.query import Query
from llmdispatch.registry import register
from llmdispatch.signals.base import Signal
from llmdispatch.signals.calibrated import group_label
from llmdispatch.types import BoolMatrix, FloatMatrix, FloatVector, IntVector


def _phi(z: FloatVector) -> FloatVector:
    return np.asarray(np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi), dtype=np.float64)


def expected_max(floor: FloatVector, mu: FloatMatrix, cov: FloatMatrix) -> FloatVector:
    """``E[max(floor, X_1, …, X_k)]`` per row, ``X ~ N(mu[row], cov)``; ``floor`` may be −inf.

    Clark (1961), "The greatest of a finite set of random variables": the maximum of two
    jointly normal variables has known mean, variance and covariance with a third, and is
    treated as normal to fold in the next one. With ``a² = Var(Y − X)`` and
    ``α = (E Y − E X)/a``: ``E max = μ_Y Φ(α) + μ_X Φ(−α) + a φ(α)``. The floor enters last,
    with the maximum clipped to ``[b, 1]`` (qualities are probabilities; ``b = 0`` for a floor
    of −inf): ``E = b + σ·(G((μ − b)/σ) − G((μ − 1)/σ))`` with ``G(z) = z Φ(z) + φ(z)``.
    """
    from scipy.special import ndtr

    floor = np.asarray(floor, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    n, k = mu.shape
    m_y = mu[:, 0].copy()
    v_y = np.full(n, cov[0, 0])
    c_y = np.tile(cov[0], (n, 1))  # Cov(Y, X_j) for every j
    for j in range(1, k):
        m_x, v_x = mu[:, j], cov[j, j]
        a = np.sqrt(np.maximum(v_y + v_x - 2.0 * c_y[:, j], 1e-18))
        alpha = (m_y - m_x) / a
        up, down, dens = ndtr(alpha), ndtr(-alpha), _phi(alpha)
        first = m_y * up + m_x * down + a * dens
        second = (m_y**2 + v_y) * up + (m_x**2 + v_x) * down + (m_y + m_x) * a * dens
        c_y = c_y * up[:, None] + cov[j][None, :] * down[:, None]
        m_y, v_y = first, np.maximum(second - first**2, 0.0)
    # Qualities are probabilities: the maximum is clipped to [b, 1] (b = 0 before any answer).
    b = np.clip(np.where(np.isfinite(floor), floor, 0.0), 0.0, 1.0)
    sd = np.maximum(np.sqrt(v_y), 1e-12)
    out = b + sd * (_antiderivative((m_y - b) / sd) - _antiderivative((m_y - 1.0) / sd))
    return np.asarray(np.clip(out, b, 1.0), dtype=np.float64)


def _antiderivative(z: FloatVector) -> FloatVector:
    """``G(z) = z·Φ(z) + φ(z)``, so that ``∫_b^1 Φ((μ − t)/σ) dt = σ·(G(z_b) − G(z_1))``."""
    from scipy.special import ndtr

    return np.asarray(z * ndtr(z) + _phi(z), dtype=np.float64)


@dataclass(frozen=True)
class _State:
    """Options reachable from one set of checked answers, valued on every prompt.

    ``options`` are checked supermodels (positions in cost order); ``commits`` the models that
    may run as the final, unchecked call.
    """

    options: tuple[tuple[int, ...], ...]
    value: FloatMatrix  # (n, S): E[max(b, X_S)]
    cost: FloatMatrix  # (n, S): Σ (Ĉ + K̂) / c̄ over the supermodel
    valid: BoolMatrix  # (n, S): every model of the supermodel may run
    best: FloatVector  # (n,): b
    commits: tuple[int, ...] = ()
    commit_value: FloatMatrix = field(default_factory=lambda: np.zeros((0, 0)))  # (n, R)
    commit_cost: FloatMatrix = field(default_factory=lambda: np.zeros((0, 0)))  # (n, R)
    commit_valid: BoolMatrix = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))


@dataclass(frozen=True)
class Steps:
    """What cascade routing did per prompt for one λ: the reply, the models called and the
    models whose answer was checked (the signal read)."""

    final: IntVector
    called: BoolMatrix
    checked: BoolMatrix


class GaussianOutlook:
    """What the answers still to be seen will show: ``X_m ~ N(a_m + b_m·Q̂_m, Σ)`` jointly.

    Per data-set label ``g`` and model ``m``, the post-hoc quality ``P`` is regressed on the
    router's ``Q̂`` on the validation prompts (least squares, slope clipped to ``[0, 2]``):
    the mean is the router's estimate recalibrated to what the signal will say, and ``Σ`` is
    the covariance of the residuals. Taking ``Σ = Cov(P − Q̂)`` instead (the paper's rule)
    counts the router's own noise as information an answer will reveal, which makes extra
    calls look worth more than they are. Labels are shrunk towards the pooled fit with a
    prior weight of ``prior`` prompts; labels with fewer than ``min_group`` prompts, and
    unlabelled live queries, use the pooled fit.
    """

    def __init__(self, prior: float = 50.0, min_group: int = 20) -> None:
        self.prior = prior
        self.min_group = min_group

    @staticmethod
    def _regress(q: FloatMatrix, p: FloatMatrix) -> tuple[FloatVector, FloatVector]:
        """Per column, intercept and slope of ``p`` on ``q`` over rows where ``p`` is known."""
        m = q.shape[1]
        a, b = np.zeros(m), np.ones(m)
        for j in range(m):
            ok = ~np.isnan(p[:, j])
            if ok.sum() < 2:
                continue
            x, y = q[ok, j], p[ok, j]
            var = float(x.var())
            slope = float(((x - x.mean()) * (y - y.mean())).mean() / var) if var > 1e-12 else 0.0
            b[j] = float(np.clip(slope, 0.0, 2.0))
            a[j] = float(y.mean() - b[j] * x.mean())
        return a, b

    @staticmethod
    def _residual_cov(
        q: FloatMatrix, p: FloatMatrix, a: FloatVector, b: FloatVector
    ) -> FloatMatrix:
        r = np.nan_to_num(p - (a + b * q))  # a missing signal reveals nothing: 0
        m = q.shape[1]
        return np.atleast_2d(np.cov(r, rowvar=False)) if len(r) > 1 else np.zeros((m, m))

    def fit(
        self, q: FloatMatrix, p: FloatMatrix, groups: npt.NDArray[np.str_] | None
    ) -> GaussianOutlook:
        """Fit on the router's ``Q̂`` and the calibrated signal ``P`` of validation prompts."""
        self.a_, self.b_ = self._regress(q, p)
        self.cov_ = self._residual_cov(q, p, self.a_, self.b_)
        self.group_: dict[str, tuple[FloatVector, FloatVector, FloatMatrix]] = {}
        if groups is None:
            return self
        for g in np.unique(groups):
            rows = groups == g
            n = int(rows.sum())
            if n < self.min_group:
                continue
            w = n / (n + self.prior)
            a, b = self._regress(q[rows], p[rows])
            a = w * a + (1 - w) * self.a_
            b = w * b + (1 - w) * self.b_
            cov = w * self._residual_cov(q[rows], p[rows], a, b) + (1 - w) * self.cov_
            self.group_[str(g)] = (a, b, cov)
        return self

    def of(self, group: str | None) -> tuple[FloatVector, FloatVector, FloatMatrix]:
        """``(a, b, Σ)`` for a label (``None``: unlabelled, the pooled fit)."""
        if group is not None and group in self.group_:
            return self.group_[group]
        return self.a_, self.b_, self.cov_

    def mean(self, q: FloatMatrix, groups: npt.NDArray[np.str_] | None) -> FloatMatrix:
        """``a + b·Q̂`` clipped to [0, 1], each row by its label."""
        out = np.empty_like(q)
        if groups is None:
            a, b, _ = self.of(None)
            out[:] = a + b * q
        else:
            for g in np.unique(groups):
                rows = groups == g
                a, b, _ = self.of(str(g))
                out[rows] = a + b * q[rows]
        return np.asarray(np.clip(out, 0.0, 1.0), dtype=np.float64)

    def match_realised(
        self,
        q: FloatMatrix,
        p: FloatMatrix,
        score: FloatMatrix,
        groups: npt.NDArray[np.str_] | None,
        max_size: int,
        grid: Sequence[float] = tuple(np.linspace(0.0, 1.0, 11)),
    ) -> GaussianOutlook:
        """Scale each label's ``Σ`` by the ``κ ∈ grid`` whose predicted supermodel values
        ``E[max_{m ∈ S} X_m]`` best match (least squares over every set ``S`` of 2 to
        ``max_size`` models) what replying with the highest ``P`` among ``S`` scored.

        ``P`` is calibrated one model at a time, so the highest of several ``P`` overstates
        the chosen answer's quality (the winner's curse): on ``cascades9`` the mean highest
        ``P`` of two strong models exceeds the realised score by 3 to 5 points. Matching the
        predicted value to the realised one keeps the look-ahead from paying for that.
        """
        mean_all = self.mean(q, groups)
        post_all = np.where(np.isnan(p), mean_all, p)
        m = q.shape[1]
        sets = [
            list(c)
            for k in range(2, max(2, max_size) + 1)
            for c in itertools.combinations(range(m), k)
        ]

        def best_kappa(rows: npt.NDArray[np.bool_], cov: FloatMatrix) -> float:
            mu, post, sc = mean_all[rows], post_all[rows], score[rows]
            floor = np.full(len(mu), -np.inf)
            real = [
                float(sc[np.arange(len(mu)), np.array(s)[post[:, s].argmax(axis=1)]].mean())
                for s in sets
            ]
            errs = []
            for kappa in grid:
                pred = [
                    float(expected_max(floor, mu[:, s], kappa * cov[np.ix_(s, s)]).mean())
                    for s in sets
                ]
                errs.append(float(np.sum((np.array(pred) - np.array(real)) ** 2)))
            return float(grid[int(np.argmin(errs))])

        everything = np.ones(len(q), dtype=bool)
        self.kappa_ = {"": best_kappa(everything, self.cov_)}
        self.cov_ = self.kappa_[""] * self.cov_
        for g, (a, b, cov) in list(self.group_.items()):
            rows = groups == g if groups is not None else everything
            self.kappa_[g] = best_kappa(rows, cov)
            self.group_[g] = (a, b, self.kappa_[g] * cov)
        return self

    @classmethod
    def fixed(cls, cov: FloatMatrix) -> GaussianOutlook:
        """``X ~ N(Q̂, cov)`` for every label (hand-built policies, tests)."""
        obj = cls()
        m = len(cov)
        obj.a_, obj.b_ = np.zeros(m), np.ones(m)
        obj.cov_ = np.asarray(cov, dtype=np.float64)
        obj.group_ = {}
        return obj

    def state(self) -> dict[str, Any]:
        """JSON-able state (arrays allowed)."""
        return {
            "prior": self.prior,
            "min_group": self.min_group,
            "a": self.a_,
            "b": self.b_,
            "cov": self.cov_,
            "groups": {g: {"a": a, "b": b, "cov": c} for g, (a, b, c) in self.group_.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> GaussianOutlook:
        """Rebuild from :meth:`state`."""

        def arr(x: Any) -> FloatVector:
            return np.asarray(x, dtype=np.float64)

        obj = cls(float(state["prior"]), int(state["min_group"]))
        obj.a_, obj.b_ = arr(state["a"]), arr(state["b"])
        obj.cov_ = np.atleast_2d(arr(state["cov"]))
        obj.group_ = {
            g: (arr(v["a"]), arr(v["b"]), np.atleast_2d(arr(v["cov"])))
            for g, v in state["groups"].items()
        }
        return obj


@register("policy", "cascade-routing")
class CascadeRouting(RouterWithSignal):
    """Cascade routing (Dekoninck et al., ICML 2025): route, read the answer, route again or
    stop, by one utility over supermodels (module docstring).

    The post-hoc qualities still to be seen are jointly normal, ``X ~ N(a + b·Q̂, Σ)`` per
    data-set label (:class:`GaussianOutlook`, fitted on the tuning prompts); once some answers
    are seen, the others are conditioned on them (the Gaussian update
    ``μ_r + Σ_rs Σ_ss⁻¹ (P_s − μ_s)``, so a hard question for one model lowers the outlook for
    the next), and supermodel values use Clark's approximation (:func:`expected_max`). The
    authors' code likewise fits covariances of the estimates' errors per set of answered
    models.

    Reading an answer's signal may cost a call of its own (``cascades9``'s self-checks cost
    about as much as the answer). Adapted from the paper, which reads every answer: besides
    the checked supermodels, each step may *commit* to one model as the final, unchecked call
    (value ``E[X_m | answers seen]``, cost ``Ĉ_m`` without ``K̂_m``), so the family holds the
    plain router (commit at the first step) and cascades whose last rung is not checked.

    Parameters
    ----------
    estimator, encoder, router_params:
        The router that gives ``Q̂`` and ``Ĉ`` (see :class:`~llmdispatch.policies.router.Router`).
    signal, calibration, by_dataset:
        The answer signal and its calibration (see :class:`CalibratedSignal`).
    lam, lambdas:
        The live λ and the values ``sweep`` replays.
    max_calls:
        Most models run per query.
    uncertainty:
        Model what an answer may reveal (``Σ``, the paper's rule); ``False`` sets ``Σ = 0``,
        so a call is only worth it when its ex-ante estimate beats the best answer so far.
    commit:
        Allow the final, unchecked call (see above); ``False`` is the paper's rule.
    label_costs:
        Rescale ``Ĉ`` per data-set label (:class:`LabelCosts`).
    tune_folds:
        Cross-fitting folds that add the training prompts to the tuning prompts (0: tune on
        the validation split alone).
    """

    knob_name: ClassVar[str] = "lambda"

    def __init__(
        self,
        estimator: str = "knn",
        encoder: str = "tfidf",
        router_params: dict[str, Any] | None = None,
        signal: Signal | str = "recorded",
        calibration: str = "isotonic",
        by_dataset: bool = True,
        lam: float = 0.0,
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,
        validation_fraction: float = 0.25,
        max_calls: int = 3,
        uncertainty: bool = True,
        commit: bool = True,
        label_costs: bool = True,
        tune_folds: int = 5,
        value_calibration: bool = True,
    ) -> None:
        super().__init__(
            estimator,
            encoder,
            router_params,
            signal,
            calibration,
            by_dataset,
            lam,
            lambdas,
            validation_fraction,
            label_costs,
            tune_folds,
        )
        if max_calls < 1:
            raise ValueError("max_calls must be at least 1")
        self.max_calls = max_calls
        self.uncertainty = uncertainty
        self.commit = commit
        self.value_calibration = value_calibration

    def _tune(self, table: OutcomeTable, x: Inputs) -> None:
        """Order models by training cost; fit the outlook on the tuning prompts."""
        order = self.stats_.by_cost()
        self.order_ = np.array([self.models_.index(m) for m in order], dtype=np.intp)
        self.outlook_ = GaussianOutlook().fit(x.Q, x.P, x.groups)
        if self.uncertainty and self.value_calibration:
            self.outlook_.match_realised(
                x.Q, x.P, np.nan_to_num(table.score), x.groups, self.max_calls
            )
        if not self.uncertainty:
            m = len(self.models_)
            self.outlook_.cov_ = np.zeros((m, m))
            self.outlook_.group_ = {
                g: (a, b, np.zeros((m, m))) for g, (a, b, _) in self.outlook_.group_.items()
            }

    @property
    def cov_(self) -> FloatMatrix:
        """The pooled covariance of ``P − Q̂`` (model order)."""
        return self.outlook_.cov_

    # ---- the rule -----------------------------------------------------------------------
    def _state(
        self,
        run: tuple[int, ...],
        mu: FloatMatrix,
        post: FloatMatrix,
        cost: FloatMatrix,
        commit_cost: FloatMatrix,
        open_: BoolMatrix,
        cov_model: FloatMatrix,
    ) -> _State:
        """Every option after the models at positions ``run`` answered (and were checked).

        ``mu``, ``post``, ``cost`` (a checked call), ``commit_cost`` (an unchecked call) and
        ``open_`` are in cost order (columns = positions); ``post`` holds the answered models'
        post-hoc qualities, ``open_`` the models that may still run; ``cov_model`` is ``Σ`` in
        model order.
        """
        n, m = mu.shape
        cov = cov_model[np.ix_(self.order_, self.order_)]
        seen = list(run)
        start = run[-1] + 1 if run else 0
        rest = list(range(start, m))
        mean = mu.copy()
        cond = cov
        if seen and rest:
            s_ss = cov[np.ix_(seen, seen)] + 1e-9 * np.eye(len(seen))
            gain = np.linalg.solve(s_ss, cov[np.ix_(seen, rest)])  # (|s|, |r|)
            mean[:, rest] = mu[:, rest] + (post[:, seen] - mu[:, seen]) @ gain
            cond = cov.copy()
            cond[np.ix_(rest, rest)] = cov[np.ix_(rest, rest)] - cov[np.ix_(rest, seen)] @ gain
        best = post[:, seen].max(axis=1) if seen else np.full(n, -np.inf)
        options = [
            combo
            for size in range(1, self.max_calls - len(run) + 1)
            for combo in itertools.combinations(rest, size)
        ]
        value = np.empty((n, len(options)))
        total = np.empty((n, len(options)))
        valid = np.empty((n, len(options)), dtype=bool)
        for s, combo in enumerate(options):
            cols = list(combo)
            value[:, s] = expected_max(best, mean[:, cols], cond[np.ix_(cols, cols)])
            total[:, s] = cost[:, cols].sum(axis=1)
            valid[:, s] = open_[:, cols].all(axis=1)
        commits = tuple(rest) if self.commit else ()
        cols = list(commits)
        return _State(
            tuple(options),
            value,
            total,
            valid,
            best,
            commits,
            np.clip(mean[:, cols], 0.0, 1.0),
            commit_cost[:, cols],
            open_[:, cols],
        )

    @staticmethod
    def _choose(
        state: _State, rows: IntVector, lam: float, answered: bool
    ) -> tuple[IntVector, BoolMatrix]:
        """Per row: the position to run next (−1: stop) and whether it is a final commit.

        A checked supermodel wins ties with a commit (it learns more for the same price).
        """
        n = len(rows)
        top = np.full(n, -np.inf)
        first = np.full(n, -1, dtype=np.intp)
        if state.options:
            c = state.cost[rows]
            tau = np.where(state.valid[rows], state.value[rows] - (lam + TIE) * c, -np.inf)
            pick = tau.argmax(axis=1)
            top = tau[np.arange(n), pick]
            first = np.array([opt[0] for opt in state.options], dtype=np.intp)[pick]
        commit = np.zeros(n, dtype=bool)
        if state.commits:
            c = state.commit_cost[rows]
            tau = np.where(
                state.commit_valid[rows], state.commit_value[rows] - (lam + TIE) * c, -np.inf
            )
            pick = tau.argmax(axis=1)
            best_commit = tau[np.arange(n), pick]
            commit = best_commit > top + 1e-12
            first = np.where(commit, np.asarray(state.commits, dtype=np.intp)[pick], first)
            top = np.maximum(top, best_commit)
        stop = ~np.isfinite(top)
        if answered:
            stop |= state.best[rows] >= top
        return np.where(stop, -1, first).astype(np.intp), commit & ~stop

    def _row_outlook(
        self, groups: npt.NDArray[np.str_] | None, n: int
    ) -> list[tuple[str | None, IntVector, FloatMatrix]]:
        """Rows grouped by label, with each group's ``Σ``."""
        if groups is None:
            return [(None, np.arange(n), self.outlook_.of(None)[2])]
        return [
            (str(g), np.flatnonzero(groups == g), self.outlook_.of(str(g))[2])
            for g in np.unique(groups)
        ]

    def decide(self, x: Inputs, available: BoolMatrix, lambdas: Sequence[float]) -> list[Steps]:
        """What happens on every prompt for each λ (states are shared across λ).

        A prompt's state is its label and the set of positions run and checked so far, coded
        as a bit mask.
        """
        n, m = x.Q.shape
        order = self.order_
        parts = self._row_outlook(x.groups, n)
        expected = self.outlook_.mean(x.Q, x.groups)
        mu = expected[:, order]
        post = np.where(np.isnan(x.P), expected, x.P)[:, order]
        cost = (x.C + x.K)[:, order] / self.scale
        commit_cost = x.C[:, order] / self.scale
        avail = available[:, order]
        bits = 1 << np.arange(m, dtype=np.int64)
        cache: dict[tuple[str | None, int], _State] = {}
        out = []
        for lam in lambdas:
            codes = np.zeros(n, dtype=np.int64)
            final_commit = np.full(n, -1, dtype=np.intp)
            active = np.array(avail.any(axis=1), dtype=bool)
            for _step in range(self.max_calls):
                if not active.any():
                    break
                nxt = np.full(n, -1, dtype=np.intp)
                com = np.zeros(n, dtype=bool)
                for group, members, cov in parts:
                    here = np.zeros(n, dtype=bool)
                    here[members] = True
                    here &= active
                    for code in np.unique(codes[here]).tolist():
                        rows = np.flatnonzero(here & (codes == code))
                        key = (group, code)
                        if key not in cache:
                            run = tuple(int(b) for b in np.flatnonzero(code & bits))
                            cache[key] = self._state(run, mu, post, cost, commit_cost, avail, cov)
                        nxt[rows], com[rows] = self._choose(cache[key], rows, lam, code != 0)
                go = nxt >= 0
                check = go & ~com
                codes[check] |= bits[nxt[check]]
                final_commit[go & com] = nxt[go & com]
                active = check
            ran = (codes[:, None] & bits[None, :]) != 0  # checked, in cost order
            best_seen = np.where(ran, post, -np.inf).argmax(axis=1)
            final_pos = np.where(final_commit >= 0, final_commit, best_seen)
            called_pos = ran.copy()
            hit = np.flatnonzero(final_commit >= 0)
            called_pos[hit, final_commit[hit]] = True
            called = np.zeros((n, m), dtype=bool)
            checked = np.zeros((n, m), dtype=bool)
            called[:, order] = called_pos
            checked[:, order] = ran
            out.append(Steps(np.asarray(order[final_pos], dtype=np.intp), called, checked))
        return out

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """One replay per λ from the recorded signals; checks are paid where read."""
        x = self.inputs(table)
        out = []
        for lam, steps in zip(self.lambdas, self.decide(x, available, self.lambdas), strict=True):
            d = Decisions(
                final=steps.final,
                called=steps.called,
                overhead_cost=(x.check_cost * steps.checked).sum(axis=1),
                overhead_latency_ms=(x.check_latency * steps.checked).sum(axis=1),
            )
            out.append((lam, d))
        return out

    def _live_estimates(self, query: Query) -> tuple[FloatVector, FloatVector, FloatVector]:
        """``E[X]`` (the outlook's mean), the cost of a checked call (``Ĉ + K̂``) and of an
        unchecked one."""
        label = query.metadata.get("dataset")
        q = self.router_.quality([query])
        c = self._live_cost(query)
        k = self.checks_.expected([label])[0]
        group = group_label(label)
        groups = None if group is None else np.array([group])
        return self.outlook_.mean(q, groups)[0], c + k, c

    def _live_next(
        self,
        query: Query,
        estimates: tuple[FloatVector, FloatVector, FloatVector],
        answers: dict[int, float],
        open_: list[bool],
        lam: float,
    ) -> tuple[int, bool]:
        """Position of the next model to run live (−1: stop) and whether it is a commit."""
        q, c, c_commit = estimates
        order = self.order_
        post = q[order].copy()
        for pos, p in answers.items():
            post[pos] = p
        label = query.metadata.get("dataset")
        group = group_label(label)
        state = self._state(
            tuple(sorted(answers)),
            q[order][None, :],
            post[None, :],
            (c[order] / self.scale)[None, :],
            (c_commit[order] / self.scale)[None, :],
            np.array([open_], dtype=bool),
            self.outlook_.of(group)[2],
        )
        nxt, commit = self._choose(state, np.array([0]), lam, bool(answers))
        return int(nxt[0]), bool(commit[0])

    def start(self, query: Query, allowed: frozenset[str]) -> LiveFlow:
        """Live: run the cheapest model of the best supermodel and read its signal, or make
        the final unchecked call, or stop; repeat."""
        label = self.label or "cascade-routing"
        estimates = self._live_estimates(query)
        q = estimates[0]
        names: list[str] = [self.models_[j] for j in self.order_]
        open_ = [name in allowed for name in names]
        if not any(open_):
            raise NoAnswerError(f"{label}: none of its models is allowed for this request")
        answers: dict[int, float] = {}
        options = self.calibrated_.signal.request_options()
        error: Exception | None = None
        while len(answers) < self.max_calls:
            pos, commit = self._live_next(query, estimates, answers, open_, self.lam)
            if pos < 0:
                break
            model = names[pos]
            open_[pos] = False
            try:
                answer = yield Attempt(
                    model=model,
                    options={} if commit else dict(options),
                    reason=f"{label}: final, unchecked" if commit else label,
                )
            except Exception as exc:  # the call failed: decide again without this model
                error = exc
                continue
            if commit:
                return model
            p = yield from assess(self.calibrated_, query, answer)
            answers[pos] = float(q[self.order_[pos]]) if math.isnan(p) else p
        if not answers:
            raise NoAnswerError(f"{label}: every call failed") from error
        reply = max(sorted(answers), key=lambda k: answers[k])
        return names[reply]

    def explain(self, query: Query, allowed: frozenset[str]) -> Plan:
        """The first model cascade routing runs, with the router's per-model figures."""
        names = [self.models_[j] for j in self.order_]
        pos, _ = self._live_next(
            query, self._live_estimates(query), {}, [n in allowed for n in names], self.lam
        )
        if pos < 0:
            raise NoAnswerError("cascade-routing: none of its models is allowed")
        cands = self._candidates(query, allowed)
        return Plan(self.label or "cascade-routing", names[pos], tuple(cands), self.lam)

    def _params(self) -> dict[str, Any]:
        return {
            **super()._params(),
            "max_calls": self.max_calls,
            "uncertainty": self.uncertainty,
            "commit": self.commit,
            "value_calibration": self.value_calibration,
        }

    def _tuned_state(self) -> dict[str, Any]:
        return {"order": self.order_, "outlook": self.outlook_.state()}

    def _restore_tuned(self, state: dict[str, Any]) -> None:
        self.order_ = np.asarray(state["order"], dtype=np.intp)
        self.outlook_ = GaussianOutlook.from_state(state["outlook"])
