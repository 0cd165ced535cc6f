"""Compositions of a router and a cascade signal.

``cascade-routing`` — Dekoninck, Baader & Vechev, "A Unified Approach to Routing and
Cascading for LLMs", ICML 2025. Before any call, each model has the router's quality
estimate ``Q̂_m`` and expected cost ``Ĉ_m``. The value of stopping is ``b``, the calibrated
probability that the best answer so far is correct (0 before the first call). At each step
the policy calls the model with the largest net gain

    g_m = max(b, Q̂_m) − b − λ · Ĉ_m / c̄        (the first call: Q̂_m − λ · Ĉ_m / c̄)

among models not yet called, and stops when no gain is positive (or after ``max_calls``).
After a call, ``b`` becomes the larger of ``b`` and the answer's calibrated signal: the
quality estimate of the answered model is replaced by what its answer showed. The reply is
the answer with the highest calibrated signal. Adapted: the paper's expectation over the
post-answer quality is replaced by its point estimate ``Q̂_m`` (so ``max(b, Q̂_m)``).

``router-cascade`` — the router picks the first rung at ``λ``; when the answer's calibrated
signal is below ``τ``, the best remaining model by ``Q̂`` (quality only) answers instead.
Its knob walks a grid of ``(λ, τ)`` pairs.

Both replay exactly offline from the recorded confidences and run live through ``start``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np

from llmdispatch.artifacts import component_state, restore
from llmdispatch.data.table import OutcomeTable
from llmdispatch.policies.base import Attempt, Decisions, Plan, Policy
from llmdispatch.policies.cascade import make_signal
from llmdispatch.policies.ladder import LiveFlow, NoAnswerError, assess
from llmdispatch.policies.router import Router
from llmdispatch.query import Query
from llmdispatch.registry import register
from llmdispatch.signals.calibrated import CalibratedSignal
from llmdispatch.types import BoolMatrix, FloatMatrix

LAMBDAS: tuple[float, ...] = (0.0, *np.geomspace(1e-3, 1e2, 31).round(6).tolist())
TAUS: tuple[float, ...] = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)


class _RouterWithSignal(Policy):
    """Shared parts: a fitted router plus a calibrated answer signal."""

    def __init__(
        self,
        estimator: str = "knn",
        encoder: str = "tfidf",
        router_params: dict[str, Any] | None = None,
        signal: str = "recorded",
        calibration: str = "isotonic",
        lam: float = 0.0,
    ) -> None:
        self.estimator = estimator
        self.encoder = encoder
        self.router_params = dict(router_params or {})
        self.signal = signal
        self.calibration = calibration
        self.lam = lam

    def fit(self, train: OutcomeTable, validation: OutcomeTable | None = None) -> Self:
        """Fit the router and calibrate the signal on ``train``."""
        self.router_ = Router(
            estimator=self.estimator, encoder=self.encoder, **self.router_params
        ).fit(train)
        self.calibrated_ = CalibratedSignal(make_signal(self.signal), self.calibration).fit(train)
        self.models_ = tuple(train.models)
        return self

    def _inputs(
        self, table: OutcomeTable
    ) -> tuple[FloatMatrix, FloatMatrix, FloatMatrix, FloatMatrix, FloatMatrix]:
        Q = self.router_.quality_table(table)
        C = self.router_.costs_.for_table(table)
        P = self.calibrated_.transform(table)
        extra_cost, extra_latency = self.calibrated_.signal.offline_overhead(table)
        return Q, C, P, extra_cost, extra_latency

    def explain(self, query: Query, allowed: frozenset[str]) -> Plan:
        """The router's first decision at the live ``λ`` (later steps depend on answers)."""
        self.router_.lam_ = self.lam
        plan = self.router_.explain(query, allowed)
        return Plan(self.label or self.registry_name, plan.choice, plan.candidates, self.lam)

    def _params(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "encoder": self.encoder,
            "router_params": self.router_params,
            "signal": self.signal,
            "calibration": self.calibration,
            "lam": self.lam,
        }

    def get_state(self) -> dict[str, Any]:
        """Parameters, the fitted router and the calibrated signal."""
        return {
            "params": self._params(),
            "router": component_state(self.router_),
            "calibrated": self.calibrated_.get_state(),
            "models": list(self.models_),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        obj = cls(**state["params"])
        obj.router_ = restore(state["router"])
        obj.calibrated_ = CalibratedSignal.from_state(state["calibrated"])
        obj.models_ = tuple(state["models"])
        return obj


def _finish(
    final: np.ndarray,
    called: BoolMatrix,
    checked: BoolMatrix,
    extra_cost: FloatMatrix,
    extra_latency: FloatMatrix,
) -> Decisions:
    return Decisions(
        final=final.astype(np.intp),
        called=called,
        overhead_cost=(extra_cost * checked).sum(axis=1),
        overhead_latency_ms=(extra_latency * checked).sum(axis=1),
    )


@register("policy", "cascade-routing")
class CascadeRouting(_RouterWithSignal):
    """Route, read the answer's signal, route again or stop, by one utility (module doc)."""

    knob_name: ClassVar[str] = "lambda"

    def __init__(
        self,
        estimator: str = "knn",
        encoder: str = "tfidf",
        router_params: dict[str, Any] | None = None,
        signal: str = "recorded",
        calibration: str = "isotonic",
        lam: float = 0.0,
        lambdas: Sequence[float] = LAMBDAS,
        max_calls: int = 3,
    ) -> None:
        super().__init__(estimator, encoder, router_params, signal, calibration, lam)
        if max_calls < 1:
            raise ValueError("max_calls must be at least 1")
        self.lambdas = tuple(float(v) for v in lambdas)
        self.max_calls = max_calls

    def decide(
        self,
        Q: FloatMatrix,
        C: FloatMatrix,
        P: FloatMatrix,
        available: BoolMatrix,
        lam: float,
    ) -> tuple[np.ndarray, BoolMatrix]:
        """Final model and called mask per prompt at one λ (vectorised over prompts)."""
        n, m = Q.shape
        rows = np.arange(n)
        scale = self.router_.cost_scale_
        called = np.zeros((n, m), dtype=bool)
        best = np.zeros(n)
        final = np.full(n, -1, dtype=np.intp)
        active = available.any(axis=1)
        for step in range(self.max_calls):
            open_ = available & ~called
            value = Q if step == 0 else np.maximum(best[:, None], Q) - best[:, None]
            gain = np.where(open_, value - lam * C / scale - 1e-9 * C / scale, -np.inf)
            j = gain.argmax(axis=1)
            go = active & np.isfinite(gain[rows, j]) & ((gain[rows, j] > 0) | (step == 0))
            if not go.any():
                break
            called[rows[go], j[go]] = True
            # A missing signal counts as the router's estimate for that answer.
            p = np.where(np.isnan(P[rows, j]), Q[rows, j], P[rows, j])
            better = go & ((final < 0) | (p > best))
            final = np.where(better, j, final)
            best = np.where(better, p, best)
            active = go
        return final, called

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """One replay per λ from the recorded signals."""
        Q, C, P, extra_cost, extra_latency = self._inputs(table)
        out = []
        for lam in self.lambdas:
            final, called = self.decide(Q, C, P, available, lam)
            # Each answer but the reply's, and the reply's when more calls followed, was
            # checked; the signal is read on every answer the policy saw.
            checked = called.copy()
            out.append((lam, _finish(final, called, checked, extra_cost, extra_latency)))
        return out

    def start(self, query: Query, allowed: frozenset[str]) -> LiveFlow:
        """Live: call, assess, and call again while another model's net gain is positive."""
        q = self.router_.quality([query])[0]
        c = self.router_.expected_cost([query])[0]
        scale = self.router_.cost_scale_
        open_ = {m for m in self.models_ if m in allowed}
        if not open_:
            raise NoAnswerError(f"{self.label or 'cascade-routing'}: no allowed model")
        best, reply = 0.0, None
        options = self.calibrated_.signal.request_options()
        for step in range(self.max_calls):
            gains = {
                m: (q[j] if step == 0 else max(best, q[j]) - best) - self.lam * c[j] / scale
                for j, m in enumerate(self.models_)
                if m in open_
            }
            if not gains:
                break
            model = max(gains, key=lambda k: gains[k])
            if step > 0 and gains[model] <= 0:
                break
            open_.discard(model)
            try:
                answer = yield Attempt(model=model, options=dict(options), reason="cascade-routing")
            except Exception:  # the call failed: route again among the others
                continue
            p = yield from assess(self.calibrated_, query, answer)
            if math.isnan(p):
                p = float(q[self.models_.index(model)])
            if reply is None or p > best:
                best, reply = p, model
        if reply is None:
            raise NoAnswerError("cascade-routing: every call failed")
        return reply


@register("policy", "router-cascade")
class RouterCascade(_RouterWithSignal):
    """The router picks the first rung; a low signal escalates to the best remaining model."""

    knob_name: ClassVar[str] = "pair"

    def __init__(
        self,
        estimator: str = "knn",
        encoder: str = "tfidf",
        router_params: dict[str, Any] | None = None,
        signal: str = "recorded",
        calibration: str = "isotonic",
        lam: float = 0.1,
        tau: float = 0.7,
        lambdas: Sequence[float] = LAMBDAS[::3],
        taus: Sequence[float] = TAUS,
    ) -> None:
        super().__init__(estimator, encoder, router_params, signal, calibration, lam)
        self.tau = tau
        self.lambdas = tuple(float(v) for v in lambdas)
        self.taus = tuple(float(v) for v in taus)

    def decide(
        self,
        Q: FloatMatrix,
        C: FloatMatrix,
        P: FloatMatrix,
        available: BoolMatrix,
        lam: float,
        tau: float,
    ) -> tuple[np.ndarray, BoolMatrix]:
        """Final model and called mask per prompt for one ``(λ, τ)``."""
        n, m = Q.shape
        rows = np.arange(n)
        first = Router.choose(Q, C, available, lam, self.router_.cost_scale_)
        called = np.zeros((n, m), dtype=bool)
        called[rows, first] = True
        p = P[rows, first]
        escalate = ~np.isnan(p) & (p < tau)
        rest = np.where(available & ~called, Q, -np.inf)
        second = rest.argmax(axis=1)
        escalate &= np.isfinite(rest[rows, second])
        called[rows[escalate], second[escalate]] = True
        final = np.where(escalate, second, first)
        return final, called

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """Every ``(λ, τ)`` pair; the knob is the pair's index."""
        Q, C, P, extra_cost, extra_latency = self._inputs(table)
        out = []
        for i, (lam, tau) in enumerate((lam, tau) for lam in self.lambdas for tau in self.taus):
            final, called = self.decide(Q, C, P, available, lam, tau)
            checked = np.zeros_like(called)
            first = Router.choose(Q, C, available, lam, self.router_.cost_scale_)
            checked[np.arange(len(first)), first] = True
            out.append((float(i), _finish(final, called, checked, extra_cost, extra_latency)))
        return out

    def start(self, query: Query, allowed: frozenset[str]) -> LiveFlow:
        """Live: the router's pick, then the best remaining model when the signal is low."""
        self.router_.lam_ = self.lam
        plan = self.router_.explain(query, allowed)
        options = self.calibrated_.signal.request_options()
        answer = yield Attempt(model=plan.choice, options=dict(options), reason="router-cascade")
        p = yield from assess(self.calibrated_, query, answer)
        if math.isnan(p) or p >= self.tau:
            return plan.choice
        rest = [c for c in plan.candidates if c.excluded is None and c.model != plan.choice]
        if not rest:
            return plan.choice
        strongest = max(rest, key=lambda c: c.quality)
        try:
            yield Attempt(model=strongest.model, reason=f"router-cascade: signal {p:.2f} < τ")
        except Exception:  # the escalation failed: the first answer stands
            return plan.choice
        return strongest.model

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "tau": self.tau}
