"""The cascade: ordered rungs, a calibrated signal and a threshold per rung.

A cheap model answers first; its answer is accepted when the calibrated probability that it
is correct clears the rung's threshold, else the next rung is called (rule in
:mod:`llmdispatch.policies.ladder`). Every rung tried is paid for, and so is every
verification call a signal needs (``Decisions.overhead_cost`` adds what the table does not
already bill: for ``cascades9``'s recorded self-checks it already does).

Offline, ``sweep`` replays the cascade from the recorded confidences for a range of threshold
shifts (the knob: every threshold moves by the same amount); live, ``start`` runs the same
ladder at the configured ``shift``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from llmdispatch.data.table import OutcomeTable
from llmdispatch.policies.base import Candidate, Decisions, Plan, Policy
from llmdispatch.policies.ladder import LiveFlow, replay_ladder, run_ladder
from llmdispatch.query import Query
from llmdispatch.registry import REGISTRY, register
from llmdispatch.signals.base import Signal
from llmdispatch.signals.calibrated import CalibratedSignal
from llmdispatch.types import BoolMatrix, FloatMatrix, FloatVector

DEFAULT_SHIFTS = tuple(np.round(np.linspace(-1.0, 1.0, 41), 3))


def make_signal(spec: Signal | str) -> Signal:
    """A signal instance from an instance or a registered name."""
    if isinstance(spec, Signal):
        return spec
    obj: Signal = REGISTRY.get("signal", spec)()
    return obj


class ModelStats:
    """Mean training quality and cost per model: the fallback order and ``explain``'s numbers."""

    def __init__(self, quality: dict[str, float], cost: dict[str, float]) -> None:
        self.quality = quality
        self.cost = cost

    @classmethod
    def of(cls, table: OutcomeTable) -> ModelStats:
        """Per-model means over the prompts where each is known."""
        q, c = table.mean_score(), table.mean_cost()
        return cls(
            {m: float(np.nan_to_num(q[j], nan=0.0)) for j, m in enumerate(table.models)},
            {m: float(np.nan_to_num(c[j], nan=0.0)) for j, m in enumerate(table.models)},
        )

    def by_quality(self) -> list[str]:
        """Models, best mean quality first (ties: cheaper first)."""
        return sorted(self.quality, key=lambda m: (-self.quality[m], self.cost[m], m))

    def by_cost(self, models: Sequence[str] | None = None) -> list[str]:
        """Models, cheapest first (ties: better first)."""
        names = list(models) if models is not None else list(self.cost)
        return sorted(names, key=lambda m: (self.cost[m], -self.quality[m], m))

    def state(self) -> dict[str, Any]:
        """JSON-able state."""
        return {"quality": self.quality, "cost": self.cost}


def ladder_decisions(
    table: OutcomeTable,
    available: BoolMatrix,
    p: FloatMatrix,
    rungs: Sequence[str],
    thresholds: FloatVector | Sequence[float],
    stats: ModelStats,
    signal: Signal,
    on_missing: str = "escalate",
) -> Decisions:
    """Offline decisions of one ladder on ``table``; ``p`` is the calibrated signal matrix.

    Prompts where no rung is available fall back to the best available model by training
    quality, called alone.
    """
    cols = [table.model_index(m) for m in rungs]
    replay = replay_ladder(p[:, cols], available[:, cols], thresholds, on_missing)
    n, m = table.n_prompts, table.n_models
    final = np.empty(n, dtype=np.intp)
    called = np.zeros((n, m), dtype=bool)
    called[:, cols] = replay.called
    has = replay.final >= 0
    final[has] = np.asarray(cols, dtype=np.intp)[replay.final[has]]
    if (~has).any():
        order = [table.model_index(x) for x in stats.by_quality() if x in table.models]
        order += [j for j in range(m) if j not in order]
        pref = available[:, order]
        pick = np.asarray(order)[np.argmax(pref, axis=1)]
        final[~has] = pick[~has]
        called[np.flatnonzero(~has), pick[~has]] = True
    extra_cost, extra_latency = signal.offline_overhead(table)
    checked = np.zeros((n, m), dtype=bool)
    checked[:, cols] = replay.checked
    return Decisions(
        final=final,
        called=called,
        overhead_cost=(extra_cost * checked).sum(axis=1),
        overhead_latency_ms=(extra_latency * checked).sum(axis=1),
    )


def live_ladder(
    rungs: Sequence[str], thresholds: Sequence[float], allowed: frozenset[str], stats: ModelStats
) -> list[tuple[str, float]]:
    """The allowed rungs with their thresholds; the best allowed model when none is."""
    ladder = [(m, float(t)) for m, t in zip(rungs, thresholds, strict=True) if m in allowed]
    if not ladder:
        ladder = [(m, 0.0) for m in stats.by_quality() if m in allowed][:1]
    return ladder


