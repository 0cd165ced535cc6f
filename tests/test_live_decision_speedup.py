"""The router's one-query path (live decisions) against the batch path and the plain formula.

A live request is encoded with ``TfidfEncoder.encode_row`` and estimated with
``KNNEstimator.predict_row``, never building a sparse matrix. These tests pin that path to
the batch path on the cascades9 test prompts: the same encodings bit for bit, the same
choices, and estimates equal to the kNN formula evaluated plainly (float32 products with the
dense block, float64 sums of the sparse part, the same top-k).

The batch path multiplies all queries with one sparse product whose float32 rounding differs
from the one-query path's; moving a near-tied 300th neighbour, that shifts ``Q̂`` by up to
~1e-5 (already the case before the live path was sped up), hence the looser bound there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from llmdispatch.data import load_table
from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators.knn import KNNEstimator
from llmdispatch.features.base import Encoder
from llmdispatch.features.hashing import NgramHasher, SparseRow
from llmdispatch.features.tfidf import TfidfEncoder
from llmdispatch.policies.router import Router
from llmdispatch.query import Query

#: Texts that exercise the normalisation: empty, whitespace runs, NUL, non-ASCII case
#: folding (the Kelvin sign lower-cases to ASCII), astral code points, lone surrogates.
ODD_TEXTS = [
    "",
    " ",
    "?!",
    "  \t\n  word \r\n\n end  ",
    "a\x00b\x00\x00c",
    "İstanbul ÇAĞ straße",
    "\u212a kelvin",
    "😀 emoji 😀😀 text",
    "日本語のテキスト",
    "lone \ud800 surrogate",
    "x" * 3,
    "ab",
    "same same same same same",
]


@pytest.fixture(scope="module")
def cascades9(shared_data: Callable[[str], Path]) -> tuple[OutcomeTable, OutcomeTable]:
    table = load_table(shared_data("cascades9"))
    return table.split("train"), table.split("test").take(np.arange(300))


@pytest.fixture(scope="module")
def router(cascades9: tuple[OutcomeTable, OutcomeTable]) -> Router:
    """The exact sparse search (the formula below is written for it)."""
    return Router(lam=0.1, estimator_params={"n_components": None}).fit(cascades9[0])


@pytest.fixture(scope="module")
def lsa_router(cascades9: tuple[OutcomeTable, OutcomeTable]) -> Router:
    """The default kNN: neighbours searched in an LSA projection of the TF-IDF rows."""
    return Router(lam=0.1).fit(cascades9[0])


def _texts(test: OutcomeTable) -> list[str]:
    return [str(t) for t in test.full_prompts()] + ODD_TEXTS


def test_row_counts_equal_chunk_counts(cascades9: tuple[OutcomeTable, OutcomeTable]) -> None:
    texts = _texts(cascades9[1])[::5] + ODD_TEXTS
    for hasher in (NgramHasher(), NgramHasher(1 << 12, 1, (2, 4)), NgramHasher(1 << 14, 3, (0, 0))):
        for text in texts:
            _, indices, counts = hasher.chunk_counts([text])
            row = hasher.row_counts(text)
            assert row.n_features == hasher.n_features
            assert row.columns.dtype == indices.dtype and row.values.dtype == counts.dtype
            np.testing.assert_array_equal(row.columns, indices)
            np.testing.assert_array_equal(row.values, counts)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"n_features": 1 << 14, "word_ngrams": 1, "char_ngrams": (2, 4), "sublinear_tf": False},
        {"word_weight": 0.0},
        {"word_weight": 1.0, "char_ngrams": (0, 0)},
    ],
)
def test_encode_row_is_the_batch_row_bit_for_bit(
    cascades9: tuple[OutcomeTable, OutcomeTable], params: dict[str, Any]
) -> None:
    train, test = cascades9
    enc = TfidfEncoder(**params).fit([str(t) for t in train.full_prompts()])
    texts = _texts(test)
    X = enc.encode(texts)
    for i, text in enumerate(texts):
        row = enc.encode_row(text)
        lo, hi = X.indptr[i], X.indptr[i + 1]
        np.testing.assert_array_equal(row.columns, X.indices[lo:hi])
        np.testing.assert_array_equal(row.values, X.data[lo:hi])
        assert row.values.dtype == np.float32
        single = enc.encode([text])  # the one-text batch call takes the same path
        np.testing.assert_array_equal(single.indices, row.columns)
        np.testing.assert_array_equal(single.data, row.values)


def _plain_knn(est: KNNEstimator, block: np.ndarray, row: SparseRow) -> np.ndarray:
    """The kNN estimate of one row written out plainly (the reference for the live path):
    ``block`` holds the index's frequent columns × training rows (float32, C order)."""
    freq = est._index()._freq
    assert freq is not None
    X = sp.csr_matrix(est.X_train_)
    norm = np.sqrt(np.dot(row.values, row.values))
    cols, vals = row.columns, row.values / norm if norm > 0 else row.values
    in_block = np.isin(cols, freq)
    dense = vals[in_block] @ block[np.searchsorted(freq, cols[in_block])]
    # Sparse part: float32 products, summed in float64 over the query's columns in order.
    rare = X[:, cols[~in_block]].toarray().T * vals[~in_block][:, None]
    sims = dense.astype(np.float64) + rare.astype(np.float64).sum(axis=0)
    idx = np.argsort(-sims, kind="stable")[: est.k_]  # equal similarities: lower row first
    top = sims[idx]
    t = est.temperature_
    w = np.maximum(top, 0.0) if t is None else np.exp((np.minimum(top, 1.0) - 1.0) / t)
    num = w @ (est.Y_ * est.M_)[idx] + est.prior_strength_ * est.prior_
    den = w @ est.M_[idx].astype(np.float64) + est.prior_strength_
    q = np.where(den > 0, num / np.where(den > 0, den, 1.0), est.prior_)
    return np.clip(q, 0.0, 1.0)


