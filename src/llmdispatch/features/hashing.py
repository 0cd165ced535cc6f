"""Vectorised feature hashing of word and character n-grams (the core of ``tfidf``).

scikit-learn's ``HashingVectorizer`` builds every n-gram as a Python string; on this project's
prompts (median 300-1,500 characters) that caps it near 2,000 prompts/s with character
n-grams. Here a batch of texts becomes one array of code points and every n-gram's hash
comes from prefix sums of a polynomial hash, so the work is a few dozen numpy operations per
batch whatever its size:

    S[j] = Σ_{i<j} (c_i + 1)·P^i  (mod 2⁶⁴),   h(a, b) = (S[b] − S[a])·P^(−a)  (mod 2⁶⁴)

``P`` is odd, so ``P^(−1)`` exists modulo 2⁶⁴ and ``h`` depends only on the characters in
``[a, b)``, not on where they sit. The hash is mixed with the splitmix64 finaliser and a salt
per n-gram kind, and mapped to a column: word n-grams to the lower half of
``[0, n_features)``, character n-grams to the upper half, so the two blocks never collide and
can be weighted separately. Hashes do not depend on ``PYTHONHASHSEED``: the same text gives
the same columns in every process.

Text is lower-cased, runs of whitespace become one space, a word is a maximal run of
alphanumeric characters or ``_`` (as ``str.isalnum``; code points beyond the BMP count as
word characters), and character n-grams run over the whole normalised text, spaces and
punctuation included (useful for code and maths).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from llmdispatch.kernels import kernels

U64 = npt.NDArray[np.uint64]
#: CSR arrays ``(indptr, indices, data)`` of one block of rows.
RawCounts = tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float32]]


class SparseRow(NamedTuple):
    """One feature row as sorted distinct ``columns``, their ``values`` and the row width."""

    columns: npt.NDArray[np.int32]
    values: npt.NDArray[np.float32]
    n_features: int


_P = 0x100000001B3
_P_INV = pow(_P, -1, 2**64)
_BIGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)
#: splitmix64's multipliers (also used by the compiled kernels).
_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_WORD, _SPACE = 1, 2
#: Characters per chunk: small chunks stay in the CPU cache (measured fastest at 64k).
_CHUNK_CHARS = 1 << 16


@functools.cache
def _char_classes() -> npt.NDArray[np.uint8]:
    """Class of every BMP code point: 1 word character, 2 whitespace, 0 other."""
    table = np.zeros(0x10000, dtype=np.uint8)
    for i in range(0x10000):
        ch = chr(i)
        if ch.isalnum() or ch == "_":
            table[i] = _WORD
        elif ch.isspace():
            table[i] = _SPACE
    table[0] = 0  # the document separator
    return table


class _Powers:
    """Growing tables of P^j and P^(−j) modulo 2⁶⁴ (integer array overflow wraps).

    Both tables live in one tuple, replaced in one assignment, so a thread encoding beside
    another that grows them never sees a longer table paired with a shorter one.
    """

    def __init__(self) -> None:
        one = np.ones(1, dtype=np.uint64)
        self.tables: tuple[U64, U64] = (one, one)

    def get(self, n: int) -> tuple[U64, U64]:
        tables = self.tables
        if len(tables[0]) < n:
            size = max(n, 2 * len(tables[0]), 4096)
            fwd = np.full(size, _P, dtype=np.uint64)
            inv = np.full(size, _P_INV, dtype=np.uint64)
            fwd[0] = inv[0] = 1
            tables = self.tables = (np.cumprod(fwd), np.cumprod(inv))
        return tables


_POWERS = _Powers()


def _mix_inplace(h: U64) -> None:
    """splitmix64's finaliser, in place (one shifted copy as scratch): spreads every input
    bit over the output."""
    t = h >> np.uint64(30)
    h ^= t
    h *= _MIX_1
    np.right_shift(h, np.uint64(27), out=t)
    h ^= t
    h *= _MIX_2
    np.right_shift(h, np.uint64(31), out=t)
    h ^= t


@dataclass(frozen=True)
class NgramHasher:
    """Hashes texts to CSR rows of n-gram counts (see the module docstring).

    ``word_ngrams`` is the largest word n-gram (0: none); ``char_ngrams`` the smallest and
    largest character n-gram (``(0, 0)``: none); ``n_features`` a power of two.
    """

    n_features: int = 1 << 20
    word_ngrams: int = 2
    char_ngrams: tuple[int, int] = (3, 5)

    def validate(self) -> None:
        """Raise ValueError for inconsistent parameters."""
        nf = self.n_features
        if nf < 16 or nf > (1 << 30) or nf & (nf - 1):
            raise ValueError(f"n_features must be a power of two in [16, 2**30], got {nf}")
        if self.word_ngrams < 0:
            raise ValueError(f"word_ngrams must be >= 0, got {self.word_ngrams}")
        lo, hi = self.char_ngrams
        if (lo, hi) != (0, 0) and not 1 <= lo <= hi:
            raise ValueError(f"char_ngrams must be (min, max) with 1 <= min <= max, got {lo, hi}")
        if self.word_ngrams == 0 and hi == 0:
            raise ValueError("no features: enable word_ngrams or char_ngrams")

    def counts(self, texts: Sequence[str]) -> sp.csr_matrix:
        """``(len(texts), n_features)`` float32 n-gram counts, canonical CSR."""
        return to_csr(self.raw_counts(texts), self.n_features)

    def raw_counts(self, texts: Sequence[str]) -> RawCounts:
        """Counts as CSR arrays ``(indptr, indices, counts)``, without building a matrix."""
        return stack_raw([self.chunk_counts(chunk) for chunk in self.chunks(texts)])

    def chunks(self, texts: Sequence[str]) -> Iterator[Sequence[str]]:
        """Consecutive slices of ``texts`` small enough to stay in cache, keys in 32 bits."""
        bits = self.n_features.bit_length() - 1
        max_rows = max(1, min(4096, (1 << 32) >> bits))
        start, chars = 0, 0
        for i, text in enumerate(texts):
            chars += len(text) + 1
            if i + 1 - start >= max_rows or chars >= _CHUNK_CHARS:
                yield texts[start : i + 1]
                start, chars = i + 1, 0
        if start < len(texts) or not texts:
            yield texts[start:]

    def chunk_counts(self, texts: Sequence[str]) -> RawCounts:
        """Counts of one chunk from :meth:`chunks` (any list works; chunks are faster)."""
        cp, cls = self._normalise(texts)
        length = len(cp)
        fwd, inv = _POWERS.get(length + 1)
        prefix = np.zeros(length + 1, dtype=np.uint64)
        np.cumsum((cp.astype(np.uint64) + np.uint64(1)) * fwd[:length], out=prefix[1:])
        sep = cp == 0
        doc = np.cumsum(sep)
        rows: list[npt.NDArray[np.int64]] = []
        hashes: list[U64] = []
        low_mask = np.uint64((self.n_features >> 1) - 1)
        lo, hi = self.char_ngrams
        starts_doc = ~sep
        for size in range(lo, hi + 1) if hi else ():
            # Every start position at once, by slices (no gathers); then the n-grams that
            # stay inside one document are kept, in position order.
            m = max(0, length - size + 1)
            inside = doc[:m] == doc[size - 1 : size - 1 + m]
            inside &= starts_doc[:m]
            h = prefix[size : size + m] - prefix[:m]
            h *= inv[:m]
            h ^= np.uint64(0x100 + size)
            hashes.append(h[inside])
            rows.append(doc[:m][inside])
        n_char = len(rows)
        if self.word_ngrams:
            word = (cls == _WORD).view(np.int8)
            edge = np.empty(length + 1, dtype=np.int8)
            edge[0], edge[length] = word[0] if length else 0, -word[-1] if length else 0
            np.subtract(word[1:], word[:-1], out=edge[1:length])
            starts, ends = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
            base = (prefix[ends] - prefix[starts]) * inv[starts]
            wdoc = doc[starts]
            gram = base
            for size in range(1, self.word_ngrams + 1):
                if size > 1:
                    gram = gram[:-1] * _BIGRAM_MULT + base[size - 1 :]
                ok = wdoc[: len(gram)] == wdoc[size - 1 :]
                hashes.append(gram[ok] ^ np.uint64(size))
                rows.append(wdoc[: len(gram)][ok])
        cols: list[U64] = []
        for block, flag in ((hashes[:n_char], low_mask + 1), (hashes[n_char:], 0)):
            if block:
                h = np.concatenate(block)  # a fresh array: mixed and masked in place
                _mix_inplace(h)
                h &= low_mask
                h |= np.uint64(flag)
                cols.append(h)
        return _assemble(len(texts), self.n_features, rows, cols)

    def row_counts(self, text: str) -> SparseRow:
        """One text's counts (sorted columns, counts), equal to :meth:`chunk_counts` of
        ``[text]``: with a single document every n-gram is a slice, no index arrays or row
        keys (a live request's path, about twice as fast)."""
        cp, cls = self._normalise_one(text)
        fast = kernels()
        if fast is not None:
            lo, hi = self.char_ngrams
            low_mask = np.uint64((self.n_features >> 1) - 1)
            keys = fast.row_keys(cp, cls, lo, hi, self.word_ngrams, low_mask)
            keys.sort()  # numpy's vectorised sort beats a compiled loop several times over
            cols, counts = fast.count_sorted(keys)
            return SparseRow(cols, counts, self.n_features)
        length = len(cp)
        fwd, inv = _POWERS.get(length + 1)
        prefix = np.zeros(length + 1, dtype=np.uint64)
        terms = np.add(cp, np.uint64(1), dtype=np.uint64)
        np.multiply(terms, fwd[:length], out=terms)
        np.cumsum(terms, out=prefix[1:])
        lo, hi = self.char_ngrams
        sizes = range(lo, hi + 1) if hi else range(0)
        n_char = sum(max(0, length - size + 1) for size in sizes)
        if self.word_ngrams and length:
            flags = np.zeros(length + 2, dtype=np.bool_)
            np.equal(cls, _WORD, out=flags[1:-1])
            changes = np.flatnonzero(flags[1:] != flags[:-1])
            starts, ends = changes[0::2], changes[1::2]
            base = prefix[ends] - prefix[starts]
            base *= inv[starts]
        else:
            base = np.zeros(0, dtype=np.uint64)
        n_words = len(base)
        n_word = sum(max(0, n_words - size + 1) for size in range(1, self.word_ngrams + 1))
        h = np.empty(n_char + n_word, dtype=np.uint64)
        at = 0
        for size in sizes:
            m = max(0, length - size + 1)
            part = h[at : at + m]
            np.subtract(prefix[size : size + m], prefix[:m], out=part)
            part *= inv[:m]
            part ^= np.uint64(0x100 + size)
            at += m
        gram = base
        for size in range(1, self.word_ngrams + 1):
            if size > 1:
                gram = gram[:-1] * _BIGRAM_MULT + base[size - 1 :]
            np.bitwise_xor(gram, np.uint64(size), out=h[at : at + len(gram)])
            at += len(gram)
        _mix_inplace(h)
        low_mask = np.uint64((self.n_features >> 1) - 1)
        h &= low_mask
        h[:n_char] |= low_mask + np.uint64(1)
        keys = h.astype(np.int32)  # columns < 2**30
        keys.sort()
        if not len(keys):
            return SparseRow(keys, np.zeros(0, dtype=np.float32), self.n_features)
        new = np.empty(len(keys), dtype=np.bool_)
        new[0] = True
        np.not_equal(keys[1:], keys[:-1], out=new[1:])
        first = np.flatnonzero(new)
        counts = np.empty(len(first), dtype=np.float32)
        np.subtract(first[1:], first[:-1], out=counts[:-1], casting="unsafe")
        counts[-1] = len(keys) - first[-1]
        return SparseRow(keys[first], counts, self.n_features)

    @staticmethod
    def _normalise_one(text: str) -> tuple[npt.NDArray[np.unsignedinteger], npt.NDArray[np.uint8]]:
        """:meth:`_normalise` of one text; ASCII text (most prompts) stays one byte a character."""
        lowered = (text.replace("\x00", " ") if "\x00" in text else text).lower()
        if not lowered.isascii():
            return _code_points(lowered)
        cp: npt.NDArray[np.unsignedinteger] = np.frombuffer(lowered.encode("ascii"), np.uint8)
        fast = kernels()
        if fast is not None:
            out: tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]] = fast.normalise_ascii(
                cp, _char_classes()
            )
            return out
        cls = _char_classes()[cp]
        space = cls == _SPACE
        if len(cp) > 1:
            repeat = space[1:] & space[:-1]
            if repeat.any():
                keep = np.empty(len(cp), dtype=np.bool_)
                keep[0] = True
                np.logical_not(repeat, out=keep[1:])
                return np.where(space, np.uint8(32), cp)[keep], cls[keep]
        if space.any():
            cp = np.where(space, np.uint8(32), cp)
        return cp, cls

    @staticmethod
    def _normalise(texts: Sequence[str]) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
        """Code points of the lower-cased texts joined by NUL, whitespace runs → one space."""
        joined = "\x00".join(t.replace("\x00", " ") if "\x00" in t else t for t in texts).lower()
        return _code_points(joined)


