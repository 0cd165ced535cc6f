"""On-disk cache of encodings keyed by (encoder key, text hash), so ``bench`` embeds once.

Layout: ``<cache_dir>/<encoder key, sanitised>-<digest>/part-*.npz``. Each part holds the
BLAKE2b-128 digests of its texts and their rows (a dense array, or CSR arrays for sparse
encoders). Parts are written to a temporary file and renamed into place, so a reader never
sees a half-written part and concurrent writers never clobber each other (threads of one
process asking for the same encoder's rows wait for each other, so each text is encoded once);
``.npz`` is read
with ``allow_pickle=False``. The default folder is ``<cache root>/encodings`` where the
cache root is ``$LLMDISPATCH_CACHE``, else ``$XDG_CACHE_HOME/llmdispatch``, else
``~/.cache/llmdispatch``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self, cast

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from llmdispatch.artifacts import Persistable, component_state, restore
from llmdispatch.features._util import check_texts, digest
from llmdispatch.features.base import Encoder
from llmdispatch.registry import register
from llmdispatch.types import Features

CACHE_ENV = "LLMDISPATCH_CACHE"
_DIGEST_BYTES = 16
#: One lock per cache folder: threads of one process that want the same encodings (a
#: router fitting members side by side) encode the missing texts once, the others read them.
_FOLDER_LOCKS: dict[Path, threading.Lock] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


def _folder_lock(folder: Path) -> threading.Lock:
    with _FOLDER_LOCKS_GUARD:
        return _FOLDER_LOCKS.setdefault(folder, threading.Lock())


def cache_root() -> Path:
    """``$LLMDISPATCH_CACHE``, else ``$XDG_CACHE_HOME/llmdispatch``, else ``~/.cache/…``."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "llmdispatch"


def text_digests(texts: Sequence[str]) -> npt.NDArray[np.void]:
    """BLAKE2b-128 of each text's UTF-8 bytes, as a fixed-width byte array."""
    raw = b"".join(
        hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=_DIGEST_BYTES).digest()
        for t in texts
    )
    return np.frombuffer(raw, dtype=f"V{_DIGEST_BYTES}")


