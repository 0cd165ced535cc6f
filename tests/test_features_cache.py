"""The on-disk encoding cache: hits skip the encoder, rows and formats are exact."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest

from llmdispatch.artifacts import load_artifact, save_artifact
from llmdispatch.data import load_table
from llmdispatch.features import (
    CachedEncoder,
    Encoder,
    EncodingCache,
    TfidfEncoder,
    cache_root,
    encode_with_cache,
)
from llmdispatch.features.scalar import ScalarEncoder
from llmdispatch.types import Features


class CountingEncoder(Encoder):
    """Wraps an encoder and records every text it is asked to encode."""

    registry_kind = "encoder"
    registry_name = "counting-test"

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.seen: list[str] = []

    def fit(self, texts: Sequence[str]) -> Self:
        self.inner.fit(texts)
        return self

    def encode(self, texts: Sequence[str]) -> Features:
        self.seen.extend(texts)
        return self.inner.encode(texts)

    @property
    def key(self) -> str:
        return "counting:" + self.inner.key

    def get_state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        raise NotImplementedError


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    """300 distinct real prompts (the table itself has a few duplicate texts)."""
    return list(dict.fromkeys(str(p) for p in load_table("cascades9").prompts))[:300]


def _same(a: Features, b: Features) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return bool(a.dtype == b.dtype and a.shape == b.shape and (a != b).nnz == 0)


@pytest.mark.parametrize("inner", ["tfidf", "scalar"])
def test_second_call_reads_from_disk(prompts: list[str], tmp_path: Path, inner: str) -> None:
    base: Encoder = TfidfEncoder().fit(prompts) if inner == "tfidf" else ScalarEncoder()
    enc = CountingEncoder(base)
    first = encode_with_cache(enc, prompts[:100], tmp_path)
    assert len(enc.seen) == 100 and _same(first, base.encode(prompts[:100]))
    enc.seen.clear()
    second = encode_with_cache(enc, prompts[:100], tmp_path)  # new cache object: from disk
    assert enc.seen == []
    assert _same(second, first)


def test_partial_hits_encode_only_missing_texts_once(prompts: list[str], tmp_path: Path) -> None:
    base = ScalarEncoder()
    enc = CountingEncoder(base)
    cache = EncodingCache(tmp_path)
    cache.encode(enc, prompts[:50])
    enc.seen.clear()
    mixed = prompts[40:80] + prompts[60:70] + prompts[:5]  # overlaps and duplicates
    out = cache.encode(enc, mixed)
    assert enc.seen == prompts[50:80]
    np.testing.assert_array_equal(out, base.encode(mixed))
    assert len(list(cache.folder(enc.key).glob("part-*.npz"))) == 2
    assert not list(cache.folder(enc.key).glob(".*"))  # no temporary files left


def test_threads_wanting_the_same_rows_encode_them_once(prompts: list[str], tmp_path: Path) -> None:
    """Two threads (as a router fitting members side by side) ask for the same encodings at
    once: one encodes, the other reads its part; a different encoder is not held up."""
    from concurrent.futures import ThreadPoolExecutor

    enc = CountingEncoder(ScalarEncoder())
    other = CountingEncoder(TfidfEncoder().fit(prompts))
    jobs = [(enc, prompts[:100]), (enc, prompts[:100]), (enc, prompts[50:120]), (other, prompts)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda job: encode_with_cache(job[0], job[1], tmp_path), jobs))
    assert sorted(enc.seen) == sorted(prompts[:120]) and len(other.seen) == len(prompts)
    for (encoder, texts), out in zip(jobs, outs, strict=True):
        assert _same(out, encoder.inner.encode(texts))


def test_keys_separate_fitted_encoders(prompts: list[str], tmp_path: Path) -> None:
    a = CountingEncoder(TfidfEncoder().fit(prompts[:100]))
    b = CountingEncoder(TfidfEncoder().fit(prompts[:200]))
    encode_with_cache(a, prompts[:10], tmp_path)
    encode_with_cache(b, prompts[:10], tmp_path)
    assert len(b.seen) == 10
    assert _same(encode_with_cache(b, prompts[:10], tmp_path), b.inner.encode(prompts[:10]))


def test_empty_input(tmp_path: Path) -> None:
    out = encode_with_cache(ScalarEncoder(), [], tmp_path)
    assert out.shape[0] == 0


def test_cached_encoder_wraps_and_persists(prompts: list[str], tmp_path: Path) -> None:
    counting = CountingEncoder(ScalarEncoder())
    wrapped = CachedEncoder(counting, tmp_path / "c")
    wrapped.encode(prompts[:20])
    wrapped.encode(prompts[:20])
    assert len(counting.seen) == 20
    assert wrapped.key == counting.key

    tfidf = CachedEncoder(TfidfEncoder(), tmp_path / "c").fit(prompts)
    assert tfidf.sparse_output
    save_artifact(tmp_path / "art", tfidf)  # type: ignore[arg-type]
    loaded, _ = load_artifact(tmp_path / "art")
    assert isinstance(loaded, CachedEncoder) and isinstance(loaded.encoder, TfidfEncoder)
    assert _same(loaded.encode(prompts[:30]), tfidf.encoder.encode(prompts[:30]))


def test_cache_root_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMDISPATCH_CACHE", str(tmp_path / "root"))
    assert cache_root() == tmp_path / "root"
    assert EncodingCache().cache_dir == tmp_path / "root" / "encodings"
    monkeypatch.delenv("LLMDISPATCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "llmdispatch"


def test_parts_are_plain_npz_without_pickle(prompts: list[str], tmp_path: Path) -> None:
    enc = TfidfEncoder().fit(prompts[:50])
    cache = EncodingCache(tmp_path)
    cache.encode(enc, prompts[:5])
    (part,) = cache.folder(enc.key).glob("part-*.npz")
    with np.load(part, allow_pickle=False) as npz:
        assert set(npz.files) == {"hashes", "data", "indices", "indptr", "shape"}
        assert npz["hashes"].shape == (5, 16)
    assert (cache.folder(enc.key) / "KEY").read_text() == enc.key
