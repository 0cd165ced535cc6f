"""Learn-then-test: pick a parameter whose risk is at most ε with probability ≥ 1 − δ.

Angelopoulos, Bates, Candès, Jordan & Lei, "Learn then Test: Calibrating Predictive
Algorithms to Achieve Risk Control" (arXiv:2110.01052, 2021). For each candidate parameter
``t_j`` the null hypothesis ``H_j: R(t_j) > ε`` is tested with a valid p-value computed from
the ``n`` calibration losses; the selected parameters are those a family-wise-error-controlling
procedure rejects, so that ``P(R(t̂) ≤ ε) ≥ 1 − δ`` over the draw of the calibration data.
Here the candidates are tested in a fixed sequence (safest first) and testing stops at the
first p-value above δ, which controls the family-wise error at δ without any correction.

p-values, for losses in [0, 1] with empirical mean ``R̂``:

* losses in {0, 1}: the exact binomial tail ``P(Binomial(n, ε) ≤ n·R̂)``;
* otherwise Hoeffding–Bentkus (Bates et al., "Distribution-free, risk-controlling prediction
  sets", JACM 2021): ``min(exp(−n·h(min(R̂, ε), ε)), e·P(Binomial(n, ε) ≤ ⌈n·R̂⌉))`` with
  ``h(a, b) = a·log(a/b) + (1 − a)·log((1 − a)/(1 − b))``.
"""

from __future__ import annotations

import math

import numpy as np

from llmdispatch.types import FloatMatrix, FloatVector


def _kl_bernoulli(a: float, b: float) -> float:
    a = min(max(a, 1e-12), 1 - 1e-12)
    return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))


def risk_pvalue(losses: FloatVector, epsilon: float) -> float:
    """A valid p-value for ``H: E[loss] > ε`` from i.i.d. losses in [0, 1]."""
    from scipy.stats import binom

    x = np.asarray(losses, dtype=np.float64)
    if x.ndim != 1 or not len(x):
        raise ValueError("need a non-empty 1-D vector of losses")
    if np.any((x < 0) | (x > 1)):
        raise ValueError("losses must lie in [0, 1]")
    if not 0 < epsilon < 1:
        return 1.0 if epsilon <= 0 else 0.0
    n, mean = len(x), float(x.mean())
    if np.all((x == 0) | (x == 1)):
        return float(binom.cdf(round(n * mean), n, epsilon))
    hoeffding = math.exp(-n * _kl_bernoulli(min(mean, epsilon), epsilon))
    bentkus = math.e * float(binom.cdf(math.ceil(n * mean), n, epsilon))
    return min(hoeffding, bentkus, 1.0)


def fixed_sequence(pvalues: FloatVector, delta: float) -> int:
    """Index of the last hypothesis rejected before the first p-value above δ (−1: none)."""
    above = np.flatnonzero(np.asarray(pvalues) > delta)
    return (int(above[0]) if len(above) else len(pvalues)) - 1


def learn_then_test(losses: FloatMatrix, epsilon: float, delta: float) -> tuple[int, FloatVector]:
    """Fixed-sequence LTT over candidates ordered safest first.

    ``losses[j, i]`` is candidate ``j``'s loss on calibration prompt ``i``. Returns the index
    of the last certified candidate (−1: none) and every candidate's p-value.
    """
    pvals = np.array([risk_pvalue(row, epsilon) for row in losses])
    return fixed_sequence(pvals, delta), pvals
