"""The kNN's one-query path (live requests) gives the batch path's estimates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmdispatch.estimators.knn import KNNEstimator
from llmdispatch.features.tfidf import TfidfEncoder
from test_router import planted


@pytest.mark.parametrize("n_components", [None, 32])
@pytest.mark.parametrize("temperature", [None, 0.1])
def test_single_rows_match_the_batch(temperature: float | None, n_components: int | None) -> None:
    table = planted(160, seed=3)
    texts = list(table.full_prompts())
    enc = TfidfEncoder(n_features=1 << 14).fit(texts[:120])
    est = KNNEstimator(k=15, temperature=temperature, prior_strength=1.0, n_components=n_components)
    est.fit(table.take(np.arange(120)), enc.encode(texts[:120]))
    X = enc.encode([*texts[120:], ""])  # no n-grams at all
    batch = est.predict(X)
    single = np.vstack([est.predict(X[i : i + 1]) for i in range(X.shape[0])])
    np.testing.assert_allclose(single, batch, atol=1e-5)
    if temperature is None:  # no neighbour has a positive similarity: the prior answers
        np.testing.assert_allclose(single[-1], np.clip(est.prior_, 0, 1), atol=1e-9)


def test_single_row_rejects_bad_input() -> None:
    table = planted(60, seed=1)
    texts = list(table.full_prompts())
    enc = TfidfEncoder(n_features=1 << 12).fit(texts)
    est = KNNEstimator(k=5).fit(table, enc.encode(texts))
    X = enc.encode(texts[:1])
    X.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.predict(X)
    with pytest.raises(ValueError, match="features"):
        est.predict(TfidfEncoder(n_features=1 << 10).fit(texts).encode(texts[:1]))


def test_index_replaces_the_training_rows_and_gives_them_back_exactly() -> None:
    """Once predicting, the kNN keeps its rows only in the index; saving rebuilds them."""
    table = planted(160, seed=5)
    texts = list(table.full_prompts())
    enc = TfidfEncoder(n_features=1 << 14).fit(texts)
    X = enc.encode(texts)
    est = KNNEstimator(k=10, n_components=None).fit(table, X)
    before = est.X_train_.copy()
    Q = est.predict(X[:5])
    assert est.__dict__["_X_train"] is None  # the index holds them now
    after = est.X_train_
    assert after.dtype == before.dtype and after.shape == before.shape
    np.testing.assert_array_equal(after.indptr, before.indptr)
    np.testing.assert_array_equal(after.indices, before.indices)
    np.testing.assert_array_equal(after.data, before.data)
    again = KNNEstimator.from_state(est.get_state())
    np.testing.assert_array_equal(again.predict(X[:5]), Q)
    # The low-rank search keeps its projected rows only in the index too.
    lsa = KNNEstimator(k=10, n_components=16).fit(table, X)
    rows = lsa.X_train_.copy()
    Q = lsa.predict(X[:5])
    assert lsa.__dict__["_X_train"] is None
    np.testing.assert_array_equal(lsa.X_train_, rows)
    np.testing.assert_array_equal(KNNEstimator.from_state(lsa.get_state()).predict(X[:5]), Q)


def test_low_rank_search_is_chosen_by_leave_one_out_and_round_trips(tmp_path: Path) -> None:
    """``n_components="auto"`` scores the exact and the LSA search on the same grid and
    keeps the lower leave-one-out error; the artifact reloads with identical estimates."""
    from llmdispatch.artifacts import load_artifact, save_artifact

    table = planted(200, seed=7)
    texts = list(table.full_prompts())
    enc = TfidfEncoder(n_features=1 << 14).fit(texts)
    X = enc.encode(texts)
    est = KNNEstimator(n_components="auto", components_grid=(8, 32)).fit(table, X)
    spaces = {r["n_components"] for r in est.cv_results_}
    assert spaces == {None, 8, 32}
    best = min(est.cv_results_, key=lambda r: r["mse"])
    width = None if est.projection_ is None else est.projection_.n_components
    assert best["n_components"] == width
    assert est.X_train_.shape[1] == (X.shape[1] if width is None else width)
    # Dense features are never projected.
    dense = KNNEstimator(n_components=8).fit(table, X[:, :64].toarray())
    assert dense.projection_ is None
    with pytest.raises(ValueError, match="n_components"):
        KNNEstimator(n_components=0).fit(table, X)
    lsa = KNNEstimator(n_components=32).fit(table, X)
    save_artifact(tmp_path / "knn", lsa)  # type: ignore[arg-type]
    loaded, _ = load_artifact(tmp_path / "knn")
    np.testing.assert_array_equal(loaded.predict(X[:20]), lsa.predict(X[:20]))
    row = enc.encode_row(texts[3])
    np.testing.assert_allclose(loaded.predict_row(row), lsa.predict(X[3:4])[0], atol=1e-5)


def test_unfitted_knn_has_no_training_rows() -> None:
    assert not hasattr(KNNEstimator(), "X_train_")


def test_warm_builds_the_index_and_free_memory_is_released() -> None:
    import platform

    from llmdispatch.gateway.memory import release_free_memory

    table = planted(80, seed=2)
    texts = list(table.full_prompts())
    enc = TfidfEncoder(n_features=1 << 12).fit(texts)
    est = KNNEstimator(k=5).fit(table, enc.encode(texts))
    assert est.__dict__["_index_cache"] is None
    est.warm()
    assert est.__dict__["_index_cache"] is not None
    assert release_free_memory() is (platform.libc_ver()[0] == "glibc")


def test_policy_warm_reaches_its_estimator() -> None:
    from llmdispatch.policies.router import Router

    router = Router(estimator="knn", estimator_params={"k": 5}).fit(planted(80, seed=4))
    assert router.estimator_.__dict__["_index_cache"] is None
    router.warm()
    assert router.estimator_.__dict__["_index_cache"] is not None


@pytest.mark.parametrize("n, k", [(5608, 50), (5608, 300), (5608, 701), (1485, 300), (40, 5)])
def test_top_k_by_threshold_is_the_exact_top_k(n: int, k: int) -> None:
    """The sampled-threshold selection returns exactly the k largest, most similar first,
    also when the threshold leaves too few candidates (many equal similarities); equal
    similarities go by row index, so the one-row and the block path pick the same rows."""
    from llmdispatch.estimators.knn import _top_k, _top_k_one

    rng = np.random.default_rng(n + k)
    cases = [
        rng.standard_normal(n),
        np.round(rng.standard_normal(n), 1),  # heavy ties
        np.sort(rng.standard_normal(n)),  # the largest all outside the sample's stride
        np.zeros(n),
    ]
    for sims in cases:
        idx, top = _top_k_one(sims, k)
        assert len(set(idx.tolist())) == k
        np.testing.assert_array_equal(top, np.sort(sims)[::-1][:k])
        np.testing.assert_array_equal(sims[idx], top)
        np.testing.assert_array_equal(idx, np.argsort(-sims, kind="stable")[:k])
    block = np.vstack(cases).astype(np.float32)
    idx2, top2 = _top_k(block, k)
    assert top2.dtype == np.float64
    np.testing.assert_array_equal(idx2, np.argsort(-block, axis=1, kind="stable")[:, :k])
    for row, picked in zip(block, idx2, strict=True):
        np.testing.assert_array_equal(_top_k_one(row, k)[0], picked)
    np.testing.assert_array_equal(np.take_along_axis(block, idx2, axis=1), top2)
    np.testing.assert_array_equal(top2, -np.sort(-block.astype(np.float64), axis=1)[:, :k])
