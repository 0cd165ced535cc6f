"""The LSA projection shared by the kNN search and the dense-input estimators."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from llmdispatch.estimators._projection import Projector
from llmdispatch.estimators.heads import LinearHeads
from llmdispatch.features.lsa import LsaProjection, column_positions, select_columns
from llmdispatch.features.tfidf import TfidfEncoder
from test_router import planted


@pytest.fixture(scope="module")
def rows() -> sp.csr_matrix:
    texts = list(planted(300, seed=11).full_prompts())
    return TfidfEncoder(n_features=1 << 14).fit(texts).encode(texts)


def test_one_row_at_a_time_equals_the_batch(rows: sp.csr_matrix) -> None:
    lsa = LsaProjection.fit(rows[:250], n_components=24, max_columns=2000)
    batch = lsa.transform(rows[250:])  # > a few rows: one sparse product
    assert batch.shape == (50, 24) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    few = np.vstack([lsa.transform(rows[i : i + 2]) for i in range(250, 300, 2)])
    np.testing.assert_allclose(few, batch, atol=1e-5)
    # Only the most frequent columns are kept, and an empty row projects to zero.
    assert len(lsa.columns) <= 2000
    empty = sp.csr_matrix((1, rows.shape[1]), dtype=np.float32)
    assert not lsa.transform(empty).any()
    again = LsaProjection.from_state(lsa.get_state())
    np.testing.assert_array_equal(again.transform(rows[250:]), batch)


def test_projector_rejects_an_artifact_of_the_old_projection() -> None:
    with pytest.raises(ValueError, match="train the router again"):
        Projector.from_state({"mode": "lsa", "n_features": 16})


def test_linear_design_keeps_the_seen_columns_like_scipy_indexing(rows: sp.csr_matrix) -> None:
    table = planted(300, seed=11)
    heads = LinearHeads(Cs=(1.0,), max_iter=20).fit(table.take(np.arange(200)), rows[:200])
    new = rows[200:]
    expected = sp.csr_matrix(new)[:, heads.columns_]
    got = heads._design(new)
    np.testing.assert_array_equal(got.indptr, expected.indptr)
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_allclose(got.data, expected.data, rtol=1e-6)


@pytest.mark.parametrize(("kept", "dtype"), [(1 << 14, np.int16), (1 << 15, np.int32)])
def test_column_map_is_as_narrow_as_its_places_allow(kept: int, dtype: type) -> None:
    columns = np.sort(np.random.default_rng(0).choice(1 << 20, kept, replace=False))
    position = column_positions(columns, 1 << 20)
    assert position.dtype == dtype
    assert np.array_equal(position[columns], np.arange(kept))
    assert np.count_nonzero(position >= 0) == kept
    # select_columns renumbers through either width alike.
    X = sp.random(5, 1 << 20, density=1e-3, format="csr", random_state=1, dtype=np.float32)
    wide = select_columns(X, position.astype(np.int64), kept)
    narrow = select_columns(X, position, kept)
    assert (wide != narrow).nnz == 0 and np.array_equal(wide.indices, narrow.indices)
