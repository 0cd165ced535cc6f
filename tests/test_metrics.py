"""Hull, AIQ and the other metrics against hand computations and hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdispatch.evaluation.bootstrap import Resamples, interval
from llmdispatch.evaluation.hull import area, nondecreasing_hull
from llmdispatch.evaluation.metrics import (
    References,
    arena_score,
    curve_metrics,
    gap_closed,
    pgr_metrics,
)

points = st.lists(
    st.tuples(st.floats(0.001, 100.0, allow_nan=False), st.floats(0.0, 1.0, allow_nan=False)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(points)
def test_hull_is_nondecreasing_concave_and_above_every_point(
    pts: list[tuple[float, float]],
) -> None:
    c = np.array([p[0] for p in pts])
    q = np.array([p[1] for p in pts])
    hull = nondecreasing_hull(c, q)
    assert np.all(np.diff(hull.cost) > 0)
    assert np.all(np.diff(hull.quality) >= -1e-12)
    slopes = np.diff(hull.quality) / np.diff(hull.cost)
    assert np.all(np.diff(slopes) <= 1e-9 * (1 + np.abs(slopes[1:])))
    above = c >= hull.cost[0]
    assert np.all(hull.at(c[above]) >= q[above] - 1e-9)
    # The cheapest point's best quality is the hull's start.
    assert hull.cost[0] == c.min()


def test_hull_by_hand() -> None:
    # (1, .5) (2, .6) (3, .9) (4, .8): (2, .6) lies below the chord (1,.5)-(3,.9); (4, .8) is
    # dominated; the frontier is flat after (3, .9).
    hull = nondecreasing_hull(np.array([1, 2, 3, 4.0]), np.array([0.5, 0.6, 0.9, 0.8]))
    assert hull.cost.tolist() == [1, 3] and hull.quality.tolist() == [0.5, 0.9]
    assert hull.at(2.0)[0] == pytest.approx(0.7)
    assert hull.at(10.0)[0] == pytest.approx(0.9)
    assert math.isnan(hull.at(0.5)[0])
    assert hull.cost_to_reach(0.7) == pytest.approx(2.0)
    assert hull.cost_to_reach(0.95) == math.inf
    # Mean over [1, 4]: trapezoid (1→3) = 2·0.7 = 1.4, flat (3→4) = 0.9 → 2.3 / 3.
    assert area(hull, 1.0, 4.0) == pytest.approx(2.3 / 3)
    # Log area of a flat frontier is its value.
    flat = nondecreasing_hull(np.array([1.0]), np.array([0.4]))
    assert area(flat, 1.0, 100.0, log=True) == pytest.approx(0.4)


def test_curve_metrics_by_hand() -> None:
    refs = References(("a", "b", "c"), np.array([1.0, 2.0, 10.0]), np.array([0.5, 0.6, 0.9]))
    # The zero router: hull of (1,.5) (10,.9); (2,.6) is above the chord (.544) so it stays.
    zero = refs.zero_hull()
    assert zero.cost.tolist() == [1.0, 2.0, 10.0]
    m = curve_metrics(zero.cost, zero.quality, refs)
    expected = (0.5 * (0.5 + 0.6) * 1 + 0.5 * (0.6 + 0.9) * 8) / 9
    assert m["aiq"] == pytest.approx(expected)
    assert m["q@50"] == pytest.approx(0.6 + 0.3 * 3 / 8)
    assert m["cost_to_best"] == pytest.approx(1.0)
    # 95 % of 0.9 = 0.855 → cost 2 + (0.855 − 0.6)/0.3 · 8 = 8.8, relative to 10.
    assert m["cost_to_95"] == pytest.approx(0.88)
    # A policy reaching 0.9 at cost 3 is cheaper to the best quality.
    m2 = curve_metrics(np.array([3.0]), np.array([0.9]), refs)
    assert m2["cost_to_best"] == pytest.approx(0.3)
    assert m2["aiq"] > m["aiq"]
    assert gap_closed(0.8, 0.7, 0.9) == pytest.approx(0.5)


def test_arena_score_matches_its_definition() -> None:
    # At c = c_min the cost score is 1 and S = 1.1·A/(0.1·A + 1).
    assert arena_score(0.8, 0.0044 / 1000) == pytest.approx(1.1 * 0.8 / (0.08 + 1))
    assert arena_score(0.8, 1.0) == 0.0  # $1000 per 1k queries clips to c_max: C = 0
    c = 0.5 / 1000
    cost_score = (math.log2(200) - math.log2(0.5)) / (math.log2(200) - math.log2(0.0044))
    assert arena_score(0.7, c) == pytest.approx(1.1 * 0.7 * cost_score / (0.07 + cost_score))


def test_pgr_metrics_by_hand() -> None:
    # A router reaching PGR 0.5 with 20 % strong calls, 1.0 with 60 %.
    m = pgr_metrics(np.array([0.2, 0.6]), np.array([0.55, 0.6]), 0.5, 0.6)
    assert m["cpt50"] == pytest.approx(0.2)
    assert m["cpt20"] == pytest.approx(0.08)
    # Area: 0→0.2 rising to .5 (0.05), 0.2→0.6 rising to 1 (0.3), then flat (0.4) = 0.75.
    assert m["apgr"] == pytest.approx(0.75)
    random = pgr_metrics(np.array([0.5]), np.array([0.55]), 0.5, 0.6)
    assert random["apgr"] == pytest.approx(0.5)


def test_bootstrap_interval_contains_point_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 2000):
        x = rng.random((1, n))
        rs = Resamples.draw(n, 400, seed=1)
        means = rs.means(x)[:, 0]
        lo, hi = interval(means)
        assert lo <= x.mean() <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2
    # Column means ignore NaN.
    vals = np.array([[1.0, np.nan], [3.0, 2.0]])
    cm = Resamples(np.array([[1.0, 1.0]])).column_means(vals)
    assert cm.tolist() == [[2.0, 2.0]]
