"""``tfidf-svd``: dense latent-semantic vectors from the hashed TF-IDF (LSA).

References
----------
Deerwester et al., "Indexing by latent semantic analysis", JASIS 1990: project TF-IDF rows on
the top ``k`` right singular vectors of the training matrix, ``z = x Vₖ``, then L2-normalise
(as scikit-learn's LSA example does with ``TruncatedSVD`` + ``Normalizer``).

Adapted: the SVD runs on the ``max_columns`` hashed columns with the highest document
frequency only (n-grams seen in one or two prompts carry little shared structure), which
keeps the stored projection small: ``k × max_columns`` float32 instead of ``k × 2²⁰``; and on
at most ``max_rows`` training prompts (a seeded sample), which bounds the fit time (sparse
products dominate it) while leaving enough rows for a 256-dimensional basis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from llmdispatch.features._util import check_texts, digest, l2_normalize_dense
from llmdispatch.features.base import Encoder
from llmdispatch.features.tfidf import TfidfEncoder
from llmdispatch.registry import register


@register("encoder", "tfidf-svd")
class TfidfSvdEncoder(Encoder):
    """TF-IDF (see :class:`TfidfEncoder`) reduced by truncated SVD; dense float32 unit rows.

    ``n_components`` is capped by the number of training prompts and kept columns.
    Remaining keyword arguments configure the TF-IDF stage.

    Examples
    --------
    >>> texts = [f"question {i} about topic {i % 7}" for i in range(50)]
    >>> enc = TfidfSvdEncoder(n_components=8).fit(texts)
    >>> enc.encode(["question about topic 3"]).shape
    (1, 8)
    """

    def __init__(
        self,
        n_components: int = 256,
        max_columns: int = 1 << 14,
        max_rows: int = 2048,
        n_iter: int = 3,
        random_state: int = 0,
        **tfidf_params: Any,
    ) -> None:
        self.n_components = n_components
        self.max_columns = max_columns
        self.max_rows = max_rows
        self.n_iter = n_iter
        self.random_state = random_state
        self.tfidf_params = tfidf_params

    def fit(self, texts: Sequence[str]) -> Self:
        """Fit the TF-IDF stage, keep the most frequent columns, fit the SVD on them."""
        from sklearn.decomposition import TruncatedSVD

        texts = check_texts(texts)
        if min(self.n_components, self.max_columns, self.max_rows) < 1:
            raise ValueError("n_components, max_columns and max_rows must be positive")
        tfidf = TfidfEncoder(**self.tfidf_params).fit(texts)
        seen = np.flatnonzero(tfidf.df_)
        order = np.lexsort((seen, -tfidf.df_[seen]))  # by frequency, ties by column
        columns = np.sort(seen[order[: self.max_columns]])
        if len(texts) > self.max_rows:
            rng = np.random.default_rng(self.random_state)
            rows = np.sort(rng.choice(len(texts), self.max_rows, replace=False))
            texts = [texts[i] for i in rows]
        X = self._restrict(tfidf.encode(texts), columns, tfidf.n_features)
        k = min(self.n_components, X.shape[0] - 1, X.shape[1] - 1)
        if k < 1:
            raise ValueError(f"tfidf-svd needs at least 2 distinct prompts, got {len(texts)}")
        svd = TruncatedSVD(k, n_iter=self.n_iter, random_state=self.random_state).fit(X)
        self._set(tfidf, columns, svd.components_.T.astype(np.float32))
        return self

    def _set(
        self, tfidf: TfidfEncoder, columns: npt.NDArray[np.int64], proj: npt.NDArray[np.float32]
    ) -> None:
        self.tfidf_ = tfidf
        self.columns_ = columns.astype(np.int64)
        self.projection_ = np.ascontiguousarray(proj, dtype=np.float32)
        self.position_ = np.full(tfidf.n_features, -1, dtype=np.int64)
        self.position_[self.columns_] = np.arange(len(self.columns_))
        self.key_ = "tfidf-svd:" + digest(tfidf.key, self.columns_, self.projection_)

    @staticmethod
    def _restrict(X: sp.csr_matrix, columns: npt.NDArray[np.int64], n: int) -> sp.csr_matrix:
        position = np.full(n, -1, dtype=np.int64)
        position[columns] = np.arange(len(columns))
        return _select(X, position, len(columns))

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """``(n, k)`` float32 rows of unit norm (zero for prompts with no kept n-gram)."""
        if not hasattr(self, "projection_"):
            raise RuntimeError("TfidfSvdEncoder is not fitted; call fit(texts) first")
        X = _select(self.tfidf_.encode(texts), self.position_, len(self.columns_))
        return l2_normalize_dense(np.asarray(X @ self.projection_))

    @property
    def key(self) -> str:
        """``tfidf-svd:<digest of the TF-IDF key and the projection>``."""
        if not hasattr(self, "key_"):
            raise RuntimeError("TfidfSvdEncoder is not fitted; call fit(texts) first")
        return self.key_

    def get_state(self) -> dict[str, Any]:
        """The TF-IDF state, kept columns and projection (float32)."""
        if not hasattr(self, "projection_"):
            raise RuntimeError("TfidfSvdEncoder is not fitted; call fit(texts) first")
        return {
            "params": {
                "n_components": self.n_components,
                "max_columns": self.max_columns,
                "max_rows": self.max_rows,
                "n_iter": self.n_iter,
                "random_state": self.random_state,
            },
            "tfidf": self.tfidf_.get_state(),
            "columns": self.columns_,
            "projection": self.projection_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild; encodings are bit-identical to the saved encoder's."""
        tfidf = TfidfEncoder.from_state(state["tfidf"])
        tfidf_params = dict(state["tfidf"]["params"])
        tfidf_params["char_ngrams"] = tuple(tfidf_params["char_ngrams"])
        enc = cls(**state["params"], **tfidf_params)
        enc._set(tfidf, np.asarray(state["columns"]), np.asarray(state["projection"]))
        return enc


def _select(X: sp.csr_matrix, position: npt.NDArray[np.int64], width: int) -> sp.csr_matrix:
    """Keep the columns with ``position >= 0``, renumbered to ``position`` (rows stay sorted)."""
    pos = position[X.indices]
    keep = pos >= 0
    counts = np.bincount(
        np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[keep], minlength=X.shape[0]
    )
    indptr = np.zeros(X.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return sp.csr_matrix((X.data[keep], pos[keep], indptr), shape=(X.shape[0], width))