def ladder_plan(
    label: str, rungs: Sequence[str], allowed: frozenset[str], stats: ModelStats, knob: float
) -> Plan:
    """``explain`` for ladder policies: rungs in order, then the models they leave out."""
    ladder = live_ladder(rungs, [0.0] * len(rungs), allowed, stats)
    chosen = [m for m, _ in ladder]
    cands = [
        Candidate(m, stats.quality.get(m, 0.0), stats.cost.get(m, 0.0), stats.quality.get(m, 0.0))
        for m in chosen
    ]
    for m in sorted(set(stats.quality) - set(chosen)):
        why = "not allowed" if m not in allowed else "not a rung"
        cands.append(Candidate(m, stats.quality[m], stats.cost[m], stats.quality[m], why))
    return Plan(
        policy=label, choice=chosen[0] if chosen else "", candidates=tuple(cands), knob=knob
    )


@register("policy", "cascade")
class Cascade(Policy):
    """A fixed cascade: rungs, one calibrated signal, a threshold per rung.

    Parameters
    ----------
    rungs:
        Models, called in this order.
    thresholds:
        P(correct) needed to accept each rung but the last (one value for all, or one per
        rung; a value for the last rung is ignored).
    signal:
        A :class:`~llmdispatch.signals.base.Signal` or a registered signal name.
    calibration, by_dataset:
        How the signal is calibrated (see :class:`CalibratedSignal`).
    shift:
        The live operating point: every threshold moves by ``shift``.
    shifts:
        Knob values ``sweep`` replays.
    on_missing:
        ``escalate`` (default) or ``accept`` when a rung's signal is missing.
    """

    knob_name = "threshold_shift"

    def __init__(
        self,
        rungs: Sequence[str],
        thresholds: Sequence[float] | float = 0.5,
        signal: Signal | str = "recorded",
        calibration: str = "isotonic",
        by_dataset: bool = True,
        shift: float = 0.0,
        shifts: Sequence[float] = DEFAULT_SHIFTS,
        on_missing: str = "escalate",
    ) -> None:
        self.rungs = tuple(rungs)
        self.thresholds = thresholds
        self.signal = signal
        self.calibration = calibration
        self.by_dataset = by_dataset
        self.shift = shift
        self.shifts = tuple(shifts)
        self.on_missing = on_missing

    def _thresholds(self) -> FloatVector:
        k = len(self.rungs)
        if isinstance(self.thresholds, int | float):
            return np.full(k, float(self.thresholds))
        tau = np.asarray(list(self.thresholds), dtype=np.float64)
        if len(tau) == k - 1:
            tau = np.append(tau, 0.0)
        if tau.shape != (k,):
            raise ValueError(f"need {k - 1} or {k} thresholds for {k} rungs, got {len(tau)}")
        return tau

    def fit(self, train: OutcomeTable, validation: OutcomeTable | None = None) -> Self:
        """Calibrate the signal on ``train`` (the thresholds are given, nothing is tuned)."""
        if not self.rungs:
            raise ValueError("a cascade needs at least one rung")
        for m in self.rungs:
            train.model_index(m)
        self.tau_ = self._thresholds()
        self.stats_ = ModelStats.of(train)
        self.calibrated_ = CalibratedSignal(
            make_signal(self.signal), self.calibration, self.by_dataset
        ).fit(train)
        return self

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """Replay for every threshold shift in ``shifts``."""
        p = self.calibrated_.transform(table)
        return [
            (
                float(s),
                ladder_decisions(
                    table,
                    available,
                    p,
                    self.rungs,
                    self.tau_ + s,
                    self.stats_,
                    self.calibrated_.signal,
                    self.on_missing,
                ),
            )
            for s in self.shifts
        ]

    def start(self, query: Query, allowed: frozenset[str]) -> LiveFlow:
        """The live ladder at ``shift``."""
        ladder = live_ladder(self.rungs, list(self.tau_ + self.shift), allowed, self.stats_)
        label = self.label or "cascade"
        return (yield from run_ladder(query, ladder, self.calibrated_, self.on_missing, label))

    def explain(self, query: Query, allowed: frozenset[str]) -> Plan:
        """The rungs this query would climb, with training quality and cost per model."""
        return ladder_plan(self.label or "cascade", self.rungs, allowed, self.stats_, self.shift)

    def get_state(self) -> dict[str, Any]:
        """Parameters, thresholds, training statistics and the calibrated signal."""
        return {
            "rungs": list(self.rungs),
            "thresholds": self.tau_,
            "shift": self.shift,
            "shifts": list(self.shifts),
            "on_missing": self.on_missing,
            "calibration": self.calibration,
            "by_dataset": self.by_dataset,
            "stats": self.stats_.state(),
            "calibrated": self.calibrated_.get_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a fitted cascade."""
        calibrated = CalibratedSignal.from_state(state["calibrated"])
        obj = cls(
            state["rungs"],
            list(np.asarray(state["thresholds"], dtype=np.float64)),
            calibrated.signal,
            state["calibration"],
            state["by_dataset"],
            state["shift"],
            state["shifts"],
            state["on_missing"],
        )
        obj.tau_ = np.asarray(state["thresholds"], dtype=np.float64)
        obj.stats_ = ModelStats(**state["stats"])
        obj.calibrated_ = calibrated
        return obj
