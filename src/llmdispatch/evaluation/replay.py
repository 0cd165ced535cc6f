"""Replay a policy over an outcome table: per-prompt quality, cost and latency per knob value."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from llmdispatch.data.table import OutcomeTable
from llmdispatch.policies.base import Decisions, Policy
from llmdispatch.types import FloatMatrix, FloatVector


class ReplayError(RuntimeError):
    """A policy did something the recorded data cannot answer (e.g. chose an unknown outcome)."""


@dataclass(frozen=True)
class PolicyRun:
    """A policy's replay: one row per knob value, one column per prompt.

    Per-prompt values are kept (not only means) so that confidence intervals can be
    bootstrapped over prompts, paired across policies replayed on the same table.
    """

    label: str
    knob_name: str
    knobs: FloatVector  # (K,)
    quality: FloatMatrix  # (K, n): score of the answering model
    cost: FloatMatrix  # (K, n): USD of every call made, overheads included
    latency_ms: FloatMatrix  # (K, n): sum of the calls' latencies (NaN where unknown)
    called: FloatMatrix  # (K, m): share of prompts on which each model was called
    answered: FloatMatrix  # (K, m): share of prompts each model answered
    rungs: FloatVector  # (K,): mean number of models called per prompt
    datasets: npt.NDArray[np.str_]  # (n,)
    models: tuple[str, ...]
    missing_costs: int = 0

    @property
    def mean_cost(self) -> FloatVector:
        """Mean cost per query at each knob value."""
        return np.asarray(self.cost.mean(axis=1), dtype=np.float64)

    @property
    def mean_quality(self) -> FloatVector:
        """Mean quality at each knob value."""
        return np.asarray(self.quality.mean(axis=1), dtype=np.float64)

    @property
    def mean_latency_ms(self) -> FloatVector:
        """Mean latency at each knob value over prompts where it is known."""
        lat = self.latency_ms
        counts = np.maximum((~np.isnan(lat)).sum(axis=1), 1)
        return np.asarray(np.nansum(lat, axis=1) / counts, dtype=np.float64)

    def columns(self, rows: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> PolicyRun:
        """The same run restricted to some prompts (a data-set label, a bootstrap sample).

        ``called``/``answered``/``rungs`` are left as computed on all prompts.
        """
        return replace(
            self,
            quality=self.quality[:, rows],
            cost=self.cost[:, rows],
            latency_ms=self.latency_ms[:, rows],
            datasets=self.datasets[rows],
        )


def replay(policy: Policy, table: OutcomeTable, label: str | None = None) -> PolicyRun:
    """Run ``policy.sweep`` on ``table`` (scores hidden unless the policy needs them)."""
    available = table.known
    view = table if policy.needs_scores else table.blind()
    sweep = policy.sweep(view, available)
    if not sweep:
        raise ReplayError(f"{label or policy.label or type(policy).__name__}: empty sweep")
    return run_from_decisions(
        label or policy.label or type(policy).__name__, policy.knob_name, sweep, table
    )


def run_from_decisions(
    label: str, knob_name: str, sweep: list[tuple[float, Decisions]], table: OutcomeTable
) -> PolicyRun:
    """Turn a policy's decisions into per-prompt quality, cost and latency."""
    n, m = table.n_prompts, table.n_models
    rows = np.arange(n)
    missing_cost = np.isnan(table.cost)
    cost_filled = np.where(missing_cost, 0.0, table.cost)
    lat_filled = np.where(np.isnan(table.latency_ms), 0.0, table.latency_ms)
    lat_known = ~np.isnan(table.latency_ms)
    k = len(sweep)
    quality, cost, latency = np.empty((k, n)), np.empty((k, n)), np.empty((k, n))
    called_share, answered_share, rungs = np.empty((k, m)), np.empty((k, m)), np.empty(k)
    knobs = np.empty(k)
    missing = 0
    for r, (knob, d) in enumerate(sweep):
        if d.final.shape != (n,) or d.called.shape != (n, m):
            raise ReplayError(f"{label}: decisions have the wrong shape for table {table.name}")
        q = table.score[rows, d.final]
        if np.isnan(q).any():
            bad = int(np.flatnonzero(np.isnan(q))[0])
            raise ReplayError(
                f"{label}: chose {table.models[d.final[bad]]!r} for prompt {table.ids[bad]!r}, "
                "which has no recorded score there (policies must respect `available`)"
            )
        knobs[r] = knob
        quality[r] = q
        cost[r] = (cost_filled * d.called).sum(axis=1) + d.overhead_cost
        missing += int((missing_cost & d.called).sum())
        lat = (lat_filled * d.called).sum(axis=1) + d.overhead_latency_ms
        unknown = (d.called & ~lat_known).any(axis=1)
        latency[r] = np.where(unknown, np.nan, lat)
        called_share[r] = d.called.mean(axis=0)
        answered_share[r] = np.bincount(d.final, minlength=m) / max(n, 1)
        rungs[r] = d.called.sum(axis=1).mean()
    return PolicyRun(
        label=label,
        knob_name=knob_name,
        knobs=knobs,
        quality=quality,
        cost=cost,
        latency_ms=latency,
        called=called_share,
        answered=answered_share,
        rungs=rungs,
        datasets=table.datasets,
        models=table.models,
        missing_costs=missing,
    )
