"""Dense inputs for estimators that learn weights on features (MLP, MF, EmbedLLM, UniRoute).

Dense features (MiniLM, TF-IDF + SVD) pass through, L2-normalised. Sparse hashed TF-IDF rows
have up to 2^20 columns: a weight matrix or k-means centroids over them would not fit in an
artifact, so they are reduced by latent semantic analysis (Deerwester et al., 1990), the
truncated SVD ``X ≈ U Σ Vᵀ`` restricted to the most frequent columns
(:class:`~llmdispatch.features.lsa.LsaProjection`, also the kNN's low-rank search space): one
query costs a product of its kept columns with ``Vᵀ``.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from llmdispatch.estimators._common import check_n_features, l2_normalize
from llmdispatch.features.lsa import LsaProjection
from llmdispatch.types import Features, FloatMatrix


class Projector:
    """Maps dense or CSR features to dense, L2-normalised rows (LSA for sparse input)."""

    def __init__(self, n_components: int = 256, seed: int = 0) -> None:
        self.n_components = n_components
        self.seed = seed

    def fit(self, X: Features) -> Self:
        """Learn the projection from training features (nothing to learn for dense input)."""
        self.n_features_ = int(X.shape[1])
        if not sp.issparse(X):
            self.mode_ = "dense"
            self.n_output_ = self.n_features_
            return self
        self.mode_ = "columns"
        self.lsa_ = LsaProjection.fit(l2_normalize(X), self.n_components, random_state=self.seed)
        self.n_output_ = self.lsa_.n_components
        return self

    def transform(self, X: Features) -> FloatMatrix:
        """Dense float64 rows of width ``n_output_``."""
        check_n_features(X, self.n_features_)
        if self.mode_ == "dense":
            return np.asarray(l2_normalize(X), dtype=np.float64)
        # No input normalisation: the projected rows are normalised, whatever the scale.
        return np.asarray(self.lsa_.transform(X), dtype=np.float64)

    def get_state(self) -> dict[str, Any]:
        """Arrays and settings to rebuild the projection."""
        state: dict[str, Any] = {"mode": self.mode_, "n_features": self.n_features_}
        if self.mode_ == "columns":
            state["lsa"] = self.lsa_.get_state()
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Inverse of :meth:`get_state`."""
        proj = cls()
        proj.mode_ = str(state["mode"])
        proj.n_features_ = int(state["n_features"])
        if proj.mode_ == "columns":
            proj.lsa_ = LsaProjection.from_state(state["lsa"])
            proj.n_output_ = proj.lsa_.n_components
        elif proj.mode_ == "dense":
            proj.n_output_ = proj.n_features_
        else:
            raise ValueError(
                f"unknown projection mode {proj.mode_!r}: an earlier llmdispatch wrote this "
                "artifact (mode 'lsa' was a Nyström projection); train the router again"
            )
        return proj
