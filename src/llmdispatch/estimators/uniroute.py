"""UniRoute: models as vectors of per-cluster error, so a new model needs no retraining.

Reference
---------
Jitkrittum et al., "Universal Model Routing for Efficient LLM Inference", arXiv:2502.08773
(2025), the K-means variant: cluster the training prompts' embeddings with K-means; represent
every model ``m`` by its error on each cluster, ``Ψ(m)_k = mean_{x ∈ C_k} (1 − score(x, m))``,
computed on a small labelled set; route a query ``x`` to ``argmin_m Ψ(m)_{k(x)} + λ·c(m)``,
``k(x)`` its nearest centroid. A model that joins later is scored on a representative set
of prompts (:meth:`UniRouteEstimator.representative_set`) and gets its vector from those
scores alone (:meth:`UniRouteEstimator.add_model`); nothing else is refitted.

Here ``Q(x, m) = 1 − Ψ(m)_{k(x)}``. Adapted: each cluster mean is shrunk towards the model's
overall mean with a pseudo-count ``α`` (small clusters are noisy), and ``K`` is chosen from
``k_grid`` by the masked squared error of the cluster estimates on a held-out part of the
training rows. Sparse features are first projected to a dense space (LSA,
:class:`~llmdispatch.estimators._projection.Projector`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators._common import (
    Scores,
    check_features,
    check_grid,
    check_positive,
    table_scores,
    validation_rows,
)
from llmdispatch.estimators._projection import Projector
from llmdispatch.estimators.base import QualityEstimator, clip_quality
from llmdispatch.registry import register
from llmdispatch.types import Features, FloatMatrix, FloatVector, IntVector


def _kmeans(Z: FloatMatrix, k: int, seed: int) -> FloatMatrix:
    """K-means++ centroids (scikit-learn, imported when fitting only)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(Z)
    return np.asarray(km.cluster_centers_, dtype=np.float64)


def nearest(Z: FloatMatrix, centroids: FloatMatrix) -> IntVector:
    """Index of the nearest centroid of every row."""
    d = (Z**2).sum(axis=1)[:, None] - 2 * Z @ centroids.T + (centroids**2).sum(axis=1)[None, :]
    return np.asarray(d.argmin(axis=1), dtype=np.intp)


def cluster_quality(
    assign: IntVector, Y: FloatMatrix, M: npt.NDArray[np.bool_], k: int, alpha: float
) -> tuple[FloatMatrix, FloatVector]:
    """Per-cluster mean score of each model, shrunk to its overall mean; and that mean."""
    onehot = np.zeros((len(assign), k))
    onehot[np.arange(len(assign)), assign] = 1.0
    Mf = M.astype(np.float64)
    sums = onehot.T @ (Y * Mf)
    counts = onehot.T @ Mf
    overall = (Y * Mf).sum(axis=0) / np.maximum(Mf.sum(axis=0), 1.0)
    return (sums + alpha * overall) / (counts + alpha), overall


