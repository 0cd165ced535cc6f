"""The kNN's one-query path (live requests) gives the batch path's estimates."""

from __future__ import annotations

import numpy as np
import pytest

from llmdispatch.estimators.knn import KNNEstimator
from llmdispatch.features.tfidf import TfidfEncoder
from test_router import planted


@pytest.mark.parametrize("temperature", [None, 0.1])
def test_single_rows_match_the_batch(temperature: float | None) -> None:
    table = planted(160, seed=3)
    texts = list(table.full_prompts())
    enc = TfidfEncoder(n_features=1 << 14).fit(texts[:120])
    est = KNNEstimator(k=15, temperature=temperature, prior_strength=1.0)
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
