"""Small helpers shared by the encoders: input checks, row normalisation, digests, extras."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

EMBEDDINGS_HINT = "pip install 'llmdispatch[embeddings]'"


class MissingExtraError(ImportError, RuntimeError):
    """An optional dependency is not installed; the message says which extra to install."""


def require_extra(module: str, encoder: str) -> None:
    """Raise :class:`MissingExtraError` unless ``module`` imports."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"the {encoder!r} encoder needs the embeddings extra ({module} is not importable: "
            f"{exc}); install it with: {EMBEDDINGS_HINT}"
        ) from None


def check_texts(texts: Sequence[str]) -> list[str]:
    """A list of strings; a bare string (a common slip) is rejected rather than iterated."""
    if isinstance(texts, str | bytes):
        raise TypeError("encode() takes a sequence of texts, not a single string; wrap it: [text]")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, expected str")
    return out


def l2_normalize_dense(X: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """Rows scaled to unit L2 norm as float32; all-zero rows stay zero."""
    Y = np.asarray(X, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", Y, Y, dtype=np.float64))
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    out: npt.NDArray[np.float32] = Y * scale[:, None].astype(np.float32)
    return out


def l2_normalize_csr(X: sp.csr_matrix) -> sp.csr_matrix:
    """CSR rows scaled in place to unit L2 norm; all-zero rows stay zero."""
    data = X.data
    lengths = np.diff(X.indptr)
    rows = np.repeat(np.arange(X.shape[0]), lengths)
    norms = np.sqrt(np.bincount(rows, weights=data.astype(np.float64) ** 2, minlength=X.shape[0]))
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    X.data = (data * np.repeat(scale, lengths)).astype(X.dtype, copy=False)
    return X


def digest(*parts: Any) -> str:
    """A short stable hex digest of JSON-able values and numpy arrays (for encoder keys)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str(part.dtype).encode())
            h.update(str(part.shape).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x1f")
    return h.hexdigest()
