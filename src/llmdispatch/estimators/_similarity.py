"""Fast inner products of query rows with stored training rows (dense or CSR).

Sparse TF-IDF rows share a few very frequent n-grams (templates, few-shot boilerplate):
through scipy's sparse product every such column costs ``n_queries × n_train`` scalar
operations, which dominates. :class:`SimilarityIndex` keeps the columns present in at least
``dense_df`` of the training rows as a dense block (multiplied with BLAS) and the rest
sparse; the sum is the exact same product, 5-20× faster on prompt sets with shared text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from llmdispatch.estimators._common import as_dense
from llmdispatch.types import Features, FloatMatrix, FloatVector

_MAX_DENSE_COLUMNS = 4096
CHUNK_ROWS = 1024
#: Up to this many query rows, rows are gathered one by one (live requests).
FEW_ROWS = 8


class SimilarityIndex:
    """``X_q · X_trainᵀ`` for rows of the same width; built from the training rows only."""

    def __init__(self, X_train: Features, dense_df: float = 0.05) -> None:
        self.n_rows = int(X_train.shape[0])
        self.n_features = int(X_train.shape[1])
        #: :meth:`matrix` gives back exactly the training rows (float32 dense, or float32 CSR
        #: with sorted columns and no stored zeros), so their owner may drop its copy.
        self.holds_rows = False
        if not sp.issparse(X_train):
            self._dense_T = np.ascontiguousarray(np.asarray(X_train, dtype=np.float32).T)
            self._freq: npt.NDArray[np.intp] | None = None
            self.holds_rows = np.asarray(X_train).dtype == np.float32
            return
        X = sp.csr_matrix(X_train, dtype=np.float32)
        self.holds_rows = bool(
            sp.issparse(X_train)
            and X_train.dtype == np.float32
            and X.has_sorted_indices
            and X.has_canonical_format
            and (X.data != 0).all()
        )
        df = np.bincount(X.indices, minlength=X.shape[1]) / max(X.shape[0], 1)
        freq = np.flatnonzero(df >= dense_df)
        if len(freq) > _MAX_DENSE_COLUMNS:
            freq = np.sort(freq[np.argsort(-df[freq], kind="stable")[:_MAX_DENSE_COLUMNS]])
        self._freq = freq
        self._freq_mask = np.zeros(X.shape[1], dtype=bool)
        self._freq_mask[freq] = True
        self._dense_T = np.ascontiguousarray(X[:, freq].toarray().T)
        self._rare_T = _drop_columns(X, self._freq_mask).T.tocsr()
        # For the one-query path, one lookup per query column: ``~row`` of ``_dense_T`` for a
        # dense column, else a slot of ``_slot_ptr`` (0: no stored entry, an empty range).
        T = self._rare_T
        stored = np.flatnonzero(np.diff(T.indptr))
        self._code = np.zeros(X.shape[1], dtype=np.int32)
        self._code[stored] = np.arange(1, len(stored) + 1)
        self._code[freq] = ~np.arange(len(freq))
        # Slot s spans ``T.data[_slot_ptr[s]:_slot_ptr[s + 1]]``: columns between two stored
        # ones are empty, so each stored column ends where the next one starts.
        self._slot_ptr = np.empty(len(stored) + 2, dtype=np.int64)
        self._slot_ptr[0] = 0
        self._slot_ptr[1:-1] = T.indptr[stored]
        self._slot_ptr[-1] = T.indptr[-1]

    def matrix(self) -> Features:
        """The training rows: dense as given, or sparse rebuilt from the dense block and the
        sparse rest."""
        if self._freq is None:
            return np.ascontiguousarray(self._dense_T.T)
        dense = sp.csr_matrix(self._dense_T.T)
        dense = sp.csr_matrix(
            (dense.data, self._freq[dense.indices], dense.indptr),
            shape=(self.n_rows, self.n_features),
        )
        out = (dense + self._rare_T.T).tocsr()
        out.sort_indices()
        return out

    def dot(self, Xq: Features) -> FloatMatrix:
        """Dense ``(n_q, n_train)`` inner products as float64."""
        if self._freq is None:
            dense = as_dense(Xq)
            return np.asarray(np.asarray(dense, dtype=np.float32) @ self._dense_T, np.float64)
        Q = sp.csr_matrix(Xq, dtype=np.float32)
        if Q.shape[0] <= FEW_ROWS:
            return np.vstack([self._dot_row(Q, i) for i in range(Q.shape[0])])
        out = np.asarray(Q[:, self._freq].toarray() @ self._dense_T, dtype=np.float64)
        out += (_drop_columns(Q, self._freq_mask) @ self._rare_T).toarray()
        return out

    def dot_dense_one(self, z: npt.NDArray[np.float32]) -> FloatVector:
        """Inner products of one dense query row with every training row of a dense index."""
        if self._freq is not None:
            raise ValueError("dot_dense_one needs an index of dense rows")
        return np.asarray(z @ self._dense_T, dtype=np.float64)

    def _dot_row(self, Q: sp.csr_matrix, i: int) -> FloatMatrix:
        """One query row of :meth:`dot`."""
        lo, hi = Q.indptr[i], Q.indptr[i + 1]
        return self.dot_one(Q.indices[lo:hi], Q.data[lo:hi])[None, :]

    def dot_one(self, cols: npt.NDArray[np.int32], vals: npt.NDArray[np.float32]) -> FloatVector:
        """Inner products of one sparse query (its columns and values) with every training
        row: gathers only its columns (a live request's path, ~100× faster than slicing the
        sparse matrix by the frequent columns)."""
        if self._freq is None:
            dense = np.zeros(self.n_features, dtype=np.float32)
            dense[cols] = vals
            return np.asarray(dense @ self._dense_T, dtype=np.float64)
        code = self._code[cols]
        # Stored entries of the sparse columns, one index range per query column (empty for
        # dense and unseen columns); each training row sums them in query-column order.
        slots = np.maximum(code, 0)
        starts = self._slot_ptr[slots]
        slots += 1
        lengths = self._slot_ptr[slots] - starts
        ends = np.cumsum(lengths)
        total = int(ends[-1]) if len(ends) else 0
        if total:
            T = self._rare_T
            entries = np.repeat(starts - ends + lengths, lengths)
            entries += np.arange(total)
            weights = T.data[entries] * np.repeat(vals, lengths)
            # float64: np.bincount with weights (typed as returning integers).
            out = cast(
                FloatVector, np.bincount(T.indices[entries], weights=weights, minlength=self.n_rows)
            )
        else:
            out = np.zeros(self.n_rows, dtype=np.float64)
        in_block = code < 0
        if in_block.any():
            out += vals[in_block] @ np.take(self._dense_T, ~code[in_block], axis=0)
        return out

    def chunks(self, Xq: Features) -> Iterator[tuple[int, npt.NDArray[np.floating[Any]]]]:
        """``(start, block)`` of :meth:`dot` over row chunks, to bound memory; a dense
        index yields its float32 products as they are (the float64 copy would cost as much
        as the product)."""
        for start in range(0, Xq.shape[0], CHUNK_ROWS):
            block = Xq[start : start + CHUNK_ROWS]
            if self._freq is None:
                yield start, np.asarray(as_dense(block), dtype=np.float32) @ self._dense_T
            else:
                yield start, self.dot(block)


def _drop_columns(X: sp.csr_matrix, mask: npt.NDArray[np.bool_]) -> sp.csr_matrix:
    out = X.copy()
    out.data[mask[out.indices]] = 0.0
    out.eliminate_zeros()
    return out
