"""httpx without its command-line interface, for the gateway's modules.

``import httpx`` also imports ``httpx.main``, the ``httpx`` command's code, whenever ``rich``,
``click`` and ``pygments`` are installed (``rich`` is one of llmdispatch's dependencies):
about 6 MiB in every gateway worker for a command the server never runs. Imported through
here, httpx's own fallback for a missing CLI applies instead (``httpx.main`` then only says
how to install it); a process that imported httpx before keeps it as it is.
"""

from __future__ import annotations

import sys

__all__ = ["httpx"]

if "httpx" not in sys.modules:
    sys.modules["httpx._main"] = None  # type: ignore[assignment]  # makes the import fail
    try:
        import httpx
    finally:
        del sys.modules["httpx._main"]  # an explicit import of httpx._main still works
else:
    import httpx
