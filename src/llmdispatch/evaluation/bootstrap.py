"""Paired bootstrap over prompts: confidence intervals for every figure and every difference.

Efron & Tibshirani (1993), percentile intervals. One set of ``B`` resamples of the test
prompts (multinomial counts) is drawn per table and shared by every policy and by the single
models, so a difference between two policies is computed on the same resampled prompts
(paired), which is far tighter than comparing two separate intervals. Each resample
recomputes the curve's means per knob value, the single models' means (hence ``c_min``,
``c_max`` and ``q_best``) and then every metric of :mod:`.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.metrics import References, aiq, curve_metrics, gap_closed
from llmdispatch.evaluation.replay import PolicyRun
from llmdispatch.types import FloatMatrix


@dataclass(frozen=True)
class Resamples:
    """``counts[b, i]``: how often prompt ``i`` appears in resample ``b``."""

    counts: FloatMatrix

    @classmethod
    def draw(cls, n: int, b: int, seed: int = 0) -> Resamples:
        """``b`` bootstrap resamples of ``n`` prompts."""
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
        return cls(counts)

    @property
    def b(self) -> int:
        """Number of resamples."""
        return int(self.counts.shape[0])

    def means(self, values: FloatMatrix) -> FloatMatrix:
        """Resampled means of each row of ``values`` (K, n) → (B, K)."""
        return np.asarray(self.counts @ values.T / self.counts.sum(axis=1, keepdims=True))

    def column_means(self, values: FloatMatrix) -> FloatMatrix:
        """Resampled NaN-aware means of each column of ``values`` (n, m) → (B, m)."""
        known = ~np.isnan(values)
        sums = self.counts @ np.where(known, values, 0.0)
        weights = self.counts @ known.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(np.where(weights > 0, sums / weights, np.nan))


def references_samples(table: OutcomeTable, rs: Resamples) -> list[References]:
    """The single models' points on every resample."""
    q = rs.column_means(table.score)
    c = rs.column_means(table.cost)
    return [References(table.models, c[i], q[i]) for i in range(rs.b)]


def metric_samples(
    run: PolicyRun, refs: list[References], rs: Resamples, *, aiq_only: bool = False
) -> dict[str, np.ndarray]:
    """Every metric of ``run`` (or only AIQ) on every resample: name → (B,)."""
    q = rs.means(run.quality)
    c = rs.means(run.cost)
    if aiq_only:
        return {"aiq": np.array([aiq(c[i], q[i], refs[i]) for i in range(rs.b)])}
    rows = [curve_metrics(c[i], q[i], refs[i]) for i in range(rs.b)]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def zero_samples(refs: list[References]) -> np.ndarray:
    """The zero router's AIQ on every resample."""
    out = []
    for r in refs:
        hull = r.zero_hull()
        out.append(aiq(hull.cost, hull.quality, r))
    return np.array(out)


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval, ignoring NaN (``inf`` stays ``inf``: a target never reached)."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[~np.isnan(s)]
    if len(s) == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    # No interpolation between order statistics: inf (never reached) stays inf, not NaN.
    lo, hi = np.percentile(s, [100 * a, 100 * (1 - a)], method="inverted_cdf")
    return float(lo), float(hi)


def gap_samples(aiq: np.ndarray, zero: np.ndarray, oracle: np.ndarray | None) -> np.ndarray | None:
    """Share of the zero-to-oracle AIQ gap closed, per resample."""
    if oracle is None:
        return None
    return np.array([gap_closed(a, z, o) for a, z, o in zip(aiq, zero, oracle, strict=True)])


def paired_difference(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], metric: str
) -> np.ndarray:
    """``a − b`` for one metric on the shared resamples."""
    return np.asarray(a[metric] - b[metric])
