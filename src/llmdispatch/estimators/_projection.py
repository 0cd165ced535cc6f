"""Dense inputs for estimators that learn weights on features (MLP, MF, EmbedLLM, UniRoute).

Dense features (MiniLM, TF-IDF + SVD) pass through, L2-normalised. Sparse hashed TF-IDF rows
have up to 2^20 columns: a weight matrix or k-means centroids over them would not fit in an
artifact, so they are reduced by latent semantic analysis (Deerwester et al., 1990), the
truncated SVD ``X ≈ U Σ Vᵀ``, computed through the Gram matrix of up to ``max_landmarks``
training rows ``L`` (Nyström form)::

    L Lᵀ = U Λ Uᵀ          z(x) = Λ^{-1/2} Uᵀ L x = Vᵀ x     (then L2-normalised)

so only ``L`` (sparse) and ``U Λ^{-1/2}`` are stored, never a dense ``Vᵀ`` over all hashed
columns; the product ``L x`` goes through :class:`SimilarityIndex`.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from llmdispatch.estimators._common import (
    check_n_features,
    features_from_state,
    features_state,
    l2_normalize,
)
from llmdispatch.estimators._similarity import SimilarityIndex
from llmdispatch.types import Features, FloatMatrix


class Projector:
    """Maps dense or CSR features to dense, L2-normalised rows (LSA for sparse input)."""

    def __init__(self, n_components: int = 256, max_landmarks: int = 1500, seed: int = 0) -> None:
        self.n_components = n_components
        self.max_landmarks = max_landmarks
        self.seed = seed

    def fit(self, X: Features) -> Self:
        """Learn the projection from training features (nothing to learn for dense input)."""
        self.n_features_ = int(X.shape[1])
        if not sp.issparse(X):
            self.mode_ = "dense"
            self.n_output_ = self.n_features_
            return self
        self.mode_ = "lsa"
        Xn = l2_normalize(X)
        n = Xn.shape[0]
        if n > self.max_landmarks:
            rng = np.random.default_rng(self.seed)
            Xn = Xn[np.sort(rng.choice(n, self.max_landmarks, replace=False))]
        self.landmarks_ = sp.csr_matrix(Xn)
        self._index: SimilarityIndex | None = None
        G = self._similarities(self.landmarks_)
        G = (G + G.T) / 2.0
        n_l = G.shape[0]
        k = max(1, min(self.n_components, n_l - 1))
        vals, vecs = top_eigen(G, k, self.seed)
        keep = vals > max(float(vals.max()), 1e-12) * 1e-6
        self.A_ = np.ascontiguousarray(vecs[:, keep][:, ::-1] / np.sqrt(vals[keep][::-1]))
        self.n_output_ = int(self.A_.shape[1])
        return self

    def transform(self, X: Features) -> FloatMatrix:
        """Dense float64 rows of width ``n_output_``."""
        check_n_features(X, self.n_features_)
        if self.mode_ == "dense":
            return np.asarray(l2_normalize(X), dtype=np.float64)
        Z = self._similarities(l2_normalize(X)) @ self.A_
        norms = np.linalg.norm(Z, axis=1, keepdims=True)
        return np.asarray(np.divide(Z, norms, out=np.zeros_like(Z), where=norms > 0), np.float64)

    def _similarities(self, X: Features) -> FloatMatrix:
        if getattr(self, "_index", None) is None:
            self._index = SimilarityIndex(self.landmarks_)
        assert self._index is not None
        return self._index.dot(X)

    def get_state(self) -> dict[str, Any]:
        """Arrays and settings to rebuild the projection."""
        state: dict[str, Any] = {"mode": self.mode_, "n_features": self.n_features_}
        if self.mode_ == "lsa":
            state["landmarks"] = features_state(self.landmarks_)
            state["A"] = self.A_
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Inverse of :meth:`get_state`."""
        proj = cls()
        proj.mode_ = str(state["mode"])
        proj.n_features_ = int(state["n_features"])
        if proj.mode_ == "lsa":
            proj.landmarks_ = sp.csr_matrix(features_from_state(state["landmarks"]))
            proj.A_ = np.asarray(state["A"], dtype=np.float64)
            proj._index = None
            proj.n_output_ = int(proj.A_.shape[1])
        else:
            proj.n_output_ = proj.n_features_
        return proj


def top_eigen(
    G: FloatMatrix, k: int, seed: int, oversample: int = 16, power: int = 3
) -> tuple[FloatMatrix, FloatMatrix]:
    """The ``k`` largest eigenpairs of a symmetric PSD matrix, ascending like ``eigh``.

    Randomised range finder with power iterations (Halko, Martinsson & Tropp, 2011): an
    ``(n, k + p)`` product per iteration instead of a full ``O(n³)`` eigendecomposition.
    """
    n = G.shape[0]
    if k + oversample >= n:
        return scipy.linalg.eigh(G, subset_by_index=[n - k, n - 1])  # type: ignore[no-any-return]
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(G @ rng.standard_normal((n, k + oversample)))
    for _ in range(power):
        Q, _ = np.linalg.qr(G @ Q)
    small = Q.T @ G @ Q
    vals, vecs = scipy.linalg.eigh((small + small.T) / 2.0)
    return vals[-k:], Q @ vecs[:, -k:]