class EncodingCache:
    """Encodings of one fitted encoder, read from and appended to a folder.

    ``encode(encoder, texts)`` returns exactly ``encoder.encode(texts)`` (same rows, dtype and
    format) but computes only the texts not cached yet, each distinct text once.
    """

    def __init__(self, cache_dir: Path | str | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "encodings"
        self._index: dict[str, dict[bytes, tuple[int, int]]] = {}
        self._parts: dict[str, list[Features]] = {}

    def folder(self, key: str) -> Path:
        """The folder holding one encoder key's parts."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:80]
        return self.cache_dir / f"{safe}-{digest(key)}"

    def encode(self, encoder: Encoder, texts: Sequence[str]) -> Features:
        """``encoder.encode(texts)`` through the cache."""
        texts = check_texts(texts)
        if not texts:
            return encoder.encode(texts)
        key = encoder.key
        digests = text_digests(texts)
        keys = _split(digests)
        with _folder_lock(self.folder(key)):
            index, parts = self._load(key)
            missing: dict[bytes, int] = {}
            for i, d in enumerate(keys):
                if d not in index and d not in missing:
                    missing[d] = i
            if missing:
                todo = list(missing.values())
                rows = encoder.encode([texts[i] for i in todo])
                self._append(key, digests[todo], rows, index, parts)
            return _gather(parts, [index[d] for d in keys])

    def _load(self, key: str) -> tuple[dict[bytes, tuple[int, int]], list[Features]]:
        if key not in self._index:
            index: dict[bytes, tuple[int, int]] = {}
            parts: list[Features] = []
            folder = self.folder(key)
            for path in sorted(folder.glob("part-*.npz")) if folder.is_dir() else ():
                hashes, rows = _read_part(path)
                for row, d in enumerate(_split(hashes)):
                    index.setdefault(d, (len(parts), row))
                parts.append(rows)
            self._index[key], self._parts[key] = index, parts
        return self._index[key], self._parts[key]

    def _append(
        self,
        key: str,
        hashes: npt.NDArray[np.void],
        rows: Features,
        index: dict[bytes, tuple[int, int]],
        parts: list[Features],
    ) -> None:
        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "KEY").exists():
            _atomic_write(folder / "KEY", key.encode("utf-8"))
        arrays: dict[str, Any] = {"hashes": hashes.view(np.uint8).reshape(-1, _DIGEST_BYTES)}
        if sp.issparse(rows):
            csr = sp.csr_matrix(rows)
            arrays |= {"data": csr.data, "indices": csr.indices, "indptr": csr.indptr}
            arrays["shape"] = np.asarray(csr.shape, dtype=np.int64)
        else:
            arrays["dense"] = np.asarray(rows)
        fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".npz", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        final = folder / f"part-{os.getpid()}-{Path(tmp).stem[6:]}.npz"
        os.replace(tmp, final)
        for row, d in enumerate(_split(hashes)):
            index.setdefault(d, (len(parts), row))
        parts.append(rows)


def encode_with_cache(
    encoder: Encoder, texts: Sequence[str], cache_dir: Path | str | None = None
) -> Features:
    """``encoder.encode(texts)``, reusing and extending the on-disk cache in ``cache_dir``."""
    return EncodingCache(cache_dir).encode(encoder, texts)


@register("encoder", "cached")
class CachedEncoder(Encoder):
    """Wraps an encoder so every ``encode`` goes through an :class:`EncodingCache`.

    ``fit`` fits the wrapped encoder. Its state nests the wrapped encoder's (and the cache
    folder only if one was given explicitly); persist ``.encoder`` instead to serve without
    a disk cache.
    """

    def __init__(self, encoder: Encoder, cache_dir: Path | str | None = None) -> None:
        self.encoder = encoder
        self.cache_dir = cache_dir

    @property
    def sparse_output(self) -> bool:  # type: ignore[override]
        """As the wrapped encoder's."""
        return self.encoder.sparse_output

    def fit(self, texts: Sequence[str]) -> Self:
        """Fit the wrapped encoder."""
        self.encoder.fit(texts)
        return self

    def encode(self, texts: Sequence[str]) -> Features:
        """The wrapped encoder's rows, from the cache where possible."""
        if not hasattr(self, "cache_"):
            self.cache_ = EncodingCache(self.cache_dir)
        return self.cache_.encode(self.encoder, texts)

    @property
    def key(self) -> str:
        """The wrapped encoder's key (the cache is transparent)."""
        return self.encoder.key

    def get_state(self) -> dict[str, Any]:
        """The wrapped encoder's component state and the explicit cache folder, if any."""
        folder = None if self.cache_dir is None else str(self.cache_dir)
        return {"encoder": component_state(cast(Persistable, self.encoder)), "cache_dir": folder}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild the wrapper around the restored encoder."""
        return cls(restore(state["encoder"]), state.get("cache_dir"))


def _split(hashes: npt.NDArray[Any]) -> list[bytes]:
    raw = np.ascontiguousarray(hashes).tobytes()
    return [raw[i : i + _DIGEST_BYTES] for i in range(0, len(raw), _DIGEST_BYTES)]


def _read_part(path: Path) -> tuple[npt.NDArray[np.uint8], Features]:
    with np.load(path, allow_pickle=False) as npz:
        hashes = npz["hashes"]
        if "dense" in npz.files:
            return hashes, npz["dense"]
        shape = tuple(int(v) for v in npz["shape"])
        return hashes, sp.csr_matrix((npz["data"], npz["indices"], npz["indptr"]), shape=shape)


def _gather(parts: list[Features], where: list[tuple[int, int]]) -> Features:
    """Rows ``where = [(part, row), …]`` stacked in order, in the parts' format."""
    loc = np.asarray(where, dtype=np.int64)
    order = np.argsort(loc[:, 0], kind="stable")
    blocks: list[Features] = []
    for p in np.unique(loc[:, 0]):
        blocks.append(parts[int(p)][loc[loc[:, 0] == p, 1]])
    if sp.issparse(parts[0]):
        stacked: Features = sp.vstack(blocks, format="csr")
    else:
        stacked = np.concatenate(blocks)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return stacked[inverse]


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
