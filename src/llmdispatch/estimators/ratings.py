"""Rating models over pairwise games: Bradley–Terry (global and batched local) and Elo.

Bradley–Terry (Bradley & Terry, 1952): ``P(a beats b) = σ(θ_a − θ_b)``. With soft games
``(wins_p, totals_p)`` over pairs ``p = (a, b)`` the regularised negative log-likelihood is

    L(θ) = Σ_p [ totals_p · softplus(θ_a − θ_b) − wins_p · (θ_a − θ_b) ] + (l2 / 2) ‖θ‖²,

convex; the L2 term fixes the free translation of θ and keeps strengths finite when a model
wins every game. The global fit uses scipy's L-BFGS; per-query fits (one θ per query, as in
RouteLLM's similarity-weighted ranking) use Newton's method batched over queries.

Elo (as used by Eagle): sequential updates ``R_a += K·w·(s − E_a)``, ``R_b −= K·w·(s − E_a)``
with ``E_a = 1 / (1 + 10^((R_b − R_a)/400))`` and soft outcome ``s`` of weight ``w``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize

from llmdispatch.estimators.pairwise import PairwiseData
from llmdispatch.types import FloatMatrix, FloatVector, IntVector

ELO_SCALE = 400.0
ELO_INIT = 1000.0
_BATCH = 256
_ELO_BATCH = 4096
_LN10_SCALE = float(np.log(10.0) / ELO_SCALE)


def _sigmoid(z: FloatMatrix) -> FloatMatrix:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


def bt_global(
    wins: FloatVector, totals: FloatVector, first: IntVector, second: IntVector, n: int, l2: float
) -> FloatVector:
    """One θ per model from summed games, by L-BFGS on the regularised likelihood."""

    def objective(theta: FloatVector) -> tuple[float, FloatVector]:
        d = theta[first] - theta[second]
        loss = float(np.sum(totals * np.logaddexp(0.0, d) - wins * d)) + 0.5 * l2 * float(
            theta @ theta
        )
        r = totals * _sigmoid(d) - wins
        grad = np.bincount(first, r, n) - np.bincount(second, r, n) + l2 * theta
        return loss, grad

    result = minimize(objective, np.zeros(n), jac=True, method="L-BFGS-B", options={"gtol": 1e-9})
    return np.asarray(result.x, dtype=np.float64)


def bt_batch(
    wins: FloatMatrix,
    totals: FloatMatrix,
    first: IntVector,
    second: IntVector,
    n: int,
    l2: float,
    max_iter: int = 50,
    tol: float = 1e-7,
) -> FloatMatrix:
    """One θ per row of ``(wins, totals)`` (shape ``(Q, P)``), by batched damped Newton."""
    out = np.empty((wins.shape[0], n))
    for start in range(0, wins.shape[0], _BATCH):
        sl = slice(start, start + _BATCH)
        out[sl] = _bt_newton(wins[sl], totals[sl], first, second, n, l2, max_iter, tol)
    return out


def _bt_newton(
    wins: FloatMatrix,
    totals: FloatMatrix,
    first: IntVector,
    second: IntVector,
    n: int,
    l2: float,
    max_iter: int,
    tol: float,
) -> FloatMatrix:
    q = wins.shape[0]
    theta = np.zeros((q, n))
    incidence = np.zeros((len(first), n))
    incidence[np.arange(len(first)), first] = 1.0
    incidence[np.arange(len(first)), second] = -1.0
    diag = np.arange(n)
    active = np.arange(q)
    for _ in range(max_iter):
        th = theta[active]
        d = th[:, first] - th[:, second]
        p = _sigmoid(d)
        grad = (totals[active] * p - wins[active]) @ incidence + l2 * th
        h = totals[active] * p * (1.0 - p)
        hess = np.zeros((len(active), n, n))
        hess[:, first, second] = -h
        hess[:, second, first] = -h
        hess[:, diag, diag] = l2 - hess.sum(axis=2)
        step = np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        # Newton on a convex logistic likelihood can overshoot far from the optimum.
        biggest = np.abs(step).max(axis=1, keepdims=True)
        step *= np.minimum(1.0, 2.0 / np.maximum(biggest, 1e-300))
        theta[active] = th - step
        active = active[biggest[:, 0] > tol]
        if not len(active):
            break
    return theta


def win_prob_vs_field(strength: FloatMatrix, scale: float = 1.0) -> FloatMatrix:
    """``P(m beats an opponent drawn uniformly from the other models)`` per row.

    BT strengths use ``scale = 1`` (``σ(θ_a − θ_b)``); Elo ratings use
    ``scale = ln(10) / 400``.
    """
    s = np.atleast_2d(strength) * scale
    n = s.shape[1]
    if n == 1:
        return np.full_like(s, 0.5)
    p = _sigmoid(s[:, :, None] - s[:, None, :])
    return np.asarray((p.sum(axis=2) - 0.5) / (n - 1), dtype=np.float64)


# ---- Elo ---------------------------------------------------------------------------------
def elo_games(
    data: PairwiseData, seed: int = 0
) -> tuple[IntVector, IntVector, FloatMatrix, FloatMatrix]:
    """Per-prompt games padded to one width: ``(a, b, outcome, weight)``, each ``(N, C)``.

    Games within a prompt are put in a fixed random order (seeded), so no model is always
    updated first; padding has weight 0.
    """
    n, p = data.wins.shape
    present = data.totals > 0
    width = max(1, int(present.sum(axis=1).max(initial=0)))
    rng = np.random.default_rng(seed)
    order = np.argsort(~present + rng.random((n, p)) * 0.5, axis=1, kind="stable")[:, :width]
    rows = np.arange(n)[:, None]
    weight = np.where(present[rows, order], data.totals[rows, order], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        outcome = np.where(weight > 0, data.wins[rows, order] / weight, 0.5)
    return data.first[order], data.second[order], outcome, weight


def elo_global(
    a: IntVector, b: IntVector, s: FloatMatrix, w: FloatMatrix, n: int, k: float
) -> FloatVector:
    """Sequential Elo over every game, prompts in table order."""
    ratings = [ELO_INIT] * n
    for ai, bi, si, wi in zip(
        a.ravel().tolist(),
        b.ravel().tolist(),
        s.ravel().tolist(),
        w.ravel().tolist(),
        strict=True,
    ):
        if wi <= 0.0:
            continue
        expected = 1.0 / (1.0 + 10.0 ** ((ratings[bi] - ratings[ai]) / ELO_SCALE))
        delta = k * wi * (si - expected)
        ratings[ai] += delta
        ratings[bi] -= delta
    return np.asarray(ratings, dtype=np.float64)


def elo_local(
    games: tuple[IntVector, IntVector, FloatMatrix, FloatMatrix],
    neighbours: npt.NDArray[np.intp],
    n: int,
    k: float,
) -> FloatMatrix:
    """Elo from scratch per query over its neighbours' games (neighbour order as given)."""
    a, b, s, w = games
    q = neighbours.shape[0]
    out = np.empty((q, n))
    for start in range(0, q, _ELO_BATCH):
        nb = neighbours[start : start + _ELO_BATCH]
        rows = nb.shape[0]
        ratings = np.full(rows * n, ELO_INIT)
        base = (np.arange(rows) * n)[:, None]
        for j in range(nb.shape[1]):
            prompt = nb[:, j]
            # Game-major copies so each step reads contiguous rows.
            ia_all = np.ascontiguousarray((base + a[prompt]).T)
            ib_all = np.ascontiguousarray((base + b[prompt]).T)
            gs = np.ascontiguousarray(s[prompt].T)
            kw = np.ascontiguousarray(k * w[prompt].T)
            for t in np.flatnonzero(kw.any(axis=1)):
                ia, ib = ia_all[t], ib_all[t]
                expected = 1.0 / (1.0 + np.exp((ratings[ib] - ratings[ia]) * _LN10_SCALE))
                delta = kw[t] * (gs[t] - expected)
                ratings[ia] += delta
                ratings[ib] -= delta
        out[start : start + rows] = ratings.reshape(rows, n)
    return out
