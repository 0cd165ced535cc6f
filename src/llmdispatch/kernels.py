"""Compiled kernels for one live query's features (optional: numba, the ``fast`` extra).

The numpy live path spends most of a short prompt's time in the fixed cost of a few dozen
small array operations, and a long prompt's in temporaries. With numba installed, the
kernels of :mod:`llmdispatch._numba_kernels` do the same work in single passes:
the n-gram columns of one text (``NgramHasher.row_counts``), its TF-IDF weighting
(``TfidfEncoder.encode_row``) and its LSA projection (``LsaProjection.transform_row``). The
columns and weights are bit-identical to numpy's (integer hashing; float operations in the
same order); the projection sums in another order, so it agrees to float32 rounding. For the
kNN estimator, the neighbour selection, weights and average of one query
(``KNNEstimator.predict_row``) are one pass over the similarities, agreeing with numpy to
float64 rounding.

They are opt-in: they engage in a process once :func:`warm` has compiled them (numba caches
the machine code on disk, so later processes load it in about a second), and numba's LLVM
adds about 115 MiB of resident memory to the process. The gateway warms them when its config
says ``compiled_kernels: true``; everything else keeps the numpy path unless it calls
:func:`warm`. ``LLMDISPATCH_KERNELS=numpy`` keeps them off everywhere.
"""

from __future__ import annotations

import os
import threading
from types import ModuleType

import numpy as np

_active: ModuleType | None = None
_lock = threading.Lock()


def kernels() -> ModuleType | None:
    """The compiled kernels once warmed, else ``None`` (use the numpy path)."""
    return _active


def warm() -> bool:
    """Compile (or load from numba's cache) every kernel for the array types the live path
    passes, then switch them on. ``False`` when numba is missing or turned off."""
    global _active
    if _active is not None:
        return True
    if os.environ.get("LLMDISPATCH_KERNELS", "auto").strip().lower() in ("numpy", "off", "0"):
        return False
    with _lock:
        if _active is not None:
            return True
        try:
            from llmdispatch import _numba_kernels as k
        except ImportError:
            return False
        n_features = 1 << 20
        cls = np.ones(4, dtype=np.uint8)
        ascii_ = np.frombuffer(b"warm", np.uint8)  # read-only, as np.frombuffer gives
        wide = np.frombuffer("warm".encode("utf-32-le"), np.uint32)
        # numba compiles one version per array type: read-only and writable, 8 and 32 bits.
        classes = np.zeros(0x10000, dtype=np.uint8)
        k.normalise_ascii(ascii_, classes)
        for cp in (ascii_, ascii_.copy(), wide, wide.copy()):
            keys = k.row_keys(cp, cls, 3, 5, 2, np.uint64((n_features >> 1) - 1))
            keys.sort()
            cols, counts = k.count_sorted(keys)
        k.tfidf_weigh(cols, counts, np.ones(n_features, dtype=np.float32), n_features, 0.5)
        for dtype in (np.int16, np.int32):  # lsa.column_positions gives either
            position = np.full(n_features, -1, dtype=dtype)
            k.project(cols, counts, position, np.ones((1, 2), dtype=np.float32))
        sims, scores = np.linspace(0.0, 1.0, 8), np.ones((8, 2))
        for temperature in (-1.0, 0.2):
            k.knn_average(sims, 3, temperature, scores, scores, 0.1, np.ones(2))
        _active = k
    return True


def deactivate() -> None:
    """Back to the numpy path (tests and side-by-side benchmarks switch between the two)."""
    global _active
    _active = None
