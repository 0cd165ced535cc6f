"""``scalar`` request features and the ``concat`` combinator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from llmdispatch.artifacts import load_artifact, save_artifact
from llmdispatch.data import load_table
from llmdispatch.features import (
    FEATURE_NAMES,
    ConcatEncoder,
    ScalarEncoder,
    TfidfEncoder,
    TfidfSvdEncoder,
    dominant_script,
)
from llmdispatch.query import Query

COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _by_source(name: str, source: str, n: int = 150) -> list[str]:
    table = load_table(name)
    picked = [
        str(p) for p, d in zip(table.prompts, table.datasets, strict=True) if d.startswith(source)
    ]
    return picked[:n]


def test_markers_fire_on_the_right_benchmarks() -> None:
    enc = ScalarEncoder()
    mbpp = enc.encode(_by_source("routerbench-subset", "mbpp"))
    gsm8k = enc.encode(_by_source("cascades9", "gsm8k"))
    mmlu = enc.encode(_by_source("cascades9", "mmlu"))
    trivia = enc.encode(_by_source("cascades9", "triviaqa"))
    assert (mbpp[:, COL["code"]] > 0).mean() > 0.9
    assert (gsm8k[:, COL["math"]] > 0).mean() > 0.8
    assert mmlu[:, COL["multiple_choice"]].mean() > 0.9
    for other in (gsm8k, trivia):
        assert (other[:, COL["code"]] > 0).mean() < 0.05
    assert trivia[:, COL["multiple_choice"]].mean() < 0.05
    assert (trivia[:, COL["math"]] > 0).mean() < 0.1


def test_values_are_in_unit_interval_and_scripts_sum_to_one() -> None:
    texts = [
        "Hello world",
        "Привет мир",
        "日本語の文",
        "مرحبا",
        "नमस्ते दुनिया",
        "Γειά σου",
        "1234",
        "",
    ]
    X = ScalarEncoder().encode(texts)
    assert X.shape == (len(texts), len(FEATURE_NAMES)) and X.dtype == np.float32
    assert X.min() >= 0.0 and X.max() <= 1.0
    scripts = X[:, COL["script_latin"] : COL["script_other"] + 1]
    np.testing.assert_allclose(scripts[:6].sum(axis=1), 1.0, atol=1e-6)
    assert scripts[6:].sum() == 0  # no letters
    assert [dominant_script(t) for t in texts] == [
        "latin", "cyrillic", "cjk", "arabic", "devanagari", "other", "none", "none",
    ]  # fmt: skip


def test_length_grows_with_tokens() -> None:
    X = ScalarEncoder().encode(["short", "long " * 2000])
    assert X[1, COL["log_tokens"]] > X[0, COL["log_tokens"]] > 0


def test_queries_carry_turns_and_images() -> None:
    image_part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = (
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"}, image_part]},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": [image_part, image_part, {"type": "text", "text": "and?"}]},
    )
    q = Query(text="what is this? and?", messages=messages, modalities=frozenset({"text", "image"}))
    plain = Query.from_text("what is this? and?")
    enc = ScalarEncoder()
    rows = enc.encode_queries([q, plain])
    assert rows[0, COL["log_images"]] > 0 and rows[1, COL["log_images"]] == 0
    assert rows[0, COL["log_turns"]] > 0 and rows[1, COL["log_turns"]] == 0
    assert np.array_equal(rows[1], enc.encode([plain.text])[0])
    known = Query(text="x", tokens_in=5000)
    assert enc.encode_queries([known])[0, COL["log_tokens"]] > enc.encode(["x"])[0, 0]


def test_scalar_state_round_trip() -> None:
    enc = ScalarEncoder()
    again = ScalarEncoder.from_state(enc.get_state())
    assert again.key == enc.key
    with pytest.raises(ValueError, match="version"):
        ScalarEncoder.from_state({"version": 99})


def test_concat_keeps_sparse_output_sparse(tmp_path: Path) -> None:
    texts = _by_source("cascades9", "mmlu", 80) + _by_source("cascades9", "gsm8k", 80)
    enc = ConcatEncoder(["tfidf", "scalar"]).fit(texts)
    X = enc.encode(texts[:10])
    assert isinstance(X, sp.csr_matrix) and X.shape == (10, (1 << 20) + len(FEATURE_NAMES))
    np.testing.assert_allclose(np.sqrt(X.multiply(X).sum(axis=1)).A.ravel(), 1.0, atol=1e-5)
    assert enc.sparse_output
    # The scalar block is the tail; with the default weight it is a minor part of each row.
    tail = X[:, 1 << 20 :].toarray()
    assert np.all(np.linalg.norm(tail, axis=1) < 0.8) and tail.any()
    save_artifact(tmp_path / "concat", enc)  # type: ignore[arg-type]
    loaded, _ = load_artifact(tmp_path / "concat")
    assert loaded.key == enc.key
    assert (loaded.encode(texts[:10]) != X).nnz == 0


def test_concat_dense_parts_and_queries() -> None:
    texts = _by_source("cascades9", "triviaqa", 60)
    svd = TfidfSvdEncoder(n_components=16)
    enc = ConcatEncoder([svd, ScalarEncoder()], weights=[1.0, 0.5]).fit(texts)
    X = enc.encode(texts[:5])
    assert isinstance(X, np.ndarray) and X.shape == (5, 16 + len(FEATURE_NAMES))
    assert not enc.sparse_output
    Q = enc.encode_queries([Query.from_text(t) for t in texts[:5]])
    np.testing.assert_allclose(Q, X, atol=1e-6)
    raw = ConcatEncoder([TfidfEncoder(), ScalarEncoder()], normalize=False).fit(texts)
    R = raw.encode(texts[:3])
    assert not np.allclose(np.sqrt(R.multiply(R).sum(axis=1)).A.ravel(), 1.0)


def test_concat_errors() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        ConcatEncoder().encode(["x"])
    with pytest.raises(ValueError, match="weights"):
        ConcatEncoder(["tfidf", "scalar"], weights=[1.0]).fit(["a b c"])
    with pytest.raises(KeyError, match="unknown encoder"):
        ConcatEncoder(["nope"]).fit(["a b c"])
