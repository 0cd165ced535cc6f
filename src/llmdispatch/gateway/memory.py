"""Give freed heap memory back to the system once a serving process is ready (glibc only).

Loading artifacts and building a router's index free many large temporaries (decompressed
``.npz`` members, intermediate matrices). After the first such block is freed, glibc raises
its mmap threshold, so later blocks of that size come from the heap, and their pages stay
resident after they are freed. ``malloc_trim(0)`` returns those free pages to the system. The
gateway calls it once, after loading and warming its policies. It does not call it per
request, and it leaves the threshold alone: a fixed low threshold would put a routed request's
megabyte-sized temporaries through mmap and page faults every time (measured: half the routed
throughput).
"""

from __future__ import annotations

import ctypes
import ctypes.util


def release_free_memory() -> bool:
    """Return free heap pages to the system; ``False`` where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