def _code_points(joined: str) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
    """Code points and character classes of lower-cased text, whitespace runs → one space."""
    cp = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    cls = np.where(cp > 0xFFFF, np.uint8(_WORD), _char_classes()[np.minimum(cp, 0xFFFF)])
    space = cls == _SPACE
    if space.any():
        keep = ~(space & np.concatenate(([False], space[:-1])))
        cp = np.where(space, np.uint32(32), cp)[keep]
        cls = cls[keep]
    return cp, cls


def stack_raw(parts: list[RawCounts]) -> RawCounts:
    """Row-wise concatenation of CSR arrays."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [int(p[0][-1]) for p in parts[:-1]])
    indptr = np.concatenate(
        [np.zeros(1, np.int64)] + [p[0][1:] + o for p, o in zip(parts, offsets, strict=True)]
    )
    return indptr, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def to_csr(raw: RawCounts, n_features: int) -> sp.csr_matrix:
    """A canonical CSR matrix from :meth:`NgramHasher.raw_counts` arrays (no copies)."""
    indptr, indices, data = raw
    X = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_features), copy=False)
    X.has_sorted_indices = True
    X.has_canonical_format = True
    return X


def _assemble(
    n: int, n_features: int, rows: list[npt.NDArray[np.int64]], cols: list[U64]
) -> RawCounts:
    """Canonical CSR counts from (row, column) pairs: one sort of packed 32/64-bit keys."""
    bits = n_features.bit_length() - 1
    row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    col = np.concatenate(cols) if cols else np.zeros(0, dtype=np.uint64)
    # 32-bit keys when they fit: half the memory traffic, and numpy sorts them faster.
    dtype = np.uint32 if (n << bits) <= (1 << 32) else np.uint64
    key: npt.NDArray[np.unsignedinteger] = row.astype(dtype)
    key <<= dtype(bits)
    key |= col.astype(dtype, copy=False)
    key.sort()
    if key.size:
        new = np.empty(key.size, dtype=np.bool_)
        new[0] = True
        np.not_equal(key[1:], key[:-1], out=new[1:])
        first = np.flatnonzero(new)
        counts = np.empty(len(first), dtype=np.float32)
        np.subtract(first[1:], first[:-1], out=counts[:-1], casting="unsafe")
        counts[-1] = key.size - first[-1]
        unique = key[first]
    else:
        counts = np.zeros(0, dtype=np.float32)
        unique = key
    urow = (unique >> bits).astype(np.int64)
    indices = (unique & ((1 << bits) - 1)).astype(np.int32)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(urow, minlength=n), out=indptr[1:])
    return indptr, indices, counts
