"""Compositions of a router and a cascade: router→cascade and cascade routing.

Both use a fitted :class:`~llmdispatch.policies.router.Router` for the ex-ante quality
``Q̂[x, m]`` and expected cost ``Ĉ[x, m]`` of every model, and a calibrated answer signal
(:class:`~llmdispatch.signals.calibrated.CalibratedSignal`) for the post-hoc quality ``P`` of
an answer once it is seen. Costs enter utilities as ``Ĉ / c̄`` (the router's unit-free scale);
``Ĉ`` is rescaled per data-set label (:class:`LabelCosts`: answers differ in length by task)
and reading a signal that needs its own call costs ``K̂`` more (:class:`CheckCostModel`).

What is learned after the router and the calibration is tuned on the validation split and,
by default, on the training prompts too, cross-fitted (each training prompt gets ``Q̂`` and
``P`` from a router and a calibration fitted on the other folds): the tuning then sees the
whole training part, not a quarter of it (:meth:`_RouterWithSignal.tuning_inputs`).

``router-cascade`` — the router picks the entry model, ``argmax Q̂ − λ_e·Ĉ/c̄`` over all
models; from there a ladder (models ordered by training cost) escalates to its rungs dearer
than the entry, accepting an answer when its calibrated signal is at least ``τ``
(:mod:`.ladder`'s rule: the last rung answers unchecked, a missing signal escalates). The
family holds the router itself (``τ = 0``: the entry answers and nothing is checked) and the
plain cascade (``λ_e = ∞``: enter at the ladder's cheapest rung). For every knob ``λ`` the
entry ``λ_e``, the ladder (a subset of the training cost–quality front ending with its
strongest model) and ``τ`` are chosen to maximise mean quality ``− λ ·`` mean cost ``/ c̄``
(checks included) on the tuning prompts, and separately per data-set label where a label has
enough of them: the label is known before the call (the signal is calibrated per label too),
so a label whose signal is weak or dear to read can route while another one cascades.

``cascade-routing`` — Dekoninck, Baader & Vechev, "A Unified Approach to Routing and
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

Both replay exactly offline from the recorded signals (``sweep`` over ``λ``) and run live
through ``start``; verification calls of a signal are paid wherever an answer is assessed.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from llmdispatch.artifacts import component_state, restore
from llmdispatch.data.splits import kfold_indices, train_validation
from llmdispatch.data.table import NUMERIC_FIELDS, OutcomeTable
from llmdispatch.policies.base import Attempt, Candidate, Decisions, Plan, Policy
from llmdispatch.policies.cascade import ModelStats, ladder_decisions, live_ladder, make_signal
from llmdispatch.policies.cascade_fit import pareto_front
from llmdispatch.policies.costs import CostModel
from llmdispatch.policies.ladder import LiveFlow, NoAnswerError, assess, run_ladder
from llmdispatch.policies.router import Router
from llmdispatch.query import Query
from llmdispatch.registry import register
from llmdispatch.signals.base import Signal
from llmdispatch.signals.calibrated import CalibratedSignal, group_label, group_labels
from llmdispatch.types import BoolMatrix, FloatMatrix, FloatVector, IntVector

#: Unit-free λ values swept offline (as the router's, over the range where choices change).
LAMBDAS: tuple[float, ...] = (0.0, *np.geomspace(1e-3, 1e3, 61).round(6).tolist())
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
    groups: npt.NDArray[np.str_] | None = None  # top-level data-set label per row


def _by_label(
    labels: Sequence[str | None],
    models: Sequence[str],
    per_group: dict[str, dict[str, float]],
    per_model: dict[str, float],
) -> FloatMatrix:
    """Per row and model, the row's top-level label's value, else the model's overall one."""
    out = np.empty((len(labels), len(models)))
    for i, label in enumerate(labels):
        group = group_label(label)
        values = per_group.get(group, per_model) if group is not None else per_model
        out[i] = [values[m] for m in models]
    return out


