"""A cascade with a statistical guarantee on its quality drop versus the strongest model.

The guarantee (learn-then-test, :mod:`llmdispatch.policies.risk_control`): with probability at
least ``1 − δ`` over the draw of the ``n`` validation prompts,

    E[ score(reference) − score(cascade) ] ≤ E[ max(0, score(reference) − score(cascade)) ] ≤ ε

for new prompts exchangeable with the validation prompts, where ``reference`` is the strongest
model (best mean training score) and the cascade's last rung. The certified loss is the
one-sided ``max(0, s_ref − s_cascade)`` (prompts where the cascade is right and the reference
wrong earn no credit), so the bound on the drop is conservative.

Procedure: the calibrated signal and the rungs are fitted on the training part only. The
cascade family has one parameter, a common threshold ``t`` for every rung but the last;
candidates run from ``t = +∞`` (always escalate to the reference: loss 0) down through the
quantiles of the calibrated signal. They are tested on the validation prompts in that order
(fixed-sequence testing) and the last certified ``t`` is used; when none is certified the
cascade is the reference alone. The knob is ε.
"""

from __future__ import annotations

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
from llmdispatch.policies.cascade_fit import frontier_candidates
from llmdispatch.policies.ladder import LiveFlow, run_ladder
from llmdispatch.policies.risk_control import learn_then_test
from llmdispatch.query import Query
from llmdispatch.registry import register
from llmdispatch.signals.base import Signal
from llmdispatch.signals.calibrated import CalibratedSignal
from llmdispatch.types import BoolMatrix, FloatMatrix, FloatVector

DEFAULT_EPSILONS = (0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2)