def test_predict_row_is_the_plain_formula(
    router: Router, cascades9: tuple[OutcomeTable, OutcomeTable]
) -> None:
    est = router.estimator_
    assert isinstance(est, KNNEstimator)
    freq = est._index()._freq
    assert freq is not None
    block = np.ascontiguousarray(sp.csr_matrix(est.X_train_)[:, freq].toarray().T)
    for text in _texts(cascades9[1])[::3]:
        row = router.encoder_.encode_query_row(Query(text=text))
        assert row is not None
        np.testing.assert_allclose(
            est.predict_row(row), _plain_knn(est, block, row), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("search", ["exact", "lsa"])
def test_one_query_decisions_match_the_batch(
    router: Router,
    lsa_router: Router,
    cascades9: tuple[OutcomeTable, OutcomeTable],
    search: str,
) -> None:
    if search == "lsa":
        router = lsa_router
        assert getattr(router.estimator_, "projection_", None) is not None
    test = cascades9[1]
    queries = [Query(text=str(text)) for text in test.full_prompts()]
    Q = router.quality_table(test.blind())
    C = router.costs_.for_queries(queries)
    allowed = np.ones_like(Q, dtype=bool)
    batch_choice = Router.choose(Q, C, allowed, router.lam_, router.cost_scale_)
    for i, query in enumerate(queries):
        plan = router.explain(query)
        by_model = {c.model: c for c in plan.candidates}
        assert plan.choice == router.models_[batch_choice[i]]
        q = np.array([by_model[m].quality for m in router.models_])
        np.testing.assert_allclose(q, Q[i], rtol=0, atol=1e-4)
        # The live quality call and the batch estimator agree with the plan exactly.
        np.testing.assert_array_equal(router.quality([query])[0], q)
        X = router.encoder_.encode([query.text])
        np.testing.assert_array_equal(router.estimator_.predict(X)[0], q)


def test_live_costs_equal_the_batch_costs(
    router: Router, cascades9: tuple[OutcomeTable, OutcomeTable]
) -> None:
    for text in _texts(cascades9[1])[:50]:
        for query in (Query(text=text), Query(text=text, tokens_in=1234)):
            np.testing.assert_array_equal(
                router.costs_.for_query(query), router.costs_.for_queries([query])[0]
            )


def test_predict_row_rejects_bad_rows(router: Router) -> None:
    est = router.estimator_
    assert isinstance(est, KNNEstimator)
    row = router.encoder_.encode_query_row(Query(text="what is 2 + 2?"))
    assert row is not None
    bad = SparseRow(row.columns, row.values.copy(), row.n_features)
    bad.values[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.predict_row(bad)
    with pytest.raises(ValueError, match="features"):
        est.predict_row(SparseRow(row.columns, row.values, row.n_features * 2))


def test_encoders_without_a_row_path_fall_back() -> None:
    class WithTurns(TfidfEncoder):
        def encode_queries(self, queries: Sequence[Query]) -> sp.csr_matrix:
            return self.encode([f"{q.turns} {q.text}" for q in queries])

    texts = ["one prompt", "another prompt", "a third one"]
    assert WithTurns().fit(texts).encode_query_row(Query(text="x")) is None
    assert TfidfEncoder().fit(texts).encode_query_row(Query(text="x")) is not None
    assert Encoder.encode_query_row(TfidfEncoder().fit(texts), Query(text="x")) is None


def test_threads_share_a_batch_with_the_same_estimates(
    lsa_router: Router, cascades9: tuple[OutcomeTable, OutcomeTable]
) -> None:
    from llmdispatch.policies.router import PARALLEL_MIN_QUERIES, RouterError

    queries = [Query(text=str(t)) for t in cascades9[1].full_prompts()]
    assert len(queries) >= PARALLEL_MIN_QUERIES  # large enough to be split
    serial = lsa_router.quality(queries)
    # BLAS blocks float32 products by batch size, so rows may differ in the last bits.
    np.testing.assert_allclose(lsa_router.quality(queries, n_jobs=2), serial, rtol=0, atol=1e-5)
    np.testing.assert_allclose(lsa_router.quality(queries, n_jobs=3), serial, rtol=0, atol=1e-5)
    with pytest.raises(RouterError, match="n_jobs"):
        lsa_router.quality(queries, n_jobs=0)
