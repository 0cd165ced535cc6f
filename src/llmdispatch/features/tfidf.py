"""``tfidf``: hashed word and character n-gram TF-IDF, the default encoder (no model weights).

References
----------
Salton & Buckley, "Term-weighting approaches in automatic text retrieval", IP&M 1988
(TF-IDF); Weinberger et al., "Feature hashing for large scale multitask learning", ICML 2009
(the hashing trick). Weights follow scikit-learn's ``TfidfTransformer`` with
``smooth_idf=True``: ``idf(t) = ln((1 + n) / (1 + df(t))) + 1`` over the ``n`` training
prompts, and ``tf = 1 + ln(count)`` when ``sublinear_tf``.

Adapted: n-grams are hashed by :mod:`llmdispatch.features.hashing` (vectorised, several
times faster than ``HashingVectorizer`` with character n-grams). Word and character n-grams
live in separate halves of the hashed space and are L2-normalised separately, then mixed so
that ``word_weight`` of each row's squared norm is on words: thousands of character n-grams
per prompt would otherwise drown the few hundred word n-grams.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from llmdispatch.features._util import check_texts, digest
from llmdispatch.features.base import Encoder
from llmdispatch.features.hashing import NgramHasher, RawCounts, SparseRow, stack_raw, to_csr
from llmdispatch.kernels import kernels
from llmdispatch.query import Query
from llmdispatch.registry import register


def smooth_idf(df: npt.NDArray[np.int64], n_docs: int) -> npt.NDArray[np.float32]:
    """scikit-learn's smoothed IDF, ``ln((1 + n) / (1 + df)) + 1``, as float32."""
    idf: npt.NDArray[np.float32] = (np.log((1.0 + n_docs) / (1.0 + df)) + 1.0).astype(np.float32)
    return idf