@register("policy", "guaranteed-cascade")
class GuaranteedCascade(Policy):
    """Thresholds certified so the drop versus the strongest model is ≤ ε w.p. ≥ 1 − δ.

    Parameters
    ----------
    epsilon, delta:
        The live operating point's tolerance and the failure probability of the guarantee.
    rungs:
        Models in order; the last is the reference. Default: chosen on the training part
        among cost–quality-efficient models cheaper than the strongest model.
    epsilons:
        Tolerances the sweep replays (the knob).
    grid:
        Number of candidate thresholds below ``+∞``.
    """

    knob_name = "epsilon"

    def __init__(
        self,
        epsilon: float = 0.02,
        delta: float = 0.1,
        rungs: Sequence[str] | None = None,
        signal: Signal | str = "recorded",
        calibration: str = "isotonic",
        by_dataset: bool = True,
        max_rungs: int = 3,
        epsilons: Sequence[float] = DEFAULT_EPSILONS,
        grid: int = 60,
        on_missing: str = "escalate",
        validation_fraction: float = 0.5,
    ) -> None:
        self.epsilon = epsilon
        self.delta = delta
        self.rungs = tuple(rungs) if rungs is not None else None
        self.signal = signal
        self.calibration = calibration
        self.by_dataset = by_dataset
        self.max_rungs = max_rungs
        self.epsilons = tuple(epsilons)
        self.grid = grid
        self.on_missing = on_missing
        self.validation_fraction = validation_fraction

    # ---- fitting ------------------------------------------------------------------------
    def fit(self, train: OutcomeTable, validation: OutcomeTable | None = None) -> Self:
        """Calibrate and choose rungs on ``train``; certify thresholds on ``validation``."""
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if validation is None:
            train, validation = train_validation(train, self.validation_fraction)
        self.fit_base(train)
        return self.certify(validation)

    def fit_base(self, train: OutcomeTable) -> Self:
        """Everything that must not see the validation prompts: signal, rungs, candidates."""
        self.stats_ = ModelStats.of(train)
        self.calibrated_ = CalibratedSignal(
            make_signal(self.signal), self.calibration, self.by_dataset
        ).fit(train)
        p = self.calibrated_.transform(train)
        rungs = self.rungs if self.rungs is not None else self._choose_rungs(train, p)
        self.rungs_ = tuple(rungs)
        cols = [train.model_index(m) for m in self.rungs_[:-1]]
        finite = p[:, cols][np.isfinite(p[:, cols])] if cols else np.array([])
        levels = np.quantile(finite, np.linspace(1.0, 0.0, self.grid)) if len(finite) else []
        self.candidates_ = np.concatenate([[np.inf], np.unique(levels)[::-1]])
        return self

    def _choose_rungs(self, train: OutcomeTable, p: FloatMatrix) -> tuple[str, ...]:
        reference = self.stats_.by_quality()[0]
        cheaper = [
            m
            for m in frontier_candidates(self.stats_, 8)
            if self.stats_.cost[m] < self.stats_.cost[reference]
        ]
        best: tuple[str, ...] = (reference,)
        best_cost = self.stats_.cost[reference]
        target = self.epsilon / 2  # leave room for the validation test's margin
        for size in range(1, self.max_rungs):
            for lower in _combinations(cheaper, size):
                rungs = (*lower, reference)
                for t in np.linspace(1.0, 0.0, 21):
                    loss, cost = self._loss_cost(train, train.known, p, rungs, t)
                    if np.nanmean(loss) <= target and cost < best_cost:
                        best, best_cost = rungs, cost
        return best

    def _loss_cost(
        self,
        table: OutcomeTable,
        available: BoolMatrix,
        p: FloatMatrix,
        rungs: Sequence[str],
        t: float,
    ) -> tuple[FloatVector, float]:
        d = self._decisions(table, available, p, t, rungs)
        ref = table.score[:, table.model_index(rungs[-1])]
        got = table.score[np.arange(table.n_prompts), d.final]
        loss = np.clip(ref - got, 0.0, 1.0)
        paid = (np.nan_to_num(table.cost) * d.called).sum(axis=1) + d.overhead_cost
        return loss, float(paid.mean())

    def certify(self, validation: OutcomeTable) -> Self:
        """Run learn-then-test on ``validation`` for every ε of the knob and ``epsilon``."""
        p = self.calibrated_.transform(validation)
        losses = np.vstack(
            [
                self._loss_cost(validation, validation.known, p, self.rungs_, t)[0]
                for t in self.candidates_
            ]
        )
        losses = losses[:, ~np.isnan(losses).any(axis=0)]
        if not losses.shape[1]:
            raise ValueError("no validation prompt has scores for the cascade's models")
        self.knobs_ = np.array(sorted({*self.epsilons, self.epsilon}), dtype=np.float64)
        picks = [learn_then_test(losses, float(e), self.delta)[0] for e in self.knobs_]
        self.thresholds_ = np.array([self.candidates_[max(i, 0)] for i in picks])
        self.n_calibration_ = int(losses.shape[1])
        return self

    # ---- deciding -----------------------------------------------------------------------
    def threshold_for(self, epsilon: float) -> float:
        """The certified common threshold for a tolerance (the largest knob ≤ it)."""
        fits = np.flatnonzero(self.knobs_ <= epsilon + 1e-12)
        return float(self.thresholds_[fits[-1]]) if len(fits) else float("inf")

    def _decisions(
        self,
        table: OutcomeTable,
        available: BoolMatrix,
        p: FloatMatrix,
        t: float,
        rungs: Sequence[str] | None = None,
    ) -> Decisions:
        rungs = self.rungs_ if rungs is None else rungs
        tau = [t] * (len(rungs) - 1) + [0.0]
        signal = self.calibrated_.signal
        return ladder_decisions(
            table, available, p, rungs, tau, self.stats_, signal, self.on_missing
        )

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """Replay the certified cascade of every ε."""
        p = self.calibrated_.transform(table)
        return [
            (float(e), self._decisions(table, available, p, float(t)))
            for e, t in zip(self.knobs_, self.thresholds_, strict=True)
        ]

    def start(self, query: Query, allowed: frozenset[str]) -> LiveFlow:
        """The live ladder with the threshold certified for ``epsilon``."""
        t = self.threshold_for(self.epsilon)
        tau = [t] * (len(self.rungs_) - 1) + [0.0]
        ladder = live_ladder(self.rungs_, tau, allowed, self.stats_)
        label = self.label or "guaranteed-cascade"
        return (yield from run_ladder(query, ladder, self.calibrated_, self.on_missing, label))

    def explain(self, query: Query, allowed: frozenset[str]) -> Plan:
        """The rungs, with the live tolerance as the knob."""
        label = self.label or "guaranteed-cascade"
        return ladder_plan(label, self.rungs_, allowed, self.stats_, self.epsilon)

    def guarantee(self, epsilon: float | None = None) -> str:
        """The guarantee in words, for ``epsilon`` (default: the live one)."""
        e = self.epsilon if epsilon is None else epsilon
        return (
            f"With probability at least {1 - self.delta:.0%} over the {self.n_calibration_} "
            f"validation prompts, the expected score of this cascade on new prompts from the "
            f"same distribution is at least that of {self.rungs_[-1]} minus {e:g} "
            f"(learn-then-test with fixed-sequence testing, threshold {self.threshold_for(e):.4g})."
        )

    # ---- persistence ----------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Parameters, rungs, certified thresholds and the calibrated signal."""
        return {
            "params": {
                "epsilon": self.epsilon,
                "delta": self.delta,
                "calibration": self.calibration,
                "by_dataset": self.by_dataset,
                "max_rungs": self.max_rungs,
                "epsilons": list(self.epsilons),
                "grid": self.grid,
                "on_missing": self.on_missing,
                "validation_fraction": self.validation_fraction,
            },
            "rungs": list(self.rungs_),
            "candidates": self.candidates_,
            "knobs": self.knobs_,
            "thresholds": self.thresholds_,
            "n_calibration": self.n_calibration_,
            "stats": self.stats_.state(),
            "calibrated": self.calibrated_.get_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a fitted guaranteed cascade."""
        calibrated = CalibratedSignal.from_state(state["calibrated"])
        obj = cls(rungs=state["rungs"], signal=calibrated.signal, **state["params"])
        obj.rungs_ = tuple(state["rungs"])
        obj.candidates_ = np.asarray(state["candidates"], dtype=np.float64)
        obj.knobs_ = np.asarray(state["knobs"], dtype=np.float64)
        obj.thresholds_ = np.asarray(state["thresholds"], dtype=np.float64)
        obj.n_calibration_ = int(state["n_calibration"])
        obj.stats_ = ModelStats(**state["stats"])
        obj.calibrated_ = calibrated
        return obj


def _combinations(items: Sequence[str], size: int) -> list[tuple[str, ...]]:
    import itertools

    return list(itertools.combinations(items, size))


@dataclass(frozen=True)
class GuaranteeCheck:
    """Outcome of re-splitting for one ε: how often the stated bound failed on the test part.

    ``drops`` is the realised ``mean(s_ref − s_cascade)`` on each test part (the quantity the
    guarantee bounds); ``losses`` the realised certified loss ``mean(max(0, s_ref −
    s_cascade))`` (never below the drop); ``costs`` and ``reference_costs`` the cascade's and
    the reference's mean cost per query there.
    """

    epsilon: float
    delta: float
    splits: int
    drops: FloatVector
    losses: FloatVector
    costs: FloatVector
    reference_costs: FloatVector

    @property
    def failures(self) -> int:
        """Splits whose realised drop exceeded ε."""
        return int((self.drops > self.epsilon + 1e-12).sum())

    @property
    def failure_share(self) -> float:
        """Share of splits whose realised drop exceeded ε."""
        return self.failures / self.splits if self.splits else float("nan")

    @property
    def loss_failure_share(self) -> float:
        """Share of splits whose realised certified loss exceeded ε."""
        if not self.splits:
            return float("nan")
        return float((self.losses > self.epsilon + 1e-12).mean())


def check_guarantee(
    policy: GuaranteedCascade,
    pool: OutcomeTable,
    splits: int = 200,
    validation_fraction: float = 0.5,
    seed: int = 0,
    epsilons: Sequence[float] | None = None,
) -> list[GuaranteeCheck]:
    """Re-split ``pool`` into validation/test ``splits`` times; certify on validation and
    measure the drop versus the reference on test, for every ε in ``epsilons`` (default: the
    policy's knob). ``policy`` must be ``fit_base``-ed on data disjoint from ``pool``; it is
    left certified on the last split."""
    rng = np.random.default_rng(seed)
    n_val = round(validation_fraction * pool.n_prompts)
    if not 0 < n_val < pool.n_prompts:
        raise ValueError("validation_fraction leaves no validation or no test prompt")
    ref = pool.model_index(policy.rungs_[-1])
    p_all = policy.calibrated_.transform(pool)
    chosen = [float(e) for e in (epsilons if epsilons is not None else policy.epsilons)]
    policy.epsilons = tuple(sorted({*policy.epsilons, *chosen}))
    drops, losses, costs, ref_costs = (np.empty((len(chosen), splits)) for _ in range(4))
    for s in range(splits):
        order = rng.permutation(pool.n_prompts)
        val, test = order[:n_val], order[n_val:]
        policy.certify(pool.take(val))
        table = pool.take(test)
        rows = np.arange(table.n_prompts)
        for k, e in enumerate(chosen):
            d = policy._decisions(table, table.known, p_all[test], policy.threshold_for(e))
            diff = table.score[:, ref] - table.score[rows, d.final]
            drops[k, s] = float(np.nanmean(diff))
            losses[k, s] = float(np.nanmean(np.clip(diff, 0.0, 1.0)))
            paid = (np.nan_to_num(table.cost) * d.called).sum(axis=1) + d.overhead_cost
            costs[k, s] = float(paid.mean())
            ref_costs[k, s] = float(np.nanmean(table.cost[:, ref]))
    return [
        GuaranteeCheck(e, policy.delta, splits, drops[k], losses[k], costs[k], ref_costs[k])
        for k, e in enumerate(chosen)
    ]
