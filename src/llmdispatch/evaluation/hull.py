"""The non-decreasing convex hull of cost/quality points (RouterBench).

Hu et al., "RouterBench: A Benchmark for Multi-LLM Routing System", arXiv:2403.12031 (2024),
§3: any two operating points can be mixed at random (send a share of queries to each), so
every point on the segment between them is achievable; and spending more can never be
forced to lower quality. The achievable frontier of a set of points is therefore the upper
convex hull of the points that raise quality as cost rises, extended flat to the right of
its best point. Below its cheapest point the frontier is undefined (``NaN``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmdispatch.types import FloatVector


@dataclass(frozen=True)
class Hull:
    """Vertices of a non-decreasing concave frontier: costs ascending, qualities ascending."""

    cost: FloatVector
    quality: FloatVector

    def at(self, c: FloatVector | float) -> FloatVector:
        """Frontier quality at cost(s) ``c``; ``NaN`` below the cheapest vertex, flat above."""
        x = np.atleast_1d(np.asarray(c, dtype=np.float64))
        out = np.interp(x, self.cost, self.quality)
        return np.where(x < self.cost[0] - 1e-15 * max(1.0, abs(self.cost[0])), np.nan, out)

    def cost_to_reach(self, q: float) -> float:
        """The least cost at which the frontier reaches quality ``q`` (``inf`` if never)."""
        if q <= self.quality[0]:
            return float(self.cost[0])
        if q > self.quality[-1] + 1e-12:
            return float("inf")
        j = int(np.searchsorted(self.quality, q - 1e-12))
        c0, c1 = self.cost[j - 1], self.cost[j]
        q0, q1 = self.quality[j - 1], self.quality[j]
        if q1 <= q0:
            return float(c1)
        return float(c0 + (q - q0) * (c1 - c0) / (q1 - q0))


def nondecreasing_hull(cost: FloatVector, quality: FloatVector) -> Hull:
    """The hull of points ``(cost[i], quality[i])`` (NaN points are ignored)."""
    c = np.asarray(cost, dtype=np.float64).ravel()
    q = np.asarray(quality, dtype=np.float64).ravel()
    ok = ~(np.isnan(c) | np.isnan(q))
    c, q = c[ok], q[ok]
    if len(c) == 0:
        raise ValueError("a hull needs at least one point with known cost and quality")
    order = np.lexsort((-q, c))  # cost ascending, best quality first among equal costs
    c, q = c[order], q[order]
    # Pareto: keep a point only if it beats every cheaper point's quality.
    keep = np.empty(len(c), dtype=bool)
    best = -np.inf
    for i in range(len(c)):
        keep[i] = q[i] > best + 1e-15
        best = max(best, q[i])
    c, q = c[keep], q[keep]
    # Upper convex hull (monotone chain): drop a vertex that lies on or below a chord.
    hc: list[float] = []
    hq: list[float] = []
    for ci, qi in zip(c.tolist(), q.tolist(), strict=True):
        while len(hc) >= 2:
            (c1, q1), (c2, q2) = (hc[-2], hq[-2]), (hc[-1], hq[-1])
            if (q2 - q1) * (ci - c1) <= (qi - q1) * (c2 - c1):
                hc.pop()
                hq.pop()
            else:
                break
        hc.append(ci)
        hq.append(qi)
    return Hull(np.array(hc), np.array(hq))


def area(hull: Hull, lo: float, hi: float, *, log: bool = False, samples: int = 256) -> float:
    """Mean frontier quality over ``[lo, hi]`` (over ``log10`` cost when ``log``).

    Linear: exact trapezoids over the vertices (the frontier is piecewise linear in cost).
    Log: the frontier is not linear in log cost between vertices, so it is sampled densely.
    Where the frontier is undefined (below its cheapest point) it counts as quality 0.
    """
    if not hi > lo:
        raise ValueError(f"empty cost range [{lo}, {hi}]")
    first = hull.cost[0]
    if log:
        if lo <= 0:
            raise ValueError("log-cost area needs positive costs")
        x = np.linspace(np.log10(lo), np.log10(hi), samples)
        c = 10.0**x
        y = np.where(c < first, 0.0, np.interp(c, hull.cost, hull.quality))
        return float(np.trapezoid(y, x) / (x[-1] - x[0]))
    inner = hull.cost[(hull.cost > lo) & (hull.cost < hi)]
    x = np.concatenate([[lo], inner, [hi]])
    y = np.interp(x, hull.cost, hull.quality)
    if first > lo:
        # Zero below the first vertex, then a jump to its quality at ``first``.
        y = np.where(x < first, 0.0, y)
        if first < hi:
            k = int(np.searchsorted(x, first))
            x = np.insert(x, k, first)
            y = np.insert(y, k, 0.0)
    return float(np.trapezoid(y, x) / (hi - lo))