class LabelCosts:
    """Per data-set label, the ratio of the recorded cost to the router's expected cost.

    The router's ``Ĉ`` uses one mean completion length per model, but answers differ in
    length by task (``cascades9``: one letter for MMLU, a worked solution for GSM8K). The
    compositions know a query's label (the signal is calibrated per label too), so they
    rescale ``Ĉ`` by ``Σ cost / Σ Ĉ`` over the training prompts of that (label, model); labels
    with fewer than ``min_group`` such prompts, and live queries without a ``"dataset"``
    label, get the per-model ratio.
    """

    def __init__(self, min_group: int = 20) -> None:
        self.min_group = min_group

    def fit(self, table: OutcomeTable, expected: FloatMatrix) -> LabelCosts:
        """Ratios on ``table`` given the router's ``Ĉ`` for it."""
        groups = group_labels(table.datasets)
        ok = ~np.isnan(table.cost) & np.isfinite(expected) & (expected > 0)
        cost, exp = np.where(ok, table.cost, 0.0), np.where(ok, expected, 0.0)

        def ratios(rows: npt.NDArray[np.bool_]) -> dict[str, float] | None:
            if (ok[rows].sum(axis=0) < self.min_group).any():
                return None
            den = exp[rows].sum(axis=0)
            return {
                m: float(cost[rows, j].sum() / den[j]) if den[j] > 0 else 1.0
                for j, m in enumerate(table.models)
            }

        self.models_ = tuple(table.models)
        self.model_ = ratios(np.ones(table.n_prompts, dtype=bool)) or dict.fromkeys(
            self.models_, 1.0
        )
        self.group_ = {}
        for g in np.unique(groups):
            if (found := ratios(groups == g)) is not None:
                self.group_[str(g)] = found
        return self

    def factors(self, labels: Sequence[str | None]) -> FloatMatrix:
        """The factor per row (by its data-set label, ``None``: unlabelled) and model."""
        return _by_label(labels, self.models_, self.group_, self.model_)

    def state(self) -> dict[str, Any]:
        """JSON-able state."""
        return {
            "min_group": self.min_group,
            "models": list(self.models_),
            "model": self.model_,
            "group": self.group_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LabelCosts:
        """Rebuild from :meth:`state`."""
        obj = cls(int(state["min_group"]))
        obj.models_ = tuple(state["models"])
        obj.model_ = {k: float(v) for k, v in state["model"].items()}
        obj.group_ = {g: {k: float(v) for k, v in d.items()} for g, d in state["group"].items()}
        return obj


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
        return _by_label(labels, self.models_, self.group_, self.model_)

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


#: Recent fitted routers and cross-fitted ``Q̂``, by training table. A router's quality
#: estimates depend on the prompts, the scores and the router's parameters only (not on costs
#: or the signal), so two compositions, or two cost accountings, fitted on the same prompts
#: share them (within one process; nothing is written to disk).
_MEMO: OrderedDict[str, Any] = OrderedDict()
_MEMO_SIZE = 24


def _memo_get(key: str) -> Any:
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    return None


def _memo_put(key: str, value: Any) -> None:
    _MEMO[key] = value
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)


def _table_key(table: OutcomeTable, spec: str) -> str:
    """What a router fitted on ``table`` depends on (besides costs), hashed."""
    h = hashlib.sha256()
    for part in (table.name, spec, "\x00".join(table.models)):
        h.update(part.encode())
    h.update("\x00".join(str(i) for i in table.ids).encode())
    h.update("\x00".join(table.full_prompts()).encode())
    h.update(np.ascontiguousarray(table.score).tobytes())
    return h.hexdigest()


