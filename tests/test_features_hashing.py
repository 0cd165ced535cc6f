"""The vectorised n-gram hasher: exact counts, determinism, chunking, validation."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

import llmdispatch.features.hashing as hashing
from llmdispatch.features.hashing import NgramHasher


def _reference_counts(text: str, word_ngrams: int, lo: int, hi: int) -> tuple[int, int]:
    """(word n-gram count, char n-gram count) by the documented rules, in plain Python."""
    norm = " ".join(text.lower().split()) if text.strip() else (" " if text else "")
    if text and text[0].isspace() and text.strip():
        norm = " " + norm
    if text and text[-1].isspace() and text.strip():
        norm = norm + " "
    words: list[str] = []
    cur = ""
    for ch in norm:
        if ch.isalnum() or ch == "_" or ord(ch) > 0xFFFF:  # astral: word chars
            cur += ch
        elif cur:
            words.append(cur)
            cur = ""
    if cur:
        words.append(cur)
    n_words = sum(max(0, len(words) - n + 1) for n in range(1, word_ngrams + 1))
    n_chars = sum(max(0, len(norm) - n + 1) for n in range(lo, hi + 1)) if hi else 0
    return n_words, n_chars


@pytest.mark.parametrize(
    "text",
    [
        "Hello hello world",
        "  spaced   out\n\ttext  ",
        "def f(x): return x**2  # code",
        "Привет мир, это тест",
        "日本語のテキスト",
        "a",
        "",
        "emoji 🙂 and 𝔘nicode",
    ],
)
def test_counts_match_the_documented_rules(text: str) -> None:
    hasher = NgramHasher(n_features=1 << 22, word_ngrams=2, char_ngrams=(3, 5))
    X = hasher.counts([text])
    half = hasher.n_features >> 1
    words = X[:, :half].sum()
    chars = X[:, half:].sum()
    assert (words, chars) == _reference_counts(text, 2, 3, 5)


def test_repeated_ngrams_are_counted_and_blocks_separate() -> None:
    hasher = NgramHasher(n_features=1 << 16, word_ngrams=1, char_ngrams=(0, 0))
    X = hasher.counts(["spam spam spam eggs"])
    assert sorted(X.data.tolist()) == [1.0, 3.0]
    assert X.indices.max() < hasher.n_features >> 1
    chars_only = NgramHasher(n_features=1 << 16, word_ngrams=0, char_ngrams=(2, 2))
    Y = chars_only.counts(["abab"])
    assert Y.indices.min() >= chars_only.n_features >> 1
    assert Counter(Y.data.tolist()) == Counter({2.0: 1, 1.0: 1})  # "ab" x2, "ba" x1


def test_normalisation_case_and_whitespace() -> None:
    hasher = NgramHasher(n_features=1 << 18)
    a, b = hasher.counts(["The  Cat\nsat"]), hasher.counts(["the cat sat"])
    assert (a != b).nnz == 0


def test_batch_equals_one_by_one_across_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [f"prompt number {i} " * (i % 7 + 1) for i in range(60)] + ["", "x"]
    hasher = NgramHasher(n_features=1 << 16)
    single = [hasher.counts([t]) for t in texts]
    monkeypatch.setattr(hashing, "_CHUNK_CHARS", 200)  # force many chunks
    assert len(list(hasher.chunks(texts))) > 5
    batch = hasher.counts(texts)
    assert batch.shape == (len(texts), hasher.n_features)
    assert batch.has_canonical_format
    for i, row in enumerate(single):
        assert (batch[i] != row).nnz == 0


def test_no_ngram_crosses_documents() -> None:
    hasher = NgramHasher(n_features=1 << 20)
    joined = hasher.counts(["ab cd", "ef gh"])
    apart = [hasher.counts(["ab cd"]), hasher.counts(["ef gh"])]
    assert joined[0].sum() == apart[0].sum() and joined[1].sum() == apart[1].sum()


def test_hashes_do_not_depend_on_pythonhashseed() -> None:
    code = (
        "from llmdispatch.features.hashing import NgramHasher;"
        "X = NgramHasher().counts(['route this prompt, please']);"
        "print(X.indices.tolist())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1
    local = NgramHasher().counts(["route this prompt, please"]).indices.tolist()
    assert outs.pop().strip() == str(local)


def test_empty_input_and_lone_surrogates() -> None:
    hasher = NgramHasher(n_features=1 << 16)
    assert hasher.counts([]).shape == (0, 1 << 16)
    X = hasher.counts(["bad \ud800 surrogate"])
    assert X.nnz > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_features": 1000},
        {"n_features": 8},
        {"word_ngrams": -1},
        {"char_ngrams": (4, 3)},
        {"word_ngrams": 0, "char_ngrams": (0, 0)},
    ],
)
def test_bad_parameters_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        NgramHasher(**kwargs).validate()  # type: ignore[arg-type]


def test_large_feature_space_uses_64_bit_keys() -> None:
    hasher = NgramHasher(n_features=1 << 26)
    X = hasher.counts(["wide hash space"] * 100)
    assert X.shape[1] == 1 << 26
    assert np.all(X.indices < 1 << 26)
    assert (X[0] != X[99]).nnz == 0
