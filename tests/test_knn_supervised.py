"""The kNN's supervised neighbourhoods (``supervised_components``): a PLS map fitted on the
training scores, searched beside the features; saved, restored and checked."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from _cascade_tables import make_table
from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators._common import l2_normalize, table_scores
from llmdispatch.estimators.knn import KNNEstimator, _fit_pls


def nuisance_table(n: int, seed: int) -> tuple[OutcomeTable, np.ndarray, np.ndarray]:
    """Dense features whose cosine is dominated by 12 loud dimensions unrelated to the
    scores; a quiet 2-dimensional block says which of two models is right. Returns the
    table, the features and the expected quality of every prompt."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 2, size=n)
    loud = rng.normal(size=(n, 12)) * 3.0
    quiet = np.eye(2)[topic] * 1.5
    X = np.hstack([loud, quiet])
    expected = np.where(topic[:, None] == 0, [0.9, 0.1], [0.1, 0.9])
    score = (rng.random(expected.shape) < expected).astype(float)
    return make_table(score, models=("a", "b")), X, expected


def test_supervised_space_finds_the_quiet_signal() -> None:
    table, X, _ = nuisance_table(300, seed=1)
    _, X_test, expected = nuisance_table(200, seed=2)
    plain = KNNEstimator(k=10, temperature=None, prior_strength=1.0).fit(table, X)
    supervised = KNNEstimator(
        k=10, temperature=None, prior_strength=1.0, supervised_components=2
    ).fit(table, X)
    err_plain = np.mean((plain.predict(X_test) - expected) ** 2)
    err_supervised = np.mean((supervised.predict(X_test) - expected) ** 2)
    assert err_supervised < 0.5 * err_plain
    # The routed choice: the supervised kNN picks the right model far more often.
    right = expected.argmax(axis=1)
    assert (supervised.predict(X_test).argmax(axis=1) == right).mean() > 0.9
    assert (plain.predict(X_test).argmax(axis=1) == right).mean() < 0.8


def test_pls_map_is_sklearns_transform() -> None:
    from sklearn.cross_decomposition import PLSRegression

    table, X, _ = nuisance_table(120, seed=3)
    Xn = l2_normalize(X)
    scores = table_scores(table)
    mean, rotations = _fit_pls(Xn, scores, 3)
    y = np.where(scores.M, scores.Y, scores.prior)
    reference = PLSRegression(n_components=3, scale=False).fit(Xn, y).transform(Xn)
    np.testing.assert_allclose((Xn - mean) @ rotations, reference, atol=1e-4)


def test_round_trip_and_rows_are_unit_norm() -> None:
    table, X, _ = nuisance_table(150, seed=4)
    est = KNNEstimator(k=5, supervised_components=2).fit(table, X)
    assert np.allclose(np.linalg.norm(est.X_train_, axis=1), 1.0, atol=1e-5)
    again = KNNEstimator.from_state(est.get_state())
    assert again.supervised_components == 2
    np.testing.assert_array_equal(again.predict(X[:20]), est.predict(X[:20]))
    one_by_one = np.vstack([est.predict(X[i : i + 1]) for i in range(20)])
    np.testing.assert_allclose(one_by_one, est.predict(X[:20]), atol=1e-9)


def test_bad_inputs_are_clear_errors() -> None:
    table, X, _ = nuisance_table(40, seed=5)
    with pytest.raises(ValueError, match="dense features"):
        KNNEstimator(k=5, supervised_components=2).fit(table, sp.csr_matrix(X))
    with pytest.raises(ValueError, match="exceeds what 40 prompts × 14 features allow"):
        KNNEstimator(k=5, supervised_components=20).fit(table, X)
    with pytest.raises(ValueError, match="supervised_components must be an integer"):
        KNNEstimator(k=5, supervised_components=0).fit(table, X)
