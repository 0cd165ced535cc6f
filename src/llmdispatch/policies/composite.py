"""Compositions of a router and a cascade: router→cascade and cascade routing.

Both use a fitted :class:`~llmdispatch.policies.router.Router` for the ex-ante quality
``Q̂[x, m]`` and expected cost ``Ĉ[x, m]`` of every model, and a calibrated answer signal
(:class:`~llmdispatch.signals.calibrated.CalibratedSignal`) for the post-hoc quality ``P`` of
an answer once it is seen. Costs enter utilities as ``Ĉ / c̄`` (the router's unit-free scale).

``router-cascade`` — the router picks the entry model, ``argmax Q̂ − λ_e·Ĉ/c̄`` over all
models; from there a ladder (models ordered by training cost) escalates to its rungs dearer
than the entry, accepting an answer when its calibrated signal is at least ``τ``
(:mod:`.ladder`'s rule: the last rung answers unchecked, a missing signal escalates). The
family holds the router itself (``τ = 0``) and the plain cascade (``λ_e = ∞``: enter at the
ladder's cheapest rung). For every knob ``λ`` the entry ``λ_e``, the ladder (a subset of the
training cost–quality front ending with its strongest model) and ``τ`` are chosen on the
validation split to maximise mean quality ``− λ ·`` mean cost ``/ c̄`` (checks included).

``cascade-routing`` — Dekoninck, Baader & Vechev, "A Unified Approach to Routing and
Cascading for LLMs" (ICML 2025), Section 5. A *supermodel* ``S`` is a set of models still to
run; with ``b`` the best post-hoc quality among the answers seen (0 before the first), its
value is

    τ(S) = E[ max(b, max_{m ∈ S} X_m) ] − λ · Σ_{m ∈ S} Ĉ_m / c̄

where ``X_m`` is the post-hoc quality model ``m``'s answer would show, modelled as normal
around the router's estimate (see :class:`CascadeRouting`). At each step the policy stops when
no supermodel beats stopping (``τ(∅) = b``; at least one model always runs) and otherwise
runs the cheapest model of the best supermodel; the answered model's quality becomes its
calibrated signal ``P_m`` (``Q̂_m`` when the signal is missing). The reply is the answer with
the highest post-hoc quality. As in the authors' code (``force_order``), models run in order
of training cost, so a supermodel only adds models dearer than the last one run, and at most
``max_calls`` models run. Adapted: one ``λ`` for every step (the paper tunes one per step
for a budget), and qualities are clipped to [0, 1] inside the expectation.

Both replay exactly offline from the recorded signals (``sweep`` over ``λ``) and run live
through ``start``; verification calls of a signal are paid wherever an answer is assessed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from llmdispatch.artifacts import component_state, restore
from llmdispatch.data.splits import train_validation
from llmdispatch.data.table import OutcomeTable
from llmdispatch.policies.base import Attempt, Candidate, Decisions, Plan, Policy
from llmdispatch.policies.cascade import ModelStats, ladder_decisions, live_ladder, make_signal
from llmdispatch.policies.cascade_fit import pareto_front
from llmdispatch.policies.ladder import LiveFlow, NoAnswerError, assess, run_ladder
from llmdispatch.policies.router import Router
from llmdispatch.query import Query
from llmdispatch.registry import register
from llmdispatch.signals.base import Signal
from llmdispatch.signals.calibrated import CalibratedSignal, group_labels
from llmdispatch.types import BoolMatrix, FloatMatrix, FloatVector, IntVector

#: Unit-free λ values swept offline (as the router's, over the range where choices change).
LAMBDAS: tuple[float, ...] = (0.0, *np.geomspace(1e-3, 1e2, 31).round(6).tolist())
#: Thresholds on the calibrated signal tried for the router→cascade ladder.
TAUS: tuple[float, ...] = tuple(np.round(np.linspace(0.3, 0.95, 14), 3).tolist())
#: Tie-break: among equal utilities the cheaper option wins.
_TIE = 1e-9


@dataclass(frozen=True)
class Inputs:
    """What a composition needs per (prompt, model): ``Q̂``, ``Ĉ``, the expected cost ``K̂``
    of reading the signal (known before the call), the calibrated signal, and the signal's
    actual cost and latency (verification calls beyond the table's)."""

    Q: FloatMatrix
    C: FloatMatrix
    K: FloatMatrix
    P: FloatMatrix
    check_cost: FloatMatrix
    check_latency: FloatMatrix


class CheckCostModel:
    """Expected cost of reading an answer's signal, per model and data-set label.

    The training mean of the signal's overhead (a self-check or judge call; 0 for signals
    read from the answer itself) per (label, model), the per-model mean for unseen labels and
    for live queries without a ``"dataset"`` label in their metadata.
    """

    def fit(self, table: OutcomeTable, signal: Signal) -> CheckCostModel:
        """Means of ``signal.offline_overhead`` on ``table``."""
        extra = np.nan_to_num(signal.offline_overhead(table)[0])
        groups = group_labels(table.datasets)
        self.models_ = tuple(table.models)
        self.model_ = {m: float(extra[:, j].mean()) for j, m in enumerate(table.models)}
        self.group_ = {
            str(g): {m: float(extra[groups == g, j].mean()) for j, m in enumerate(table.models)}
            for g in np.unique(groups)
        }
        return self

    def expected(self, labels: Sequence[str | None]) -> FloatMatrix:
        """``K̂`` for rows with these data-set labels (``None``: unlabelled)."""
        out = np.empty((len(labels), len(self.models_)))
        for i, label in enumerate(labels):
            group = str(label).split("/", 1)[0] if label else None
            means = self.group_.get(group, self.model_) if group is not None else self.model_
            out[i] = [means[m] for m in self.models_]
        return out

    def state(self) -> dict[str, Any]:
        """JSON-able state."""
        return {"models": list(self.models_), "model": self.model_, "group": self.group_}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CheckCostModel:
        """Rebuild from :meth:`state`."""
        obj = cls()
        obj.models_ = tuple(state["models"])
        obj.model_ = {k: float(v) for k, v in state["model"].items()}
        obj.group_ = {g: {k: float(v) for k, v in d.items()} for g, d in state["group"].items()}
        return obj


class _RouterWithSignal(Policy):
    """Shared parts: a fitted router, a calibrated answer signal, and a λ knob."""

    def __init__(
        self,
        estimator: str = "knn",
        encoder: str = "tfidf",
        router_params: dict[str, Any] | None = None,
        signal: Signal | str = "recorded",
        calibration: str = "isotonic",
        by_dataset: bool = True,
        lam: float = 0.0,
        lambdas: Sequence[float] = LAMBDAS,
        validation_fraction: float = 0.25,
    ) -> None:
        if lam < 0 or not lambdas or min(lambdas) < 0:
            raise ValueError("lam and lambdas must be >= 0 (and lambdas non-empty)")
        self.estimator = estimator
        self.encoder = encoder
        self.router_params = dict(router_params or {})
        self.signal = signal
        self.calibration = calibration
        self.by_dataset = by_dataset
        self.lam = lam
        self.lambdas = tuple(float(v) for v in lambdas)
        self.validation_fraction = validation_fraction

    # ---- fitting ------------------------------------------------------------------------
    def fit(self, train: OutcomeTable, validation: OutcomeTable | None = None) -> Self:
        """Fit the router and the calibrated signal on ``train``; tune on ``validation``."""
        if validation is None:
            train, validation = train_validation(train, self.validation_fraction)
        self.router_ = Router(
            estimator=self.estimator, encoder=self.encoder, **self.router_params
        ).fit(train)
        self.calibrated_ = CalibratedSignal(
            make_signal(self.signal), self.calibration, self.by_dataset
        ).fit(train)
        self.models_ = tuple(train.models)
        self.stats_ = ModelStats.of(train)
        self.checks_ = CheckCostModel().fit(train, self.calibrated_.signal)
        self._tune(validation)
        return self

    def _tune(self, validation: OutcomeTable) -> None:
        """What the composition learns on the validation split."""

    def inputs(self, table: OutcomeTable) -> Inputs:
        """``Q̂``, ``Ĉ``, the calibrated signal and its overhead for every prompt of ``table``."""
        extra_cost, extra_latency = self.calibrated_.signal.offline_overhead(table)
        return Inputs(
            Q=self.router_.quality_table(table),
            C=self.router_.costs_.for_table(table),
            K=self.checks_.expected([str(d) for d in table.datasets]),
            P=self.calibrated_.transform(table),
            check_cost=extra_cost,
            check_latency=extra_latency,
        )

    @property
    def scale(self) -> float:
        """The router's cost scale ``c̄``."""
        return float(self.router_.cost_scale_)

    def _candidates(self, query: Query, allowed: frozenset[str]) -> list[Candidate]:
        q = self.router_.quality([query])[0]
        c = self.router_.expected_cost([query])[0]
        out = []
        for j, m in enumerate(self.models_):
            why = None if m in allowed else "not allowed for this request"
            utility = float(q[j] - self.lam * c[j] / self.scale)
            out.append(Candidate(m, float(q[j]), float(c[j]), utility, why))
        return sorted(out, key=lambda x: (x.excluded is not None, -x.utility, x.cost))

    # ---- persistence ----------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "encoder": self.encoder,
            "router_params": self.router_params,
            "calibration": self.calibration,
            "by_dataset": self.by_dataset,
            "lam": self.lam,
            "lambdas": list(self.lambdas),
            "validation_fraction": self.validation_fraction,
        }

    def _tuned_state(self) -> dict[str, Any]:
        return {}

    def _restore_tuned(self, state: dict[str, Any]) -> None:
        """Set what :meth:`_tune` learned from :meth:`_tuned_state`."""

    def get_state(self) -> dict[str, Any]:
        """Parameters, the fitted router, the calibrated signal and what was tuned."""
        return {
            "params": self._params(),
            "router": component_state(self.router_),
            "calibrated": self.calibrated_.get_state(),
            "models": list(self.models_),
            "stats": self.stats_.state(),
            "checks": self.checks_.state(),
            "tuned": self._tuned_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        calibrated = CalibratedSignal.from_state(state["calibrated"])
        obj = cls(signal=calibrated.signal, **state["params"])
        obj.router_ = restore(state["router"])
        obj.calibrated_ = calibrated
        obj.models_ = tuple(state["models"])
        obj.stats_ = ModelStats(**state["stats"])
        obj.checks_ = CheckCostModel.from_state(state["checks"])
        obj._restore_tuned(state["tuned"])
        return obj


# ---- cascade routing ------------------------------------------------------------------------
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
    """Supermodels reachable from one set of answered models, valued on every prompt."""

    options: tuple[tuple[int, ...], ...]  # positions (in cost order) of each supermodel
    value: FloatMatrix  # (n, S): E[max(b, X_S)]
    cost: FloatMatrix  # (n, S): Σ Ĉ / c̄ over the supermodel
    valid: BoolMatrix  # (n, S): every model of the supermodel may run
    best: FloatVector  # (n,): b


@register("policy", "cascade-routing")
class CascadeRouting(_RouterWithSignal):
    """Cascade routing (Dekoninck et al., ICML 2025): route, read the answer, route again or
    stop, by one utility over supermodels (module docstring).

    The post-hoc qualities still to be seen are jointly normal around the router's
    estimates, ``X ~ N(Q̂, Σ)`` with ``Σ`` the covariance of ``P − Q̂`` on the validation
    split; once some answers are seen, the others are conditioned on them (the Gaussian
    update ``Q̂_r + Σ_rs Σ_ss⁻¹ (P_s − Q̂_s)``, so a hard question for one model lowers the
    outlook for the next), and supermodel values use Clark's approximation
    (:func:`expected_max`). The authors' code likewise fits covariances of the estimates'
    errors per set of answered models.

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
        lambdas: Sequence[float] = LAMBDAS,
        validation_fraction: float = 0.25,
        max_calls: int = 3,
        uncertainty: bool = True,
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
        )
        if max_calls < 1:
            raise ValueError("max_calls must be at least 1")
        self.max_calls = max_calls
        self.uncertainty = uncertainty

    def _tune(self, validation: OutcomeTable) -> None:
        """Order models by training cost; ``Σ`` = covariance of ``P − Q̂`` on validation."""
        order = self.stats_.by_cost()
        self.order_ = np.array([self.models_.index(m) for m in order], dtype=np.intp)
        m = len(self.models_)
        cov = np.zeros((m, m))
        if self.uncertainty:
            x = self.inputs(validation.blind())
            diff = np.nan_to_num(x.P - x.Q)  # a missing signal reveals nothing: 0
            if len(diff) > 1:
                cov = np.atleast_2d(np.cov(diff, rowvar=False))
        self.cov_ = cov

    # ---- the rule -----------------------------------------------------------------------
    def _state(
        self,
        run: tuple[int, ...],
        mu: FloatMatrix,
        post: FloatMatrix,
        cost: FloatMatrix,
        open_: BoolMatrix,
    ) -> _State:
        """Every supermodel reachable after the models at positions ``run`` answered.

        ``mu``, ``post``, ``cost`` and ``open_`` are in cost order (columns = positions);
        ``post`` holds the answered models' post-hoc qualities, ``open_`` the models that may
        still run.
        """
        n, m = mu.shape
        cov = self.cov_[np.ix_(self.order_, self.order_)]
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
        return _State(tuple(options), value, total, valid, best)

    @staticmethod
    def _choose(state: _State, rows: IntVector, lam: float, answered: bool) -> IntVector:
        """Per row: the position to run next, or −1 to stop."""
        if not state.options:
            return np.full(len(rows), -1, dtype=np.intp)
        c = state.cost[rows]
        tau = np.where(state.valid[rows], state.value[rows] - (lam + _TIE) * c, -np.inf)
        pick = tau.argmax(axis=1)
        top = tau[np.arange(len(rows)), pick]
        first = np.array([opt[0] for opt in state.options], dtype=np.intp)[pick]
        stop = ~np.isfinite(top)
        if answered:
            stop |= state.best[rows] >= top
        return np.where(stop, -1, first).astype(np.intp)

    def decide(
        self, x: Inputs, available: BoolMatrix, lambdas: Sequence[float]
    ) -> list[tuple[IntVector, BoolMatrix]]:
        """Final model and called mask per prompt for each λ (states are shared across λ).

        A prompt's state is the set of positions run so far, coded as a bit mask.
        """
        n, m = x.Q.shape
        order = self.order_
        mu = x.Q[:, order]
        post = np.where(np.isnan(x.P), x.Q, x.P)[:, order]
        cost = (x.C + x.K)[:, order] / self.scale
        avail = available[:, order]
        bits = 1 << np.arange(m, dtype=np.int64)
        cache: dict[int, _State] = {}
        out = []
        for lam in lambdas:
            codes = np.zeros(n, dtype=np.int64)
            active = np.array(avail.any(axis=1), dtype=bool)
            for _step in range(self.max_calls):
                if not active.any():
                    break
                nxt = np.full(n, -1, dtype=np.intp)
                for code in np.unique(codes[active]).tolist():
                    rows = np.flatnonzero(active & (codes == code))
                    if code not in cache:
                        run = tuple(int(b) for b in np.flatnonzero(code & bits))
                        cache[code] = self._state(run, mu, post, cost, avail)
                    nxt[rows] = self._choose(cache[code], rows, lam, code != 0)
                go = nxt >= 0
                codes[go] |= bits[nxt[go]]
                active = go
            ran = (codes[:, None] & bits[None, :]) != 0  # (n, m) in cost order
            final_pos = np.where(ran, post, -np.inf).argmax(axis=1)
            called = np.zeros((n, m), dtype=bool)
            called[:, order] = ran
            out.append((np.asarray(order[final_pos], dtype=np.intp), called))
        return out

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """One replay per λ from the recorded signals; every answer's signal is read."""
        x = self.inputs(table)
        out = []
        for lam, (final, called) in zip(
            self.lambdas, self.decide(x, available, self.lambdas), strict=True
        ):
            d = Decisions(
                final=final,
                called=called,
                overhead_cost=(x.check_cost * called).sum(axis=1),
                overhead_latency_ms=(x.check_latency * called).sum(axis=1),
            )
            out.append((lam, d))
        return out

    def _live_estimates(self, query: Query) -> tuple[FloatVector, FloatVector]:
        """``Q̂`` and the expected cost of a call whose signal is read (``Ĉ + K̂``)."""
        q = self.router_.quality([query])[0]
        c = self.router_.expected_cost([query])[0]
        k = self.checks_.expected([query.metadata.get("dataset")])[0]
        return q, c + k

    def _live_next(
        self,
        q: FloatVector,
        c: FloatVector,
        answers: dict[int, float],
        open_: list[bool],
        lam: float,
    ) -> int:
        """Position of the next model to run live (−1: stop), by the offline rule."""
        order = self.order_
        post = q[order].copy()
        for pos, p in answers.items():
            post[pos] = p
        state = self._state(
            tuple(sorted(answers)),
            q[order][None, :],
            post[None, :],
            (c[order] / self.scale)[None, :],
            np.array([open_], dtype=bool),
        )
        return int(self._choose(state, np.array([0]), lam, bool(answers))[0])

    def start(self, query: Query, allowed: frozenset[str]) -> LiveFlow:
        """Live: run the cheapest model of the best supermodel, read its signal, repeat."""
        label = self.label or "cascade-routing"
        q, c = self._live_estimates(query)
        names: list[str] = [self.models_[j] for j in self.order_]
        open_ = [name in allowed for name in names]
        if not any(open_):
            raise NoAnswerError(f"{label}: none of its models is allowed for this request")
        answers: dict[int, float] = {}
        options = self.calibrated_.signal.request_options()
        error: Exception | None = None
        while len(answers) < self.max_calls:
            pos = self._live_next(q, c, answers, open_, self.lam)
            if pos < 0:
                break
            model = names[pos]
            open_[pos] = False
            try:
                answer = yield Attempt(model=model, options=dict(options), reason=label)
            except Exception as exc:  # the call failed: decide again without this model
                error = exc
                continue
            p = yield from assess(self.calibrated_, query, answer)
            answers[pos] = float(q[self.order_[pos]]) if math.isnan(p) else p
        if not answers:
            raise NoAnswerError(f"{label}: every call failed") from error
        reply = max(sorted(answers), key=lambda k: answers[k])
        return names[reply]

    def explain(self, query: Query, allowed: frozenset[str]) -> Plan:
        """The first model cascade routing runs, with the router's per-model figures."""
        q, c = self._live_estimates(query)
        names = [self.models_[j] for j in self.order_]
        pos = self._live_next(q, c, {}, [n in allowed for n in names], self.lam)
        if pos < 0:
            raise NoAnswerError("cascade-routing: none of its models is allowed")
        cands = self._candidates(query, allowed)
        return Plan(self.label or "cascade-routing", names[pos], tuple(cands), self.lam)

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "max_calls": self.max_calls, "uncertainty": self.uncertainty}

    def _tuned_state(self) -> dict[str, Any]:
        return {"order": self.order_, "cov": self.cov_}

    def _restore_tuned(self, state: dict[str, Any]) -> None:
        self.order_ = np.asarray(state["order"], dtype=np.intp)
        self.cov_ = np.asarray(state["cov"], dtype=np.float64)


