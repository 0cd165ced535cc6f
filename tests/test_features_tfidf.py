"""``tfidf`` and ``tfidf-svd``: shapes, normalisation, IDF, determinism, artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from llmdispatch.artifacts import load_artifact, save_artifact
from llmdispatch.data import load_table
from llmdispatch.features import TfidfEncoder, TfidfSvdEncoder
from llmdispatch.features.lsa import LsaProjection


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    table = load_table("cascades9")
    rng = np.random.default_rng(0)
    idx = rng.choice(len(table.prompts), 600, replace=False)
    return [str(p) for p in table.prompts[idx]]


def _row_norms(X: sp.csr_matrix) -> np.ndarray:
    return np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())


def test_encode_gives_unit_float32_csr_rows(prompts: list[str]) -> None:
    enc = TfidfEncoder().fit(prompts[:400])
    X = enc.encode(prompts[400:])
    assert isinstance(X, sp.csr_matrix) and X.dtype == np.float32
    assert X.shape == (200, 1 << 20)
    assert X.has_canonical_format
    np.testing.assert_allclose(_row_norms(X), 1.0, atol=1e-5)
    assert TfidfEncoder.sparse_output


def test_empty_and_featureless_texts_give_zero_rows(prompts: list[str]) -> None:
    enc = TfidfEncoder().fit(prompts[:50])
    X = enc.encode(["", "?!", prompts[0]])
    assert X[0].nnz == 0 and X[1].nnz == 0
    assert _row_norms(X)[2] == pytest.approx(1.0, abs=1e-5)


def test_rare_ngrams_weigh_more_than_common_ones() -> None:
    texts = ["the cat sat", "the dog ran", "the bird flew", "the zebra"]
    enc = TfidfEncoder(char_ngrams=(0, 0), word_ngrams=1, n_features=1 << 16).fit(texts)
    X = enc.encode(["the zebra"])
    h = enc.hasher_
    the_col = h.counts(["the"]).indices[0]
    zebra_col = h.counts(["zebra"]).indices[0]
    assert X[0, zebra_col] > X[0, the_col] > 0
    n = len(texts)
    assert enc.idf_[the_col] == pytest.approx(np.log((1 + n) / (1 + n)) + 1)
    assert enc.idf_[zebra_col] == pytest.approx(np.log((1 + n) / 2) + 1)


def test_word_weight_sets_the_share_of_the_word_block(prompts: list[str]) -> None:
    enc = TfidfEncoder(word_weight=0.3).fit(prompts[:100])
    X = enc.encode(prompts[100:110])
    half = enc.n_features >> 1
    word_sq = np.asarray(X[:, :half].multiply(X[:, :half]).sum(axis=1)).ravel()
    np.testing.assert_allclose(word_sq, 0.3, atol=1e-4)


def test_similar_prompts_are_nearest(prompts: list[str]) -> None:
    enc = TfidfEncoder().fit(prompts)
    base = prompts[:20]
    edited = [p.replace("?", " ?").upper() + " Please answer." for p in base]
    S = (enc.encode(edited) @ enc.encode(prompts).T).toarray()
    assert (S.argmax(axis=1) == np.arange(20)).mean() >= 0.95


def test_batch_equals_single_and_is_deterministic(prompts: list[str]) -> None:
    enc = TfidfEncoder().fit(prompts[:200])
    batch = enc.encode(prompts[:30])
    for i in range(30):
        assert (enc.encode([prompts[i]]) != batch[i]).nnz == 0
    again = TfidfEncoder().fit(prompts[:200])
    assert again.key == enc.key
    assert (again.encode(prompts[:30]) != batch).nnz == 0
    assert TfidfEncoder().fit(prompts[:199]).key != enc.key


def test_artifact_round_trip_is_bit_identical(prompts: list[str], tmp_path: Path) -> None:
    enc = TfidfEncoder(char_ngrams=(2, 4), word_weight=0.4).fit(prompts[:300])
    save_artifact(str(tmp_path / "enc"), enc)  # type: ignore[arg-type]  # str paths work too
    loaded, _ = load_artifact(str(tmp_path / "enc"))
    assert isinstance(loaded, TfidfEncoder)
    assert loaded.key == enc.key
    a, b = enc.encode(prompts[300:]), loaded.encode(prompts[300:])
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.data, b.data)
    # Only the columns seen in training are stored, not a dense 2**20 vector.
    assert len(enc.get_state()["df_columns"]) == np.count_nonzero(enc.df_) < enc.n_features // 4


def test_document_frequencies_are_held_in_the_smallest_type(prompts: list[str]) -> None:
    enc = TfidfEncoder().fit(prompts[:300])
    assert enc.df_.dtype == np.uint16 and enc.df_.nbytes == 2 * enc.n_features
    assert TfidfEncoder().fit(prompts[:200]).df_.dtype == np.uint8
    # The LSA fit picks the same columns from the compact counts as from int64 ones.
    X = enc.encode(prompts[:300])
    wide = np.bincount(X.indices, minlength=X.shape[1]).astype(np.int64)
    assert np.array_equal(enc.df_, wide)
    a = LsaProjection.fit(X, 8, max_columns=500, df=enc.df_)
    b = LsaProjection.fit(X, 8, max_columns=500, df=wide)
    assert np.array_equal(a.columns, b.columns)
    assert np.array_equal(a.projection, b.projection)


def test_unfitted_and_bad_input_errors(prompts: list[str]) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        TfidfEncoder().encode(["x"])
    with pytest.raises(ValueError, match="zero texts"):
        TfidfEncoder().fit([])
    with pytest.raises(ValueError, match="word_weight"):
        TfidfEncoder(word_weight=1.5).fit(prompts[:5])
    with pytest.raises(ValueError, match="power of two"):
        TfidfEncoder(n_features=1000).fit(prompts[:5])
    with pytest.raises(TypeError, match="single string"):
        TfidfEncoder().fit(prompts[:5]).encode("a bare string")  # type: ignore[arg-type]


def test_svd_gives_dense_unit_rows_and_round_trips(prompts: list[str], tmp_path: Path) -> None:
    enc = TfidfSvdEncoder(n_components=32, max_columns=4096, max_rows=300).fit(prompts[:400])
    X = enc.encode(prompts[400:])
    assert isinstance(X, np.ndarray) and X.dtype == np.float32 and X.shape == (200, 32)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    assert not TfidfSvdEncoder.sparse_output
    save_artifact(tmp_path / "svd", enc)  # type: ignore[arg-type]
    loaded, _ = load_artifact(tmp_path / "svd")
    assert loaded.key == enc.key
    assert np.array_equal(loaded.encode(prompts[400:]), X)
    refit = TfidfSvdEncoder(n_components=32, max_columns=4096, max_rows=300).fit(prompts[:400])
    assert np.array_equal(refit.encode(prompts[400:]), X)


def test_svd_keeps_neighbourhoods(prompts: list[str]) -> None:
    enc = TfidfSvdEncoder(n_components=64, max_rows=600).fit(prompts)
    tfidf = enc.tfidf_
    dense = enc.encode(prompts[:100])
    sparse_nn = (tfidf.encode(prompts[:100]) @ tfidf.encode(prompts[:100]).T).toarray()
    np.fill_diagonal(sparse_nn, -1)
    dense_sim = dense @ dense.T
    np.fill_diagonal(dense_sim, -1)
    # The LSA neighbour is much more similar in TF-IDF space than a random prompt.
    picked = sparse_nn[np.arange(100), dense_sim.argmax(axis=1)]
    assert picked.mean() > 2 * sparse_nn[sparse_nn >= 0].mean()


def test_svd_caps_components_on_tiny_data() -> None:
    enc = TfidfSvdEncoder(n_components=256).fit(["alpha beta", "gamma delta", "beta gamma"])
    assert enc.encode(["alpha"]).shape == (1, 2)
    with pytest.raises(ValueError, match="at least 2"):
        TfidfSvdEncoder().fit(["only one"])
