"""Router → cascade: a router picks the entry model, a ladder escalates above it.

The router picks the entry model, ``argmax Q̂ − λ_e·Ĉ/c̄`` over all
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

Shared parts (the router, the calibrated signal, the tuning prompts, the cost corrections)
are in :mod:`llmdispatch.policies.composite`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from llmdispatch.data.table import OutcomeTable
from llmdispatch.policies.base import Decisions, Plan
from llmdispatch.policies.cascade import ladder_decisions, live_ladder
from llmdispatch.policies.cascade_fit import pareto_front
from llmdispatch.policies.composite import TIE, Inputs, RouterWithSignal
from llmdispatch.policies.ladder import LiveFlow, NoAnswerError, run_ladder
from llmdispatch.policies.router import DEFAULT_LAMBDAS
from llmdispatch.query import Query
from llmdispatch.registry import register
from llmdispatch.signals.base import Signal
from llmdispatch.signals.calibrated import group_label, group_labels
from llmdispatch.types import BoolMatrix, FloatMatrix, IntVector

#: Thresholds on the calibrated signal tried for the router→cascade ladder.
TAUS: tuple[float, ...] = tuple(np.round(np.linspace(0.3, 0.95, 14), 3).tolist())
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
    utility = np.where(available, Q - (lam + TIE) * C / scale, -np.inf)
    pick = utility.argmax(axis=1)
    return np.where(available.any(axis=1), pick, -1).astype(np.intp)


@register("policy", "router-cascade")
class RouterCascade(RouterWithSignal):
    """The router picks the entry model; the ladder escalates above it by the signal.

    Models are ordered by training cost. The entry is the router's choice among all models
    (or, for the entry λ ``∞``, the ladder's cheapest rung); the rungs tried after it are the
    ladder's rungs dearer than the entry, each accepted when its calibrated signal is at least
    ``τ`` (the last answers unchecked).

    Parameters
    ----------
    estimator, encoder, router_params, signal, calibration, by_dataset, lam, lambdas:
        As for :class:`~llmdispatch.policies.cascade_routing.CascadeRouting`.
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
        As for :class:`~llmdispatch.policies.cascade_routing.CascadeRouting`.
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
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,
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
            k = int(np.argmax(quality - (lam + TIE) * cost / self.scale))
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
