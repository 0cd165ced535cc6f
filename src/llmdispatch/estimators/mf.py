"""RouteLLM's matrix-factorisation router, generalised from two models to many.

Reference
---------
Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data", arXiv:2406.18665
(2024), §4: a bilinear score of model ``m`` on query ``q``

    δ(m, q) = w₂ᵀ (v_m ⊙ (W₁ᵀ v_q + b))

with ``v_q`` the query embedding, ``v_m`` a learned model embedding, trained so that
``σ(δ(win, q) − δ(lose, q))`` is the probability of the observed preference. RouteLLM
learns it from comparisons of two models; here every pair of models whose scores differ on a
training prompt is a comparison (ties carry no preference and are skipped), so one
factorisation serves any number of models.

``Q(x, m)``: the probability that ``m`` beats a uniformly chosen other model,
``mean_j σ(δ(m, x) − δ(j, x))``, mapped to the score scale by a per-model isotonic map fitted
on the training prompts (a preference model ranks; the router also needs levels). Adapted:
full-batch L-BFGS with an L2 penalty instead of RouteLLM's Adam, pairs subsampled to at most
``max_pairs`` (seeded), and sparse features projected to a dense ``v_q`` (LSA).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators._common import check_features, check_int, check_positive, table_scores
from llmdispatch.estimators._projection import Projector
from llmdispatch.estimators.base import QualityEstimator, clip_quality
from llmdispatch.registry import register
from llmdispatch.types import Features, FloatMatrix, FloatVector


def _sigmoid(z: FloatMatrix) -> FloatMatrix:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))


def preference_pairs(
    Y: FloatMatrix, M: np.ndarray, max_pairs: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(query, winner, loser)`` for every pair of known, different scores (subsampled)."""
    qs, ws, ls = [], [], []
    m = Y.shape[1]
    for a in range(m):
        for b in range(a + 1, m):
            both = M[:, a] & M[:, b]
            diff = np.where(both, Y[:, a] - Y[:, b], 0.0)
            rows = np.flatnonzero(diff != 0)
            win_a = diff[rows] > 0
            qs.append(rows)
            ws.append(np.where(win_a, a, b))
            ls.append(np.where(win_a, b, a))
    q = np.concatenate(qs) if qs else np.zeros(0, dtype=np.intp)
    w = np.concatenate(ws) if ws else np.zeros(0, dtype=np.intp)
    lo = np.concatenate(ls) if ls else np.zeros(0, dtype=np.intp)
    if len(q) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(q), max_pairs, replace=False))
        q, w, lo = q[keep], w[keep], lo[keep]
    return q.astype(np.intp), w.astype(np.intp), lo.astype(np.intp)


