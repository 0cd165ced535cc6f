"""Keep a serving process's resident size close to what it uses (glibc only).

glibc serves an allocation above its mmap threshold (128 KiB at start) with its own memory
map, returned to the system when freed, but after such a block is freed it raises the
threshold up to 32 MiB: later arrays of that size come from the heap and their pages stay
resident after they are freed. Loading an artifact and building a router's index free many
such arrays (decompressed ``.npz`` members, temporaries); with the threshold fixed, a served
kNN router holds about 12 MiB less after its first requests (measured on cascades9's default
router). ``MALLOC_MMAP_THRESHOLD_`` in the environment does the same from process start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

#: ``M_MMAP_THRESHOLD`` in glibc's ``malloc.h``.
_M_MMAP_THRESHOLD = -3
#: glibc's initial threshold: blocks above it are mapped, and unmapped when freed.
MMAP_THRESHOLD = 128 * 1024


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (no dynamic raise); ``False`` where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    if not ok:
        logger.debug("mallopt(M_MMAP_THRESHOLD) refused")
    return ok
