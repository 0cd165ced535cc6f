"""Convex mixing weights for an ensemble or a stack of quality estimators.

A mix ``Σ wᵢ·Q̂ᵢ`` with ``wᵢ`` multiples of ``1/steps`` that sum to one is scored by a loss
on held-out rows (lower is better): the Brier score of the mixed estimates, or anything else
that maps a quality matrix to a number (the router passes the negative area under its
validation cost/quality curve). The grid is searched exactly while it is small, by ensemble
selection (Caruana et al. 2004) beyond.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations, pairwise
from math import comb

import numpy as np

from llmdispatch.types import BoolMatrix, FloatMatrix, FloatVector

#: A mix's score on held-out rows: lower is better.
MixLoss = Callable[[FloatMatrix], float]
#: Larger weight grids than this are searched greedily (ensemble selection) instead.
EXACT_GRID_MAX = 10_000


def brier(q: FloatMatrix, truth: FloatMatrix, known: BoolMatrix) -> float:
    """Mean squared error of ``q`` against ``truth`` on the ``known`` cells."""
    return float(((q - truth) ** 2)[known].mean())


def brier_loss(truth: FloatMatrix, known: BoolMatrix) -> MixLoss:
    """The Brier score against ``truth`` on the ``known`` cells, as a mix loss."""
    return lambda q: brier(q, truth, known)


def simplex(n: int, steps: int) -> np.ndarray:
    """Every weight vector of ``n`` multiples of ``1/steps`` that sum to one (stars and
    bars: the ``n - 1`` bar positions among ``steps + n - 1`` slots)."""
    rows = []
    for bars in combinations(range(steps + n - 1), n - 1):
        edges = (-1, *bars, steps + n - 1)
        rows.append([b - a - 1 for a, b in pairwise(edges)])
    return np.array(rows, dtype=np.float64) / steps


def mix_weights(predictions: Sequence[FloatMatrix], loss: MixLoss, steps: int) -> FloatVector:
    """Convex weights, multiples of ``1/steps``, of the members' estimates whose mix has the
    lowest ``loss``.

    Every point of the grid is tried while there are at most :data:`EXACT_GRID_MAX`; beyond,
    ensemble selection (Caruana et al. 2004): start from the best single member and add,
    ``steps - 1`` times, with replacement, the member that lowers the mix's loss most.
    """
    n = len(predictions)
    if comb(steps + n - 1, n - 1) <= EXACT_GRID_MAX:
        grid = simplex(n, steps)
        scores = [loss(sum(w * q for w, q in zip(ws, predictions, strict=True))) for ws in grid]
        return np.asarray(grid[int(np.argmin(scores))], dtype=np.float64)
    counts = np.zeros(n)
    total = np.zeros_like(predictions[0])
    for step in range(steps):
        scores = [loss((total + q) / (step + 1)) for q in predictions]
        best = int(np.argmin(scores))
        counts[best] += 1
        total = total + predictions[best]
    return np.asarray(counts / steps, dtype=np.float64)