@register("encoder", "tfidf")
class TfidfEncoder(Encoder):
    """Hashed word + character n-gram TF-IDF; L2-normalised float32 CSR rows.

    Parameters
    ----------
    n_features : number of hashed columns (a power of two); half for words, half for chars.
    word_ngrams : largest word n-gram (0 disables words).
    char_ngrams : (smallest, largest) character n-gram; ``(0, 0)`` disables characters.
    sublinear_tf : use ``1 + ln(count)`` instead of the raw count.
    word_weight : share of each row's squared norm given to the word block, in [0, 1].

    Examples
    --------
    >>> enc = TfidfEncoder().fit(["what is 2 + 2?", "write a haiku about autumn"])
    >>> X = enc.encode(["what is 3 + 3?"])
    >>> X.shape[0], round(float(X.multiply(X).sum()), 5)
    (1, 1.0)
    """

    sparse_output = True

    def __init__(
        self,
        n_features: int = 1 << 20,
        word_ngrams: int = 2,
        char_ngrams: tuple[int, int] = (3, 5),
        sublinear_tf: bool = True,
        word_weight: float = 0.5,
    ) -> None:
        self.n_features = n_features
        self.word_ngrams = word_ngrams
        self.char_ngrams = char_ngrams
        self.sublinear_tf = sublinear_tf
        self.word_weight = word_weight

    def _hasher(self) -> NgramHasher:
        lo, hi = self.char_ngrams
        return NgramHasher(self.n_features, self.word_ngrams, (int(lo), int(hi)))

    def _params(self) -> dict[str, Any]:
        return {
            "n_features": self.n_features,
            "word_ngrams": self.word_ngrams,
            "char_ngrams": [int(v) for v in self.char_ngrams],
            "sublinear_tf": self.sublinear_tf,
            "word_weight": self.word_weight,
        }

    def fit(self, texts: Sequence[str]) -> Self:
        """Learn document frequencies of the hashed n-grams over training prompts."""
        texts = check_texts(texts)
        hasher = self._hasher()
        hasher.validate()
        if not 0.0 <= self.word_weight <= 1.0:
            raise ValueError(f"word_weight must be in [0, 1], got {self.word_weight}")
        if not texts:
            raise ValueError("cannot fit tfidf on zero texts")
        df = np.zeros(self.n_features, dtype=np.int64)
        for chunk in hasher.chunks(texts):
            _, indices, _ = hasher.chunk_counts(chunk)
            df += np.bincount(indices, minlength=self.n_features)
        self._set_df(df, len(texts))
        return self

    def _set_df(self, df: npt.NDArray[np.int64], n_docs: int) -> None:
        self.hasher_ = self._hasher()
        self.n_docs_ = n_docs
        self.idf_ = smooth_idf(df, n_docs)
        seen = np.flatnonzero(df)
        self.key_ = "tfidf:" + digest(self._params(), n_docs, seen, df[seen].astype(np.int64))
        # No count exceeds n_docs: the smallest unsigned type holding it keeps the frequencies
        # (read by get_state and the LSA fit) in 2 MiB instead of 8 for 2**20 columns, which a
        # serving worker holds for every TF-IDF encoder it loads.
        self.df_ = df.astype(np.min_scalar_type(n_docs))

    def encode(self, texts: Sequence[str]) -> sp.csr_matrix:
        """L2-normalised TF-IDF rows (float32 CSR, shape ``(n, n_features)``)."""
        self._check_fitted()
        texts = check_texts(texts)
        if len(texts) == 1:
            row = self.encode_row(texts[0])
            indptr = np.array([0, len(row.columns)], dtype=np.int64)
            return to_csr((indptr, row.columns, row.values), self.n_features)
        parts = [self._weigh(self.hasher_.chunk_counts(c)) for c in self.hasher_.chunks(texts)]
        return to_csr(stack_raw(parts), self.n_features)

    def encode_row(self, text: str) -> SparseRow:
        """One text's row of :meth:`encode` (sorted columns and their values), without
        building a sparse matrix: the live path, with the same float32 values as the batch."""
        self._check_fitted()
        row = self.hasher_.row_counts(text)
        cols, values = row.columns, row.values
        if self.sublinear_tf:
            np.log(values, out=values)
            values += 1.0
        fast = kernels()
        if fast is not None:
            fast.tfidf_weigh(cols, values, self.idf_, self.n_features, float(self.word_weight))
            return row
        values *= self.idf_[cols]
        # _mix_blocks for one row: the same float operations in the same order.
        n_word = int(np.searchsorted(cols, self.n_features >> 1))
        sq = values * values
        norms = np.sqrt(np.bincount(cols >= (self.n_features >> 1), weights=sq, minlength=2))
        word_norm, char_norm = float(norms[0]), float(norms[1])
        word_scale = np.sqrt(self.word_weight) / word_norm if word_norm > 0 else 0.0
        char_scale = np.sqrt(1.0 - self.word_weight) / char_norm if char_norm > 0 else 0.0
        factors = np.empty(len(values), dtype=np.float64)
        factors[:n_word] = word_scale * word_scale
        factors[n_word:] = char_scale * char_scale
        factors *= sq
        total = float(np.sqrt(np.bincount(np.zeros(len(values), np.intp), factors, 1)[0]))
        if total > 0:
            word_scale, char_scale = word_scale / total, char_scale / total
        values[:n_word] *= np.float32(word_scale)
        values[n_word:] *= np.float32(char_scale)
        return row

    def encode_query_row(self, query: Query) -> SparseRow | None:
        """:meth:`encode_row` of the query's text; ``None`` for a subclass whose
        ``encode_queries`` reads more than the text."""
        if type(self).encode_queries is not Encoder.encode_queries:
            return None
        return self.encode_row(query.text)

    def _weigh(self, raw: RawCounts) -> RawCounts:
        """Counts → TF-IDF in place, chunk by chunk (cache-sized arrays are much faster)."""
        indptr, indices, values = raw
        if self.sublinear_tf:
            np.log(values, out=values)
            values += 1.0
        values *= self.idf_[indices]
        self._mix_blocks(indptr, indices, values)
        return raw

    def _mix_blocks(
        self,
        indptr: npt.NDArray[np.int64],
        indices: npt.NDArray[np.int32],
        values: npt.NDArray[np.float32],
    ) -> None:
        """Scale each row's word and char blocks to norms √w and √(1 − w), then to unit norm."""
        n = len(indptr) - 1
        rows = np.repeat(np.arange(n), np.diff(indptr))
        is_char = indices >= (self.n_features >> 1)
        block = rows * 2 + is_char
        sq = values * values
        norms = np.sqrt(np.bincount(block, weights=sq, minlength=2 * n))
        weights = np.tile([np.sqrt(self.word_weight), np.sqrt(1.0 - self.word_weight)], n)
        scale = np.divide(weights, norms, out=np.zeros_like(norms), where=norms > 0)
        # A row with one block empty (or a zero weight) is rescaled to unit norm overall.
        total = np.sqrt(np.bincount(rows, weights=sq * scale[block] ** 2, minlength=n))
        scale /= np.where(total > 0, total, 1.0).repeat(2)
        values *= scale[block].astype(np.float32)

    def _check_fitted(self) -> None:
        if not hasattr(self, "idf_"):
            raise RuntimeError("TfidfEncoder is not fitted; call fit(texts) first")

    @property
    def key(self) -> str:
        """``tfidf:<digest of parameters and document frequencies>``."""
        self._check_fitted()
        return self.key_

    def get_state(self) -> dict[str, Any]:
        """Parameters plus the document frequencies of the n-grams seen in training."""
        self._check_fitted()
        seen = np.flatnonzero(self.df_).astype(np.int64)
        return {
            "params": self._params(),
            "n_docs": self.n_docs_,
            "df_columns": seen,
            "df_counts": self.df_[seen].astype(np.int64),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a fitted encoder; encodings are bit-identical to the saved one's."""
        params = dict(state["params"])
        params["char_ngrams"] = tuple(params["char_ngrams"])
        enc = cls(**params)
        enc._hasher().validate()
        df = np.zeros(enc.n_features, dtype=np.int64)
        df[np.asarray(state["df_columns"], dtype=np.int64)] = state["df_counts"]
        enc._set_df(df, int(state["n_docs"]))
        return enc