@register("estimator", "mf")
class MatrixFactorizationEstimator(QualityEstimator):
    """RouteLLM's bilinear preference model (module docstring)."""

    def __init__(
        self,
        dim: int = 64,
        n_components: int = 128,
        l2: float = 1e-3,
        max_pairs: int = 100_000,
        max_iter: int = 100,
        seed: int = 0,
    ) -> None:
        self.dim = dim
        self.n_components = n_components
        self.l2 = l2
        self.max_pairs = max_pairs
        self.max_iter = max_iter
        self.seed = seed

    def _shapes(self, d_q: int, m: int) -> list[tuple[int, ...]]:
        return [(d_q, self.dim), (self.dim,), (m, self.dim), (self.dim,)]

    def _unpack(self, theta: FloatVector, d_q: int, m: int) -> list[FloatMatrix]:
        out, k = [], 0
        for shape in self._shapes(d_q, m):
            size = int(np.prod(shape))
            out.append(theta[k : k + size].reshape(shape))
            k += size
        return out

    def fit(self, table: OutcomeTable, X: Features) -> Self:
        """Learn embeddings and projection from every pairwise preference in ``table``."""
        from scipy.optimize import minimize
        from sklearn.isotonic import IsotonicRegression

        check_int("dim", self.dim, 1)
        check_positive("l2", self.l2, allow_zero=True)
        scores = table_scores(table)
        X = check_features(X, table.n_prompts)
        self.projector_ = Projector(self.n_components, seed=self.seed).fit(X)
        V = np.asarray(self.projector_.transform(X), dtype=np.float64)
        n, d_q = V.shape
        m = len(scores.models)
        q, w, lo = preference_pairs(scores.Y, scores.M, self.max_pairs, self.seed)
        rng = np.random.default_rng(self.seed)
        theta0 = np.concatenate(
            [rng.normal(0, 0.1, int(np.prod(s))).ravel() for s in self._shapes(d_q, m)]
        )
        P = len(q)
        Sq = sp.csr_matrix((np.ones(P), (np.arange(P), q)), shape=(P, n))
        Sw = sp.csr_matrix((np.ones(P), (np.arange(P), w)), shape=(P, m))
        Sl = sp.csr_matrix((np.ones(P), (np.arange(P), lo)), shape=(P, m))
        l2 = self.l2

        def objective(theta: FloatVector) -> tuple[float, FloatVector]:
            W1, b, Vm, w2 = self._unpack(theta, d_q, m)
            H = V @ W1 + b  # (n, d)
            Hq = H[q]
            D = Vm[w] - Vm[lo]  # (P, d)
            delta = (D * Hq) @ w2
            loss = float(np.logaddexp(0.0, -delta).sum()) / max(P, 1)
            g = -_sigmoid(-delta) / max(P, 1)  # dloss/ddelta
            g_w2 = (D * Hq).T @ g
            G = g[:, None] * (w2[None, :] * Hq)
            g_Vm = np.asarray(Sw.T @ G - Sl.T @ G)
            g_H = np.asarray(Sq.T @ (g[:, None] * (w2[None, :] * D)))
            g_W1 = V.T @ g_H
            g_b = g_H.sum(axis=0)
            grad = np.concatenate([g_W1.ravel(), g_b, g_Vm.ravel(), g_w2])
            loss += 0.5 * l2 * float(theta @ theta)
            return loss, grad + l2 * theta

        if P:
            res = minimize(
                objective,
                theta0,
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": self.max_iter},
            )
            theta = np.asarray(res.x)
        else:
            theta = theta0
        self.W1_, self.b_, self.Vm_, self.w2_ = self._unpack(theta, d_q, m)
        self.models_ = scores.models
        self.n_pairs_ = int(P)
        win = self._win_prob(V)
        self.iso_x_: list[FloatVector] = []
        self.iso_y_: list[FloatVector] = []
        for j in range(m):
            known = scores.M[:, j]
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
            iso.fit(win[known, j], scores.Y[known, j])
            self.iso_x_.append(np.asarray(iso.X_thresholds_, dtype=np.float64))
            self.iso_y_.append(np.asarray(iso.y_thresholds_, dtype=np.float64))
        return self

    def _delta(self, V: FloatMatrix) -> FloatMatrix:
        H = V @ self.W1_ + self.b_
        return np.asarray((H[:, None, :] * self.Vm_[None, :, :]) @ self.w2_)

    def _win_prob(self, V: FloatMatrix) -> FloatMatrix:
        d = self._delta(V)
        m = d.shape[1]
        pairwise = _sigmoid(d[:, :, None] - d[:, None, :])
        return np.asarray((pairwise.sum(axis=2) - 0.5) / max(m - 1, 1))

    def predict(self, X: Features) -> FloatMatrix:
        """Win probability against the field, on each model's score scale."""
        self._check_fitted()
        V = np.asarray(self.projector_.transform(check_features(X)), dtype=np.float64)
        win = self._win_prob(V)
        out = np.column_stack(
            [np.interp(win[:, j], self.iso_x_[j], self.iso_y_[j]) for j in range(win.shape[1])]
        )
        return clip_quality(out)

    def get_state(self) -> dict[str, Any]:
        """Projection, factors and the isotonic maps."""
        self._check_fitted()
        return {
            "params": {
                "dim": self.dim,
                "n_components": self.n_components,
                "l2": self.l2,
                "max_pairs": self.max_pairs,
                "max_iter": self.max_iter,
                "seed": self.seed,
            },
            "models": list(self.models_),
            "projector": self.projector_.get_state(),
            "W1": self.W1_,
            "b": self.b_,
            "Vm": self.Vm_,
            "w2": self.w2_,
            "iso_x": list(self.iso_x_),
            "iso_y": list(self.iso_y_),
            "n_pairs": self.n_pairs_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        est = cls(**state["params"])
        est.models_ = tuple(state["models"])
        est.projector_ = Projector.from_state(state["projector"])
        est.W1_ = np.asarray(state["W1"], dtype=np.float64)
        est.b_ = np.asarray(state["b"], dtype=np.float64)
        est.Vm_ = np.asarray(state["Vm"], dtype=np.float64)
        est.w2_ = np.asarray(state["w2"], dtype=np.float64)
        est.iso_x_ = [np.asarray(a, dtype=np.float64) for a in state["iso_x"]]
        est.iso_y_ = [np.asarray(a, dtype=np.float64) for a in state["iso_y"]]
        est.n_pairs_ = int(state["n_pairs"])
        return est