@register("estimator", "uniroute")
class UniRouteEstimator(QualityEstimator):
    """K-means clusters of prompts; each model a vector of per-cluster quality."""

    def __init__(
        self,
        k: int | None = None,
        k_grid: Sequence[int] = (4, 8, 16, 32, 64),
        alpha: float = 5.0,
        n_components: int = 128,
        validation_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.k = k
        self.k_grid = k_grid
        self.alpha = alpha
        self.n_components = n_components
        self.validation_fraction = validation_fraction
        self.seed = seed

    def _embed(self, X: Features) -> FloatMatrix:
        return np.asarray(self.projector_.transform(check_features(X)), dtype=np.float64)

    def fit(self, table: OutcomeTable, X: Features) -> Self:
        """Project, choose ``K`` on held-out rows, cluster all rows, tabulate quality."""
        check_positive("alpha", self.alpha, allow_zero=True)
        scores: Scores = table_scores(table)
        X = check_features(X, table.n_prompts)
        self.projector_ = Projector(self.n_components, seed=self.seed).fit(X)
        Z = self._embed(X)
        n = len(Z)
        grid = [self.k] if self.k is not None else check_grid("k_grid", self.k_grid, integer=True)
        grid = sorted({max(1, min(int(k), n // 2)) for k in grid})
        self.cv_results_: list[dict[str, float]] = []
        if len(grid) > 1:
            fit_idx, val_idx = validation_rows(n, self.validation_fraction, self.seed)
            for k in grid:
                cents = _kmeans(Z[fit_idx], k, self.seed)
                table_q, _ = cluster_quality(
                    nearest(Z[fit_idx], cents),
                    scores.Y[fit_idx],
                    scores.M[fit_idx],
                    k,
                    self.alpha,
                )
                pred = table_q[nearest(Z[val_idx], cents)]
                mask = scores.M[val_idx]
                mse = float(((pred - scores.Y[val_idx]) ** 2)[mask].mean())
                self.cv_results_.append({"k": float(k), "mse": mse})
            self.k_ = int(min(self.cv_results_, key=lambda r: r["mse"])["k"])
        else:
            self.k_ = grid[0]
        self.centroids_ = _kmeans(Z, self.k_, self.seed)
        assign = nearest(Z, self.centroids_)
        self.quality_, self.overall_ = cluster_quality(
            assign, scores.Y, scores.M, self.k_, self.alpha
        )
        self.Z_train_ = Z
        self.models_ = scores.models
        return self

    def predict(self, X: Features) -> FloatMatrix:
        """``Q[n, m] = 1 − Ψ(m)`` of each query's nearest cluster."""
        self._check_fitted()
        return clip_quality(self.quality_[nearest(self._embed(X), self.centroids_)])

    # ---- new models without retraining -----------------------------------------------------
    def representative_set(self, per_cluster: int = 5) -> IntVector:
        """Training rows nearest each centroid: the prompts to score a new model on."""
        self._check_fitted()
        d = ((self.Z_train_[:, None, :] - self.centroids_[None, :, :]) ** 2).sum(axis=2)
        picks = [np.argsort(d[:, k])[:per_cluster] for k in range(self.k_)]
        return np.unique(np.concatenate(picks)).astype(np.intp)

    def add_model(self, name: str, scores: FloatVector, X: Features) -> None:
        """A new model's column from its scores on a few prompts (features ``X``)."""
        self._check_fitted()
        if name in self.models_:
            raise ValueError(f"model {name!r} is already known")
        y = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
        if y.shape[0] != X.shape[0] or y.shape[0] == 0:
            raise ValueError("add_model needs one score per prompt of X (at least one)")
        M = ~np.isnan(y)
        if M.sum() == 0:
            raise ValueError(f"no known score for {name!r}")
        col, _ = cluster_quality(
            nearest(self._embed(X), self.centroids_), np.where(M, y, 0.0), M, self.k_, self.alpha
        )
        self.quality_ = np.hstack([self.quality_, col])
        self.overall_ = np.append(self.overall_, float(np.nanmean(y)))
        self.models_ = (*self.models_, name)

    # ---- state -----------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Projection, centroids and the per-cluster table."""
        self._check_fitted()
        return {
            "params": {
                "k": self.k,
                "k_grid": list(self.k_grid),
                "alpha": self.alpha,
                "n_components": self.n_components,
                "validation_fraction": self.validation_fraction,
                "seed": self.seed,
            },
            "models": list(self.models_),
            "projector": self.projector_.get_state(),
            "centroids": self.centroids_,
            "quality": self.quality_,
            "overall": self.overall_,
            "k_": self.k_,
            "Z_train": self.Z_train_.astype(np.float32),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        est = cls(**state["params"])
        est.models_ = tuple(state["models"])
        est.projector_ = Projector.from_state(state["projector"])
        est.centroids_ = np.asarray(state["centroids"], dtype=np.float64)
        est.quality_ = np.asarray(state["quality"], dtype=np.float64)
        est.overall_ = np.asarray(state["overall"], dtype=np.float64)
        est.k_ = int(state["k_"])
        est.Z_train_ = np.asarray(state["Z_train"], dtype=np.float64)
        return est
