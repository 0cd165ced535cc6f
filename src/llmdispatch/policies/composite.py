"""The shared base of the compositions of a router and a cascade.

Both compositions, :class:`~llmdispatch.policies.router_cascade.RouterCascade`
(``router-cascade``) and :class:`~llmdispatch.policies.cascade_routing.CascadeRouting`
(``cascade-routing``), use a fitted :class:`~llmdispatch.policies.router.Router` for the
ex-ante quality ``Q̂[x, m]`` and expected cost ``Ĉ[x, m]`` of every model, and a calibrated
answer signal (:class:`~llmdispatch.signals.calibrated.CalibratedSignal`) for the post-hoc
quality ``P`` of an answer once it is seen. Costs enter utilities as ``Ĉ / c̄`` (the router's
unit-free scale); ``Ĉ`` is rescaled per data-set label (:class:`LabelCosts`: answers differ in
length by task) and reading a signal that needs its own call costs ``K̂`` more
(:class:`CheckCostModel`).

What is learned after the router and the calibration is tuned on the validation split and,
by default, on the training prompts too, cross-fitted (each training prompt gets ``Q̂`` and
``P`` from a router and a calibration fitted on the other folds): the tuning then sees the
whole training part, not a quarter of it (:meth:`RouterWithSignal.tuning_inputs`).

Both replay exactly offline from the recorded signals (``sweep`` over ``λ``) and run live
through ``start``; verification calls of a signal are paid wherever an answer is assessed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from llmdispatch.artifacts import component_state, restore
from llmdispatch.data.splits import kfold_indices, train_validation
from llmdispatch.data.table import NUMERIC_FIELDS, OutcomeTable
from llmdispatch.policies.base import Candidate, Policy
from llmdispatch.policies.cascade import ModelStats, make_signal
from llmdispatch.policies.costs import CostModel
from llmdispatch.policies.router import DEFAULT_LAMBDAS, Router
from llmdispatch.query import Query
from llmdispatch.signals.base import Signal
from llmdispatch.signals.calibrated import CalibratedSignal, group_label, group_labels
from llmdispatch.types import FloatMatrix, FloatVector

#: Tie-break: among equal utilities the cheaper option wins.
TIE = 1e-9


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


class RouterWithSignal(Policy):
    """The shared base of the compositions: a fitted router, a calibrated answer signal, the
    per-label cost corrections and a λ knob; subclasses say what they learn in :meth:`_tune`
    and how they decide."""

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
