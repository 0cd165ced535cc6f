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

:class:`LsaProjection` is that projection on its own, for any sparse rows: the kNN estimator
uses it to search neighbours of TF-IDF rows in a low-rank space.
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
from llmdispatch.kernels import kernels
from llmdispatch.registry import register

#: Up to this many rows, :meth:`LsaProjection.transform` projects row by row.
_FEW_ROWS = 8


def column_positions(
    columns: npt.NDArray[np.integer[Any]], n_features: int
) -> npt.NDArray[np.signedinteger[Any]]:
    """For each of ``n_features`` columns, its place among the sorted ``columns`` (−1: not
    kept): the map :func:`select_columns` takes. 16-bit when the places fit (the default
    2¹⁴ kept columns): a serving worker holds one such 2²⁰-entry map per LSA kNN or linear
    head it loads, and a live query reads it at scattered places."""
    dtype: type[np.signedinteger[Any]] = (
        np.int16 if len(columns) <= np.iinfo(np.int16).max else np.int32
    )
    position: npt.NDArray[np.signedinteger[Any]] = np.full(n_features, -1, dtype=dtype)
    position[columns] = np.arange(len(columns), dtype=dtype)
    return position


class LsaProjection:
    """Rows of a sparse matrix projected on the top right singular vectors of training rows.

    Fitted with :meth:`fit` on the ``max_columns`` columns of highest document frequency and
    at most ``max_rows`` rows (a seeded sample); :meth:`transform` and :meth:`transform_row`
    give float32 rows of unit norm (zero for rows with no kept column).
    """

    def __init__(
        self,
        columns: npt.NDArray[np.int64],
        projection: npt.NDArray[np.float32],
        n_features: int,
    ) -> None:
        self.columns = np.asarray(columns, dtype=np.int64)
        self.projection = np.ascontiguousarray(projection, dtype=np.float32)
        self.n_features = int(n_features)
        if self.projection.shape[0] != len(self.columns):
            raise ValueError("projection rows must match the kept columns")
        self.position = column_positions(self.columns, self.n_features)

    @property
    def n_components(self) -> int:
        """Width of the projected rows."""
        return int(self.projection.shape[1])

    @classmethod
    def fit(
        cls,
        X: sp.csr_matrix,
        n_components: int = 256,
        max_columns: int = 1 << 14,
        max_rows: int = 2048,
        n_iter: int = 3,
        random_state: int = 0,
        df: npt.NDArray[np.integer[Any]] | None = None,
    ) -> LsaProjection:
        """Keep the most frequent columns (``df``: document frequencies, counted from ``X``
        when not given), then fit a truncated SVD on a sample of ``X``'s rows."""
        from sklearn.decomposition import TruncatedSVD

        if min(n_components, max_columns, max_rows) < 1:
            raise ValueError("n_components, max_columns and max_rows must be positive")
        X = sp.csr_matrix(X)
        # int64 whatever the caller's type: the order below negates the counts.
        if df is None:
            df = np.bincount(X.indices, minlength=X.shape[1]).astype(np.int64)
        else:
            df = np.asarray(df, dtype=np.int64)
        seen = np.flatnonzero(df)
        order = np.lexsort((seen, -df[seen]))  # by frequency, ties by column
        columns = np.sort(seen[order[:max_columns]])
        if X.shape[0] > max_rows:
            rng = np.random.default_rng(random_state)
            X = X[np.sort(rng.choice(X.shape[0], max_rows, replace=False))]
        R = select_columns(X, column_positions(columns, X.shape[1]), len(columns))
        k = min(n_components, R.shape[0] - 1, R.shape[1] - 1)
        if k < 1:
            raise ValueError(f"LSA needs at least 2 distinct rows, got {X.shape[0]}")
        svd = TruncatedSVD(k, n_iter=n_iter, random_state=random_state).fit(R)
        return cls(columns, svd.components_.T.astype(np.float32), X.shape[1])

    def transform(self, X: sp.csr_matrix) -> npt.NDArray[np.float32]:
        """``(n, n_components)`` float32 rows of unit norm (one row at a time for a few rows:
        a live request's path, without building sparse matrices)."""
        X = sp.csr_matrix(X)
        if X.shape[0] <= _FEW_ROWS:
            out = np.empty((X.shape[0], self.n_components), dtype=np.float32)
            for i in range(X.shape[0]):
                lo, hi = X.indptr[i], X.indptr[i + 1]
                out[i] = self.transform_row(X.indices[lo:hi], X.data[lo:hi])
            return out
        R = select_columns(X, self.position, len(self.columns))
        return l2_normalize_dense(np.asarray(R @ self.projection))

    def transform_row(
        self, cols: npt.NDArray[np.int32], vals: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """One sparse row (its columns and values) projected: a live query's path."""
        fast = kernels()
        if fast is not None:
            z_fast: npt.NDArray[np.float32] = fast.project(
                np.asarray(cols, dtype=np.int32),
                np.asarray(vals, dtype=np.float32),
                self.position,
                self.projection,
            )
            return z_fast
        pos = self.position[cols]
        keep = pos >= 0
        # (kept rows of Vᵀ)ᵀ · values: BLAS takes a quarter less time than for values · rows.
        rows = np.take(self.projection, pos[keep], axis=0)
        z: npt.NDArray[np.float32] = rows.T @ np.asarray(vals, dtype=np.float32)[keep]
        norm = float(np.sqrt(np.dot(z, z)))
        if norm > 0:
            z /= np.float32(norm)
        return z

    def get_state(self) -> dict[str, Any]:
        """Kept columns, the projection (float32) and the input width."""
        return {
            "columns": self.columns,
            "projection": self.projection,
            "n_features": self.n_features,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LsaProjection:
        """Inverse of :meth:`get_state`."""
        return cls(
            np.asarray(state["columns"]), np.asarray(state["projection"]), int(state["n_features"])
        )


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
        texts = check_texts(texts)
        if min(self.n_components, self.max_columns, self.max_rows) < 1:
            raise ValueError("n_components, max_columns and max_rows must be positive")
        tfidf = TfidfEncoder(**self.tfidf_params).fit(texts)
        if len(texts) > self.max_rows:
            rng = np.random.default_rng(self.random_state)
            rows = np.sort(rng.choice(len(texts), self.max_rows, replace=False))
            texts = [texts[i] for i in rows]
        lsa = LsaProjection.fit(
            tfidf.encode(texts),
            self.n_components,
            self.max_columns,
            self.max_rows,
            self.n_iter,
            self.random_state,
            df=tfidf.df_,
        )
        self._set(tfidf, lsa)
        return self

    def _set(self, tfidf: TfidfEncoder, lsa: LsaProjection) -> None:
        self.tfidf_ = tfidf
        self.lsa_ = lsa
        self.key_ = "tfidf-svd:" + digest(tfidf.key, lsa.columns, lsa.projection)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """``(n, k)`` float32 rows of unit norm (zero for prompts with no kept n-gram)."""
        if not hasattr(self, "lsa_"):
            raise RuntimeError("TfidfSvdEncoder is not fitted; call fit(texts) first")
        return self.lsa_.transform(self.tfidf_.encode(texts))

    @property
    def key(self) -> str:
        """``tfidf-svd:<digest of the TF-IDF key and the projection>``."""
        if not hasattr(self, "key_"):
            raise RuntimeError("TfidfSvdEncoder is not fitted; call fit(texts) first")
        return self.key_

    def get_state(self) -> dict[str, Any]:
        """The TF-IDF state, kept columns and projection (float32)."""
        if not hasattr(self, "lsa_"):
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
            "columns": self.lsa_.columns,
            "projection": self.lsa_.projection,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild; encodings are bit-identical to the saved encoder's."""
        tfidf = TfidfEncoder.from_state(state["tfidf"])
        tfidf_params = dict(state["tfidf"]["params"])
        tfidf_params["char_ngrams"] = tuple(tfidf_params["char_ngrams"])
        enc = cls(**state["params"], **tfidf_params)
        lsa = LsaProjection(
            np.asarray(state["columns"]), np.asarray(state["projection"]), tfidf.n_features
        )
        enc._set(tfidf, lsa)
        return enc


def select_columns(
    X: sp.csr_matrix, position: npt.NDArray[np.signedinteger[Any]], width: int
) -> sp.csr_matrix:
    """Keep the columns with ``position >= 0``, renumbered to ``position`` (rows stay sorted
    when ``position`` grows with the column): scipy's column indexing, without its per-call
    index arrays over all columns."""
    pos = position[X.indices]
    keep = pos >= 0
    counts = np.bincount(
        np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[keep], minlength=X.shape[0]
    )
    indptr = np.zeros(X.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return sp.csr_matrix((X.data[keep], pos[keep], indptr), shape=(X.shape[0], width))
