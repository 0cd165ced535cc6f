"""The compiled live-path kernels (numba): the same features and decisions as numpy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdispatch import kernels
from llmdispatch.features.hashing import NgramHasher
from llmdispatch.features.lsa import LsaProjection
from llmdispatch.features.tfidf import TfidfEncoder

pytest.importorskip("numba")

TEXTS = [
    "What is the capital of France?",
    "def f(x):\n    return x ** 2  # square it",
    "  leading and trailing  whitespace\t\n",
    "héllo wörld ✓ 日本語のテキスト",
    "𝔘nicode beyond the BMP 🙂 counts as word characters",
    "a\x00b NUL inside",
    "",
    "   ",
    "x",
    "ab",
    "word " * 400,
    "Solve: ∫ x² dx from 0 to 1. (A) 1/3 (B) 1/2 (C) 1 (D) 2",
]


@pytest.fixture
def both_paths() -> Callable[[Callable[[], object]], tuple[object, object]]:
    """Run a function on the numpy path, then on the kernels (conftest switches them off
    after the test)."""

    def run(fn: Callable[[], object]) -> tuple[object, object]:
        kernels.deactivate()
        slow = fn()
        assert kernels.warm()
        return slow, fn()

    return run


@pytest.mark.parametrize(
    ("word_ngrams", "char_ngrams", "n_features"),
    [(2, (3, 5), 1 << 20), (1, (0, 0), 1 << 16), (3, (1, 2), 1 << 10), (0, (4, 4), 1 << 18)],
)
def test_row_counts_are_identical(
    both_paths: Callable[[Callable[[], object]], tuple[object, object]],
    word_ngrams: int,
    char_ngrams: tuple[int, int],
    n_features: int,
) -> None:
    hasher = NgramHasher(n_features=n_features, word_ngrams=word_ngrams, char_ngrams=char_ngrams)
    slow, fast = both_paths(lambda: [hasher.row_counts(t) for t in TEXTS])
    assert isinstance(slow, list) and isinstance(fast, list)
    for a, b in zip(slow, fast, strict=True):
        assert a.columns.dtype == b.columns.dtype and a.values.dtype == b.values.dtype
        np.testing.assert_array_equal(a.columns, b.columns)
        np.testing.assert_array_equal(a.values, b.values)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300),
        st.text(alphabet=st.characters(max_codepoint=127), max_size=300),  # the ASCII path
        st.text(alphabet=" \t\n\r\x0b\x0cab_1.", max_size=60),  # whitespace runs
    )
)
def test_row_counts_are_identical_on_any_text(text: str) -> None:
    hasher = NgramHasher()
    kernels.deactivate()  # each example starts on the numpy path
    slow = hasher.row_counts(text)
    assert kernels.warm()
    fast = hasher.row_counts(text)
    np.testing.assert_array_equal(slow.columns, fast.columns)
    np.testing.assert_array_equal(slow.values, fast.values)
    _, batch_cols, batch_counts = hasher.raw_counts([text])  # the batch path agrees too
    np.testing.assert_array_equal(fast.columns, batch_cols)
    np.testing.assert_array_equal(fast.values, batch_counts)


def test_tfidf_rows_are_identical_and_lsa_rows_agree(
    both_paths: Callable[[Callable[[], object]], tuple[object, object]],
) -> None:
    corpus = [f"{t} {i}" for i, t in enumerate(TEXTS * 20)]
    for params in ({}, {"sublinear_tf": False, "word_weight": 0.8}, {"word_weight": 1.0}):
        enc = TfidfEncoder(**params).fit(corpus)  # type: ignore[arg-type]
        slow, fast = both_paths(lambda enc=enc: [enc.encode_row(t) for t in TEXTS])
        assert isinstance(slow, list) and isinstance(fast, list)
        for a, b in zip(slow, fast, strict=True):
            np.testing.assert_array_equal(a.columns, b.columns)
            np.testing.assert_array_equal(a.values, b.values)  # bit for bit
    rows = [enc.encode_row(t) for t in TEXTS]
    lsa = LsaProjection.fit(enc.encode(corpus), n_components=16)
    slow, fast = both_paths(lambda: [lsa.transform_row(r.columns, r.values) for r in rows])
    assert isinstance(slow, list) and isinstance(fast, list)
    for a, b in zip(slow, fast, strict=True):
        assert b.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_kernels_stay_off_until_warmed_or_when_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert kernels.kernels() is None  # off until warmed
    monkeypatch.setenv("LLMDISPATCH_KERNELS", "numpy")
    assert kernels.warm() is False and kernels.kernels() is None
    monkeypatch.setenv("LLMDISPATCH_KERNELS", "auto")
    assert kernels.warm() is True and kernels.kernels() is not None


def test_router_decides_the_same_with_kernels(
    shared_data: Callable[[str], Path],
    both_paths: Callable[[Callable[[], object]], tuple[object, object]],
) -> None:
    from llmdispatch.data import load_table
    from llmdispatch.policies.router import Router
    from llmdispatch.query import Query

    table = load_table(shared_data("routerbench-subset"))
    train, test = table.split("train"), table.split("test")
    router = Router(estimator="knn").fit(train.take(np.arange(800)))
    queries = [Query.from_text(t) for t in test.full_prompts()[:150]]
    slow, fast = both_paths(lambda: np.vstack([router.quality([q]) for q in queries]))
    assert isinstance(slow, np.ndarray) and isinstance(fast, np.ndarray)
    np.testing.assert_allclose(slow, fast, atol=1e-5)
    choices = [router.explain(q).choice for q in queries]
    kernels.deactivate()
    assert [router.explain(q).choice for q in queries] == choices


@pytest.mark.parametrize("k", [1, 5, 50, 400])
def test_compiled_neighbour_average_picks_the_same_neighbours_on_ties(k: int) -> None:
    """Equal similarities go by training row on both paths, so the estimate is the same even
    when the k-th similarity is shared by many rows (duplicated training prompts)."""
    from llmdispatch.estimators.knn import _top_k_one, _weights

    rng = np.random.default_rng(k)
    n, m = 3000, 6
    ym = rng.random((n, m))
    mask = (rng.random((n, m)) > 0.1).astype(np.float64)
    prior = rng.random(m)
    assert kernels.warm()
    fast = kernels.kernels()
    assert fast is not None
    for sims in (np.round(rng.random(n), 2), np.zeros(n), np.repeat(rng.random(30), 100)):
        for temperature in (None, 0.2):
            idx, top = _top_k_one(sims, k)
            w = _weights(top, temperature)
            num, den = w @ ym[idx] + 2.0 * prior, w @ mask[idx] + 2.0
            want = np.clip(np.where(den > 0, num / den, prior), 0.0, 1.0)
            got = fast.knn_average(
                sims, k, -1.0 if temperature is None else temperature, ym, mask, 2.0, prior
            )
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