def _concat(a: OutcomeTable, b: OutcomeTable) -> OutcomeTable:
    """The rows of ``a`` then those of ``b`` (same models)."""
    if a.models != b.models:
        raise ValueError("tables with different models cannot be stacked")
    names = ("ids", "prompts", "systems", "references", "datasets", "splits")
    mats = (*NUMERIC_FIELDS, "responses")
    stacked: dict[str, Any] = {
        f: np.concatenate([getattr(a, f), getattr(b, f)]) for f in (*names, *mats)
    }
    return replace(a, **stacked)


def _stack(a: Inputs, b: Inputs) -> Inputs:
    """The rows of ``a`` then those of ``b``."""
    ga = a.groups if a.groups is not None else np.full(len(a.Q), "", dtype=str)
    gb = b.groups if b.groups is not None else np.full(len(b.Q), "", dtype=str)
    return Inputs(
        Q=np.vstack([a.Q, b.Q]),
        C=np.vstack([a.C, b.C]),
        K=np.vstack([a.K, b.K]),
        P=np.vstack([a.P, b.P]),
        check_cost=np.vstack([a.check_cost, b.check_cost]),
        check_latency=np.vstack([a.check_latency, b.check_latency]),
        groups=np.concatenate([ga, gb]),
    )


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
        label_costs: bool = True,
        tune_folds: int = 5,
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
        self.label_costs = label_costs
        self.tune_folds = tune_folds

    # ---- fitting ------------------------------------------------------------------------
    def fit(self, train: OutcomeTable, validation: OutcomeTable | None = None) -> Self:
        """Fit the router and the calibrated signal on ``train``; tune on ``validation`` and,
        with ``tune_folds ≥ 2``, on ``train`` too, cross-fitted (:meth:`tuning_inputs`)."""
        if validation is None:
            train, validation = train_validation(train, self.validation_fraction)
        self.router_ = self._fitted_router(train)
        self.calibrated_ = self._new_calibrated().fit(train)
        self.models_ = tuple(train.models)
        self.stats_ = ModelStats.of(train)
        self.checks_ = CheckCostModel().fit(train, self.calibrated_.signal)
        self.costs_ = LabelCosts().fit(train, self.router_.costs_.for_table(train))
        self._tune(*self.tuning_inputs(train, validation))
        return self

    def _router_spec(self) -> str:
        return json.dumps(
            {"estimator": self.estimator, "encoder": self.encoder, **self.router_params},
            sort_keys=True,
            default=str,
        )

    def _new_router(self) -> Router:
        return Router(estimator=self.estimator, encoder=self.encoder, **self.router_params)

    def _fitted_router(self, train: OutcomeTable) -> Router:
        """The router fitted on ``train``; a recent fit on the same prompts and scores is
        reused with its cost model refitted (the quality estimates ignore costs)."""
        key = "router:" + _table_key(train, self._router_spec())
        cached = _memo_get(key)
        if cached is None:
            fitted = self._new_router().fit(train)
            _memo_put(key, fitted)
            return fitted
        router: Router = copy.copy(cached)
        router.cards_ = {name: train.card(name) for name in router.models_}
        router.costs_ = CostModel().fit(train)
        router.cost_scale_ = router.costs_.cost_scale
        return router

    def _new_calibrated(self, fresh: bool = False) -> CalibratedSignal:
        signal = make_signal(self.signal)
        if fresh:  # a copy, so that fitting it leaves the policy's signal alone
            signal = type(signal).from_state(signal.get_state())
        return CalibratedSignal(signal, self.calibration, self.by_dataset)

    def tuning_inputs(
        self, train: OutcomeTable, validation: OutcomeTable
    ) -> tuple[OutcomeTable, Inputs]:
        """The prompts the composition tunes on, with their inputs.

        The validation prompts get the fitted router's ``Q̂`` and the fitted calibration. With
        ``tune_folds = k ≥ 2`` the training prompts are added, each with ``Q̂`` and ``P`` from a
        router and a calibration fitted on the other ``k − 1`` training folds (cross-fitting:
        no prompt is judged by a model that saw it), so the tuning sees the whole training
        part instead of only the validation split; costs use the fitted cost models.
        """
        x_val = self.inputs(validation.blind())
        k = min(self.tune_folds, train.n_prompts)
        if k < 2:
            return validation, x_val
        folds = list(kfold_indices(train.n_prompts, k, seed=0))
        key = f"crossfit:{k}:" + _table_key(train, self._router_spec())
        q = _memo_get(key)
        if q is None:
            q = np.empty((train.n_prompts, train.n_models))
            for tr, te in folds:
                held = train.take(te).blind()
                q[te] = self._new_router().fit(train.take(tr)).quality_table(held)
            _memo_put(key, q)
        p = np.empty_like(q)
        for tr, te in folds:
            p[te] = self._new_calibrated(fresh=True).fit(train.take(tr)).transform(train.take(te))
        x_train = self.inputs(train.blind(), quality=np.array(q, copy=True), signal=p)
        return _concat(train, validation), _stack(x_train, x_val)

    def _tune(self, table: OutcomeTable, x: Inputs) -> None:
        """What the composition learns from the tuning prompts (with their inputs)."""

    def inputs(
        self,
        table: OutcomeTable,
        quality: FloatMatrix | None = None,
        signal: FloatMatrix | None = None,
    ) -> Inputs:
        """``Q̂``, ``Ĉ``, the calibrated signal and its overhead for every prompt of ``table``
        (``quality``, ``signal``: ``Q̂`` and ``P`` when already known)."""
        extra_cost, extra_latency = self.calibrated_.signal.offline_overhead(table)
        labels = [str(d) for d in table.datasets]
        return Inputs(
            Q=self.router_.quality_table(table) if quality is None else quality,
            C=self.router_.costs_.for_table(table) * self._cost_factors(labels),
            K=self.checks_.expected(labels),
            P=self.calibrated_.transform(table) if signal is None else signal,
            check_cost=extra_cost,
            check_latency=extra_latency,
            groups=group_labels(table.datasets),
        )

    def _cost_factors(self, labels: Sequence[str | None]) -> FloatMatrix:
        """Per-label rescaling of ``Ĉ`` (:class:`LabelCosts`), or ones when switched off."""
        if not self.label_costs:
            return np.ones((len(labels), len(self.models_)))
        return self.costs_.factors(labels)

    def _live_cost(self, query: Query) -> FloatVector:
        """``Ĉ`` of one live query, rescaled by its data-set label as offline."""
        c = self.router_.expected_cost([query])[0]
        return np.asarray(c * self._cost_factors([query.metadata.get("dataset")])[0])

    @property
    def scale(self) -> float:
        """The router's cost scale ``c̄``."""
        return float(self.router_.cost_scale_)

    def _candidates(self, query: Query, allowed: frozenset[str]) -> list[Candidate]:
        q = self.router_.quality([query])[0]
        c = self._live_cost(query)
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
            "label_costs": self.label_costs,
            "tune_folds": self.tune_folds,
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
            "costs": self.costs_.state(),
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
        obj.costs_ = LabelCosts.from_state(state["costs"])
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
class CascadeRouting(_RouterWithSignal):
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
        lambdas: Sequence[float] = LAMBDAS,
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
            tau = np.where(state.valid[rows], state.value[rows] - (lam + _TIE) * c, -np.inf)
            pick = tau.argmax(axis=1)
            top = tau[np.arange(n), pick]
            first = np.array([opt[0] for opt in state.options], dtype=np.intp)[pick]
        commit = np.zeros(n, dtype=bool)
        if state.commits:
            c = state.commit_cost[rows]
            tau = np.where(
                state.commit_valid[rows], state.commit_value[rows] - (lam + _TIE) * c, -np.inf
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


# ---- router → cascade -----------------------------------------------------------------------
#: Router λ values tried for the entry rung; ``inf`` always enters at the cheapest rung.
ENTRY_LAMBDAS: tuple[float, ...] = (
    0.0,
    *np.geomspace(1e-2, 1e3, 21).round(6).tolist(),
    math.inf,
)


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
    label_costs, tune_folds:
        As for :class:`CascadeRouting`.
    by_label, min_label:
        Choose (entry λ, ladder, τ) per data-set label for labels with at least
        ``min_label`` tuning prompts (the others, and unlabelled live queries, use the pooled
        choice).
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
        label_costs: bool = True,
        by_label: bool = True,
        min_label: int = 100,
        tune_folds: int = 5,
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
        if max_rungs < 1 or not taus or not entry_lambdas:
            raise ValueError("max_rungs must be at least 1; taus and entry_lambdas non-empty")
        self.max_rungs = max_rungs
        self.entry_lambdas = tuple(float(v) for v in entry_lambdas)
        self.taus = tuple(float(t) for t in taus)
        self.on_missing = on_missing
        self.by_label = by_label
        self.min_label = min_label

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
        """Decisions of one choice (``entry``: the entry model per prompt, when known). A
        threshold ``τ ≤ 0`` accepts every answer, so nothing is checked: the entry answers."""
        order = self._order()
        ladder = [table.model_index(m) for m in choice.rungs]
        if entry is None:
            entry = entry_models(x.Q, x.C, available, choice.entry_lam, self.scale, ladder)
        _, masked = self._masked(table, available, ladder if choice.tau > 0 else [], entry)
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

    def _masked(
        self, table: OutcomeTable, available: BoolMatrix, ladder: Sequence[int], entry: IntVector
    ) -> tuple[list[int], BoolMatrix]:
        """Models in training-cost order and, per prompt, those it may climb: the entry and
        the ladder's rungs dearer than it (among the available ones)."""
        cols = [table.model_index(m) for m in self._order()]
        position = np.empty(table.n_models, dtype=np.intp)
        position[cols] = np.arange(len(cols))
        in_ladder = np.zeros(table.n_models, dtype=bool)
        in_ladder[list(ladder)] = True
        entry_pos = np.where(entry >= 0, position[np.maximum(entry, 0)], len(cols))
        above = in_ladder[None, :] & (position[None, :] > entry_pos[:, None])
        is_entry = np.arange(table.n_models)[None, :] == entry[:, None]
        return cols, available & (above | is_entry)

    def every_tau(
        self,
        table: OutcomeTable,
        x: Inputs,
        available: BoolMatrix,
        ladder: Sequence[int],
        entry: IntVector,
        taus: Sequence[float],
    ) -> tuple[FloatMatrix, FloatMatrix]:
        """Score and paid cost per prompt of one (ladder, entry) for every τ at once,
        ``(len(taus), n)`` each: the rule of :meth:`ladder_run`, vectorised over τ."""
        cols, masked = self._masked(table, available, ladder, entry)
        if min(taus) <= 0.0 < max(taus):  # τ ≤ 0 never climbs: evaluate it on its own
            low = [t <= 0.0 for t in taus]
            q0, c0 = self.every_tau(table, x, available, ladder, entry, [0.0])
            q1, c1 = self.every_tau(
                table, x, available, ladder, entry, [t for t in taus if t > 0.0]
            )
            q_out, c_out = (
                np.empty((len(taus), table.n_prompts)),
                np.empty((len(taus), table.n_prompts)),
            )
            q_out[low], c_out[low] = q0[0], c0[0]
            q_out[~np.asarray(low)], c_out[~np.asarray(low)] = q1, c1
            return q_out, c_out
        if max(taus) <= 0.0:
            _, masked = self._masked(table, available, [], entry)
        score = np.nan_to_num(table.score)[:, cols]
        price = np.nan_to_num(table.cost)[:, cols]
        check = np.nan_to_num(x.check_cost)[:, cols]
        on = masked[:, cols]  # (n, m) in cost order
        n, m = on.shape
        last = np.where(on.any(axis=1), m - 1 - np.argmax(on[:, ::-1], axis=1), -1)
        is_last = np.arange(m)[None, :] == last[:, None]
        p = x.P[:, cols]
        tau = np.asarray(taus, dtype=np.float64)[:, None, None]
        ok = np.where(np.isnan(p)[None], self.on_missing == "accept", p[None] >= tau)
        stop = on[None] & (ok | is_last[None])  # (T, n, m)
        final = np.argmax(stop, axis=2)  # the first rung that answers
        called = on[None] & (np.arange(m)[None, None, :] <= final[:, :, None])
        checked = called & ~is_last[None]
        q = np.take_along_axis(np.broadcast_to(score, (len(taus), n, m)), final[..., None], 2)
        q = q[..., 0]
        c = (called * price[None]).sum(axis=2) + (checked * check[None]).sum(axis=2)
        none = ~on.any(axis=1)
        if none.any():  # nothing to climb: the fallback of :func:`ladder_decisions`
            d = ladder_decisions(
                table,
                masked,
                x.P,
                self._order(),
                [0.0] * m,
                self.stats_,
                self.calibrated_.signal,
                self.on_missing,
            )
            q[:, none] = np.nan_to_num(table.score)[none, d.final[none]]
            paid = (np.nan_to_num(table.cost) * d.called).sum(axis=1) + d.overhead_cost
            c[:, none] = paid[none]
        return q, c

    def _tune(self, validation: OutcomeTable, x: Inputs) -> None:
        """Per knob λ, the (entry λ, ladder, τ) of best utility on the tuning prompts, mean
        quality − λ · mean cost / c̄ (checks included); ties go to the cheaper choice. With
        ``by_label``, also one per data-set label with at least ``min_label`` tuning
        prompts, on those prompts alone (the utility is a sum over labels, so choosing per
        label maximises it over the larger family)."""
        avail = validation.known
        groups = group_labels(validation.datasets)
        names = [str(g) for g in np.unique(groups)]
        masks = {g: groups == g for g in names}
        tried: list[LadderChoice] = []
        per_label: dict[str, list[tuple[float, float]]] = {g: [] for g in names}
        for rungs in self.ladders():
            ladder = [validation.model_index(m) for m in rungs]
            for entry_lam in self.entry_lambdas:
                entry = entry_models(x.Q, x.C, avail, entry_lam, self.scale, ladder)
                q_rows, c_rows = self.every_tau(validation, x, avail, ladder, entry, self.taus)
                q_mean, c_mean = q_rows.mean(axis=1), c_rows.mean(axis=1)
                label_means = {
                    g: (q_rows[:, mask].mean(axis=1), c_rows[:, mask].mean(axis=1))
                    for g, mask in masks.items()
                }
                for k, tau in enumerate(self.taus):
                    tried.append(
                        LadderChoice(0.0, entry_lam, rungs, tau, float(q_mean[k]), float(c_mean[k]))
                    )
                    for g, (qg, cg) in label_means.items():
                        per_label[g].append((float(qg[k]), float(cg[k])))
        self.choices_ = self._pick(tried, [(t.quality, t.cost) for t in tried])
        self.label_choices_: dict[str, list[LadderChoice]] = {}
        if self.by_label:
            for g in names:
                if masks[g].sum() >= self.min_label:
                    self.label_choices_[g] = self._pick(tried, per_label[g])

    def _pick(
        self, tried: Sequence[LadderChoice], figures: Sequence[tuple[float, float]]
    ) -> list[LadderChoice]:
        """For each knob λ, the tried choice of best ``quality − λ·cost/c̄`` in ``figures``."""
        quality = np.array([f[0] for f in figures])
        cost = np.array([f[1] for f in figures])
        out = []
        for lam in self.lambdas:
            k = int(np.argmax(quality - (lam + _TIE) * cost / self.scale))
            t = tried[k]
            out.append(
                LadderChoice(lam, t.entry_lam, t.rungs, t.tau, float(quality[k]), float(cost[k]))
            )
        return out

    def choice_for(self, lam: float, label: str | None = None) -> LadderChoice:
        """The fitted choice of the knob λ nearest to ``lam`` (for a data-set label, its own
        choice when it has one)."""
        group = group_label(label)
        choices = self.label_choices_.get(group, self.choices_) if group else self.choices_
        return min(choices, key=lambda ch: (abs(ch.lam - lam), ch.lam))

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """Replay each knob λ's fitted choices (per label where the label has its own)."""
        x = self.inputs(table)
        groups = group_labels(table.datasets)
        own = [g for g in np.unique(groups).tolist() if g in self.label_choices_]
        rest = ~np.isin(groups, own)
        out = []
        for k, pooled in enumerate(self.choices_):
            parts = [(rest, pooled)] if rest.any() else []
            parts += [(groups == g, self.label_choices_[g][k]) for g in own]
            runs: dict[LadderChoice, Decisions] = {}
            final = np.zeros(table.n_prompts, dtype=np.intp)
            called = np.zeros((table.n_prompts, table.n_models), dtype=bool)
            extra_cost = np.zeros(table.n_prompts)
            extra_latency = np.zeros(table.n_prompts)
            for mask, choice in parts:
                key = replace(choice, lam=0.0, quality=0.0, cost=0.0)
                if key not in runs:
                    runs[key] = self.ladder_run(table, x, available, choice)
                d = runs[key]
                final[mask], called[mask] = d.final[mask], d.called[mask]
                extra_cost[mask] = d.overhead_cost[mask]
                extra_latency[mask] = d.overhead_latency_ms[mask]
            out.append((pooled.lam, Decisions(final, called, extra_cost, extra_latency)))
        return out

    def _sequence(self, query: Query, allowed: frozenset[str], choice: LadderChoice) -> list[str]:
        """The models a live query may climb: the entry, then the ladder's dearer rungs."""
        q = self.router_.quality([query])[0]
        c = self._live_cost(query)
        ok = np.array([[m in allowed for m in self.models_]])
        ladder = [self.models_.index(m) for m in choice.rungs]
        entry = int(entry_models(q[None], c[None], ok, choice.entry_lam, self.scale, ladder)[0])
        if entry < 0:
            return []
        order = self._order()
        first = order.index(self.models_[entry])
        above = [m for m in order[first + 1 :] if m in choice.rungs and choice.tau > 0]
        return [self.models_[entry], *above]

    def start(self, query: Query, allowed: frozenset[str]) -> LiveFlow:
        """Live: the router's entry model, then the ladder above it, at the live λ."""
        choice = self.choice_for(self.lam, query.metadata.get("dataset"))
        rungs = self._sequence(query, allowed, choice)
        taus = [choice.tau] * (len(rungs) - 1) + [0.0]
        ladder = live_ladder(rungs, taus, allowed, self.stats_)
        label = self.label or "router-cascade"
        return (yield from run_ladder(query, ladder, self.calibrated_, self.on_missing, label))

    def explain(self, query: Query, allowed: frozenset[str]) -> Plan:
        """The entry model, with the router's per-model figures."""
        choice = self.choice_for(self.lam, query.metadata.get("dataset"))
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
            "by_label": self.by_label,
            "min_label": self.min_label,
        }

    def _tuned_state(self) -> dict[str, Any]:
        return {
            "choices": [ch.state() for ch in self.choices_],
            "label_choices": {
                g: [ch.state() for ch in chs] for g, chs in self.label_choices_.items()
            },
        }

    def _restore_tuned(self, state: dict[str, Any]) -> None:
        self.choices_ = [LadderChoice.from_state(ch) for ch in state["choices"]]
        self.label_choices_ = {
            g: [LadderChoice.from_state(ch) for ch in chs]
            for g, chs in state.get("label_choices", {}).items()
        }