# ---- router → cascade -----------------------------------------------------------------------
#: Router λ values tried for the entry rung; ``inf`` always enters at the cheapest rung.
ENTRY_LAMBDAS: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, math.inf)


@dataclass(frozen=True)
class LadderChoice:
    """What a router→cascade does at one knob λ: the router's λ for the entry rung, the
    ladder and its threshold, with the validation figures that chose them."""

    lam: float
    entry_lam: float
    rungs: tuple[str, ...]
    tau: float
    quality: float
    cost: float

    def state(self) -> dict[str, Any]:
        """JSON-able state (``inf`` as a string)."""
        return {
            "lam": self.lam,
            "entry_lam": "inf" if math.isinf(self.entry_lam) else self.entry_lam,
            "rungs": list(self.rungs),
            "tau": self.tau,
            "quality": self.quality,
            "cost": self.cost,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LadderChoice:
        """Rebuild from :meth:`state`."""
        return cls(
            float(state["lam"]),
            float(state["entry_lam"]),
            tuple(state["rungs"]),
            float(state["tau"]),
            float(state["quality"]),
            float(state["cost"]),
        )


def entry_models(
    Q: FloatMatrix,
    C: FloatMatrix,
    available: BoolMatrix,
    lam: float,
    scale: float,
    ladder: Sequence[int],
) -> IntVector:
    """The entry model per row (a column): the router's ``argmax Q̂ − λ·Ĉ/c̄`` over every
    available model (ties: cheaper), or for ``λ = ∞`` the ladder's first available rung
    (a plain cascade); −1 where nothing is available."""
    if math.isinf(lam):
        sub = available[:, list(ladder)]
        first = np.asarray(ladder, dtype=np.intp)[np.argmax(sub, axis=1)]
        return np.where(sub.any(axis=1), first, -1).astype(np.intp)
    utility = np.where(available, Q - (lam + _TIE) * C / scale, -np.inf)
    pick = utility.argmax(axis=1)
    return np.where(available.any(axis=1), pick, -1).astype(np.intp)


@register("policy", "router-cascade")
class RouterCascade(_RouterWithSignal):
    """The router picks the entry model; the ladder escalates above it by the signal.

    Models are ordered by training cost. The entry is the router's choice among all models
    (or, for the entry λ ``∞``, the ladder's cheapest rung); the rungs tried after it are the
    ladder's rungs dearer than the entry, each accepted when its calibrated signal is at least
    ``τ`` (the last answers unchecked).

    Parameters
    ----------
    estimator, encoder, router_params, signal, calibration, by_dataset, lam, lambdas:
        As for :class:`CascadeRouting`.
    max_rungs:
        Longest ladder considered (rungs are taken from the training cost–quality front).
    entry_lambdas:
        Router λ values considered for the entry model (``inf``: the ladder's first rung).
    taus:
        Thresholds on the calibrated signal considered (0 accepts the entry's answer, which
        makes the policy the router at the entry λ).
    on_missing:
        ``escalate`` (default) or ``accept`` when an answer's signal is missing.
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
        lambdas: Sequence[float] = LAMBDAS,
        validation_fraction: float = 0.25,
        max_rungs: int = 3,
        entry_lambdas: Sequence[float] = ENTRY_LAMBDAS,
        taus: Sequence[float] = (0.0, *TAUS),
        on_missing: str = "escalate",
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
        )
        if max_rungs < 1 or not taus or not entry_lambdas:
            raise ValueError("max_rungs must be at least 1; taus and entry_lambdas non-empty")
        self.max_rungs = max_rungs
        self.entry_lambdas = tuple(float(v) for v in entry_lambdas)
        self.taus = tuple(float(t) for t in taus)
        self.on_missing = on_missing

    def ladders(self) -> list[tuple[str, ...]]:
        """Candidate ladders: subsets of the training front ending with its strongest model."""
        front = pareto_front(self.stats_)
        top, lower = front[-1], front[:-1]
        return [
            (*combo, top)
            for size in range(self.max_rungs)
            for combo in itertools.combinations(lower, size)
        ]

    def _order(self) -> list[str]:
        return self.stats_.by_cost(self.models_)

    def ladder_run(
        self,
        table: OutcomeTable,
        x: Inputs,
        available: BoolMatrix,
        choice: LadderChoice,
        entry: IntVector | None = None,
    ) -> Decisions:
        """Decisions of one choice (``entry``: the entry model per prompt, when known)."""
        order = self._order()
        cols = [table.model_index(m) for m in order]
        ladder = [table.model_index(m) for m in choice.rungs]
        if entry is None:
            entry = entry_models(x.Q, x.C, available, choice.entry_lam, self.scale, ladder)
        position = np.empty(table.n_models, dtype=np.intp)
        position[cols] = np.arange(len(cols))
        in_ladder = np.zeros(table.n_models, dtype=bool)
        in_ladder[ladder] = True
        entry_pos = np.where(entry >= 0, position[np.maximum(entry, 0)], len(cols))
        above = in_ladder[None, :] & (position[None, :] > entry_pos[:, None])
        is_entry = np.arange(table.n_models)[None, :] == entry[:, None]
        masked = available & (above | is_entry)
        taus = [choice.tau] * (len(order) - 1) + [0.0]
        return ladder_decisions(
            table,
            masked,
            x.P,
            order,
            taus,
            self.stats_,
            self.calibrated_.signal,
            self.on_missing,
        )

    def _tune(self, validation: OutcomeTable) -> None:
        """Per knob λ, the (entry λ, ladder, τ) of best validation utility, mean quality
        − λ · mean cost / c̄ (checks included); ties go to the cheaper choice."""
        view = validation.blind()
        x = self.inputs(view)
        avail = validation.known
        score = np.nan_to_num(validation.score)
        price = np.nan_to_num(validation.cost)
        rows = np.arange(validation.n_prompts)
        tried: list[LadderChoice] = []
        for rungs in self.ladders():
            ladder = [validation.model_index(m) for m in rungs]
            for entry_lam in self.entry_lambdas:
                entry = entry_models(x.Q, x.C, avail, entry_lam, self.scale, ladder)
                for tau in self.taus:
                    probe = LadderChoice(0.0, entry_lam, rungs, tau, 0.0, 0.0)
                    d = self.ladder_run(view, x, avail, probe, entry)
                    q = float(score[rows, d.final].mean())
                    c = float(((price * d.called).sum(axis=1) + d.overhead_cost).mean())
                    tried.append(LadderChoice(0.0, entry_lam, rungs, tau, q, c))
        quality = np.array([t.quality for t in tried])
        cost = np.array([t.cost for t in tried])
        self.choices_ = []
        for lam in self.lambdas:
            k = int(np.argmax(quality - (lam + _TIE) * cost / self.scale))
            t = tried[k]
            self.choices_.append(LadderChoice(lam, t.entry_lam, t.rungs, t.tau, t.quality, t.cost))

    def choice_for(self, lam: float) -> LadderChoice:
        """The fitted choice of the knob λ nearest to ``lam``."""
        return min(self.choices_, key=lambda ch: (abs(ch.lam - lam), ch.lam))

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """Replay each knob λ's fitted choice."""
        x = self.inputs(table)
        return [(ch.lam, self.ladder_run(table, x, available, ch)) for ch in self.choices_]

    def _sequence(self, query: Query, allowed: frozenset[str], choice: LadderChoice) -> list[str]:
        """The models a live query may climb: the entry, then the ladder's dearer rungs."""
        q = self.router_.quality([query])[0]
        c = self.router_.expected_cost([query])[0]
        ok = np.array([[m in allowed for m in self.models_]])
        ladder = [self.models_.index(m) for m in choice.rungs]
        entry = int(entry_models(q[None], c[None], ok, choice.entry_lam, self.scale, ladder)[0])
        if entry < 0:
            return []
        order = self._order()
        first = order.index(self.models_[entry])
        above = [m for m in order[first + 1 :] if m in choice.rungs]
        return [self.models_[entry], *above]

    def start(self, query: Query, allowed: frozenset[str]) -> LiveFlow:
        """Live: the router's entry model, then the ladder above it, at the live λ."""
        choice = self.choice_for(self.lam)
        rungs = self._sequence(query, allowed, choice)
        taus = [choice.tau] * (len(rungs) - 1) + [0.0]
        ladder = live_ladder(rungs, taus, allowed, self.stats_)
        label = self.label or "router-cascade"
        return (yield from run_ladder(query, ladder, self.calibrated_, self.on_missing, label))

    def explain(self, query: Query, allowed: frozenset[str]) -> Plan:
        """The entry model, with the router's per-model figures."""
        choice = self.choice_for(self.lam)
        rungs = self._sequence(query, allowed, choice)
        ladder = live_ladder(rungs, [0.0] * len(rungs), allowed, self.stats_)
        if not ladder:
            raise NoAnswerError("router-cascade: none of its models is allowed")
        cands = self._candidates(query, allowed)
        return Plan(self.label or "router-cascade", ladder[0][0], tuple(cands), self.lam)

    def _params(self) -> dict[str, Any]:
        return {
            **super()._params(),
            "max_rungs": self.max_rungs,
            "entry_lambdas": ["inf" if math.isinf(v) else v for v in self.entry_lambdas],
            "taus": list(self.taus),
            "on_missing": self.on_missing,
        }

    def _tuned_state(self) -> dict[str, Any]:
        return {"choices": [ch.state() for ch in self.choices_]}

    def _restore_tuned(self, state: dict[str, Any]) -> None:
        self.choices_ = [LadderChoice.from_state(ch) for ch in state["choices"]]
