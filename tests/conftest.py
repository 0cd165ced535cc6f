"""Test-suite options shared by every test module.

* ``--run-slow`` runs tests marked ``slow`` (benchmark-sized); they are skipped by default.
* Tests marked ``services`` need the real Redis and PostgreSQL servers. They skip when a
  server is down, except when ``LLMDISPATCH_REQUIRE_SERVICES=1`` (set by ``.ci/run``): then a
  missing server fails the test, so CI can never pass with those tests skipped.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

# Before numpy loads OpenBLAS: one BLAS thread per test process (see the Makefile).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

REDIS_ADDR = ("127.0.0.1", 6379)
POSTGRES_ADDR = ("127.0.0.1", 5432)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def _reachable(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=0.5):
            return True
    except OSError:
        return False


def require_service(name: str, addr: tuple[str, int]) -> None:
    """Skip (or, in CI, fail) when a real service is not reachable."""
    if _reachable(addr):
        return
    message = f"{name} is not reachable on {addr[0]}:{addr[1]}"
    if os.environ.get("LLMDISPATCH_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} (required: LLMDISPATCH_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    """URL of the real local Redis server."""
    require_service("Redis", REDIS_ADDR)
    return f"redis://{REDIS_ADDR[0]}:{REDIS_ADDR[1]}/0"


@pytest.fixture
def postgres_url() -> str:
    """SQLAlchemy URL of the real local PostgreSQL server (database ``test``)."""
    require_service("PostgreSQL", POSTGRES_ADDR)
    user = os.environ.get("LLMDISPATCH_PG_USER", "postgres")
    return f"postgresql+psycopg://{user}@{POSTGRES_ADDR[0]}:{POSTGRES_ADDR[1]}/test"


@pytest.fixture(scope="session")
def shared_datasets() -> dict[str, Path]:
    """The shared data sets by name (``$LLMDISPATCH_DATA`` or ``../shared/data``).

    Skips when none is found, except in CI, where data tests must never pass vacuously.
    """
    from llmdispatch.data.locate import available_datasets

    found = available_datasets()
    if not found:
        if os.environ.get("LLMDISPATCH_REQUIRE_SERVICES") == "1":
            pytest.fail("no shared data sets found (set LLMDISPATCH_DATA)")
        pytest.skip("no shared data sets found (set LLMDISPATCH_DATA)")
    return found


@pytest.fixture(scope="session")
def shared_data(shared_datasets: dict[str, Path]) -> Callable[[str], Path]:
    """Look up one shared data set's folder by name; skips (fails in CI) when it is absent."""

    def lookup(name: str) -> Path:
        if name not in shared_datasets:
            message = f"shared data set {name!r} not found"
            if os.environ.get("LLMDISPATCH_REQUIRE_SERVICES") == "1":
                pytest.fail(message)
            pytest.skip(message)
        return shared_datasets[name]

    return lookup


@pytest.fixture(autouse=True)
def _numpy_path_after_each_test() -> Iterator[None]:
    """The compiled kernels are opt-in and process-wide: a test that switches them on leaves
    the next test on the default numpy path."""
    yield
    from llmdispatch import kernels

    kernels.deactivate()
