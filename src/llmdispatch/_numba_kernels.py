"""The numba kernels behind :mod:`llmdispatch.kernels` (imported only from there,
and only when numba is installed). Module-level constants are frozen into the compiled code;
``cache=True`` keeps the machine code on disk between processes."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from llmdispatch.features import hashing

# The hash's definition lives in hashing.py; numba freezes these module globals.
_P, _P_INV = np.uint64(hashing._P), np.uint64(hashing._P_INV)
_BIGRAM_MULT, _MIX_1, _MIX_2 = hashing._BIGRAM_MULT, hashing._MIX_1, hashing._MIX_2
_WORD, _SPACE = hashing._WORD, hashing._SPACE
_ONE = np.uint64(1)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)

jit = numba.njit(cache=True, nogil=True)


@jit
def _mix(h: Any) -> Any:
    """splitmix64 finaliser, as :func:`llmdispatch.features.hashing._mix`."""
    h ^= h >> _S30
    h *= _MIX_1
    h ^= h >> _S27
    h *= _MIX_2
    return h ^ (h >> _S31)


@jit
def normalise_ascii(raw: Any, classes: Any) -> tuple[Any, Any]:
    """Bytes of lower-cased ASCII text and their classes, every whitespace run one space
    (``NgramHasher._normalise_one`` in one pass)."""
    n = len(raw)
    cp = np.empty(n, dtype=np.uint8)
    cls = np.empty(n, dtype=np.uint8)
    out = 0
    after_space = False
    for i in range(n):
        c = classes[raw[i]]
        if c == _SPACE:
            if after_space:
                continue
            cp[out] = 32
            after_space = True
        else:
            cp[out] = raw[i]
            after_space = False
        cls[out] = c
        out += 1
    return cp[:out], cls[:out]


@jit
def row_keys(cp: Any, cls: Any, char_lo: int, char_hi: int, word_ngrams: int, low_mask: Any) -> Any:
    """The column of every n-gram of one normalised text, unsorted."""
    n = len(cp)
    n_char = 0
    if char_hi > 0:
        for size in range(char_lo, char_hi + 1):
            n_char += max(0, n - size + 1)
    starts = np.empty(n + 1, dtype=np.int64)
    ends = np.empty(n + 1, dtype=np.int64)
    n_words = 0
    inside = False
    for i in range(n):
        w = cls[i] == _WORD
        if w and not inside:
            starts[n_words] = i
            inside = True
        elif inside and not w:
            ends[n_words] = i
            n_words += 1
            inside = False
    if inside:
        ends[n_words] = n
        n_words += 1
    n_word = 0
    for size in range(1, word_ngrams + 1):
        n_word += max(0, n_words - size + 1)
    # Prefix sums S[j] = Σ_{i<j} (c_i + 1)·P^i and P^(−j): the span [a, b) hashes to
    # (S[b] − S[a])·P^(−a), as in the numpy path (all modulo 2⁶⁴).
    prefix = np.empty(n + 1, dtype=np.uint64)
    inv = np.empty(n + 1, dtype=np.uint64)
    prefix[0] = np.uint64(0)
    inv[0] = _ONE
    pw = _ONE
    for i in range(n):
        prefix[i + 1] = prefix[i] + (np.uint64(cp[i]) + _ONE) * pw
        pw *= _P
        inv[i + 1] = inv[i] * _P_INV
    keys = np.empty(n_char + n_word, dtype=np.int32)
    high = low_mask + _ONE
    at = 0
    if char_hi > 0:
        for size in range(char_lo, char_hi + 1):
            tag = np.uint64(0x100 + size)
            for a in range(n - size + 1):
                h = (prefix[a + size] - prefix[a]) * inv[a]
                keys[at] = np.int32((_mix(h ^ tag) & low_mask) | high)
                at += 1
    base = np.empty(n_words, dtype=np.uint64)
    for w in range(n_words):
        base[w] = (prefix[ends[w]] - prefix[starts[w]]) * inv[starts[w]]
    gram = base.copy()
    for size in range(1, word_ngrams + 1):
        m = n_words - size + 1
        if m <= 0:
            break
        if size > 1:
            for i in range(m):
                gram[i] = gram[i] * _BIGRAM_MULT + base[i + size - 1]
        tag = np.uint64(size)
        for i in range(m):
            keys[at] = np.int32(_mix(gram[i] ^ tag) & low_mask)
            at += 1
    return keys


@jit
def count_sorted(keys: Any) -> tuple[Any, Any]:
    """Distinct values of sorted ``keys`` and how often each occurs."""
    cols = np.empty(len(keys), dtype=np.int32)
    counts = np.empty(len(keys), dtype=np.float32)
    distinct = 0
    for i in range(len(keys)):
        if i == 0 or keys[i] != keys[i - 1]:
            cols[distinct] = keys[i]
            counts[distinct] = 1.0
            distinct += 1
        else:
            counts[distinct - 1] += np.float32(1.0)
    return cols[:distinct], counts[:distinct]


@jit
def tfidf_weigh(cols: Any, values: Any, idf: Any, n_features: int, word_weight: float) -> None:
    """``values *= idf``, then each block (word, character) scaled to its share of a unit
    norm, in place: the float operations of ``TfidfEncoder.encode_row`` in its order."""
    half = n_features >> 1
    n = len(values)
    sq = np.empty(n, dtype=np.float32)
    word_sq = 0.0
    char_sq = 0.0
    for i in range(n):
        values[i] *= idf[cols[i]]
        sq[i] = values[i] * values[i]
        if cols[i] >= half:
            char_sq += np.float64(sq[i])
        else:
            word_sq += np.float64(sq[i])
    word_norm, char_norm = np.sqrt(word_sq), np.sqrt(char_sq)
    word_scale = np.sqrt(word_weight) / word_norm if word_norm > 0 else 0.0
    char_scale = np.sqrt(1.0 - word_weight) / char_norm if char_norm > 0 else 0.0
    ww, cc = word_scale * word_scale, char_scale * char_scale
    total = 0.0
    for i in range(n):
        total += (cc if cols[i] >= half else ww) * np.float64(sq[i])
    total = np.sqrt(total)
    if total > 0:
        word_scale, char_scale = word_scale / total, char_scale / total
    wf, cf = np.float32(word_scale), np.float32(char_scale)
    for i in range(n):
        values[i] *= cf if cols[i] >= half else wf


@jit
def project(cols: Any, values: Any, position: Any, projection: Any) -> Any:
    """Σ values_i · projection[position[cols_i]] over kept columns, scaled to unit norm."""
    d = projection.shape[1]
    z = np.zeros(d, dtype=np.float32)
    for i in range(len(cols)):
        row = position[cols[i]]
        if row >= 0:
            v = np.float32(values[i])
            for j in range(d):
                z[j] += v * projection[row, j]
    square = np.float32(0.0)
    for j in range(d):
        square += z[j] * z[j]
    norm = np.float32(np.sqrt(square))
    if norm > 0:
        for j in range(d):
            z[j] /= norm
    return z


@jit
def _worse(heap_v: Any, heap_i: Any, a: int, b: int) -> bool:
    """Entry ``a`` ranks below entry ``b``: a lower similarity, or an equal one on a later
    training row (the order of ``knn._top_k``)."""
    return bool(heap_v[a] < heap_v[b] or (heap_v[a] == heap_v[b] and heap_i[a] > heap_i[b]))


@jit
def _sift_down(heap_v: Any, heap_i: Any, k: int, at: int) -> None:
    """Restore the min-heap order (:func:`_worse` first) below position ``at``."""
    while True:
        left = 2 * at + 1
        if left >= k:
            return
        small = left
        if left + 1 < k and _worse(heap_v, heap_i, left + 1, left):
            small = left + 1
        if not _worse(heap_v, heap_i, small, at):
            return
        heap_v[at], heap_v[small] = heap_v[small], heap_v[at]
        heap_i[at], heap_i[small] = heap_i[small], heap_i[at]
        at = small


@jit
def knn_average(
    sims: Any,
    k: int,
    temperature: float,
    ym: Any,
    mask: Any,
    prior_strength: float,
    prior: Any,
) -> Any:
    """The kNN estimate of one query from its similarities to the training rows: the ``k``
    most similar rows (a min-heap, one pass), weighted by ``max(s, 0)`` (``temperature`` ≤ 0)
    or ``exp((min(s, 1) − 1)/temperature)``, averaging the known scores with the prior as
    ``n0`` pseudo-observations, clipped to [0, 1] (``KnnEstimator._predict_one``)."""
    n = len(sims)
    k = min(k, n)
    heap_v = np.empty(k, dtype=np.float64)
    heap_i = np.empty(k, dtype=np.int64)
    for i in range(k):
        heap_v[i] = sims[i]
        heap_i[i] = i
    for at in range(k // 2 - 1, -1, -1):
        _sift_down(heap_v, heap_i, k, at)
    for i in range(k, n):
        s = sims[i]
        if s > heap_v[0]:
            heap_v[0] = s
            heap_i[0] = i
            _sift_down(heap_v, heap_i, k, 0)
    m = ym.shape[1]
    num = np.zeros(m, dtype=np.float64)
    den = np.zeros(m, dtype=np.float64)
    for j in range(k):
        s = heap_v[j]
        w = np.exp((min(s, 1.0) - 1.0) / temperature) if temperature > 0 else max(s, 0.0)
        row = heap_i[j]
        for c in range(m):
            num[c] += w * ym[row, c]
            den[c] += w * mask[row, c]
    out = np.empty(m, dtype=np.float64)
    for c in range(m):
        d = den[c] + prior_strength
        q = (num[c] + prior_strength * prior[c]) / d if d > 0 else prior[c]
        out[c] = min(max(q, 0.0), 1.0)
    return out
