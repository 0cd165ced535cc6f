"""Every ``Examples`` section in the package's docstrings runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import llmdispatch

#: Every module but ``__main__`` (importing it runs the CLI).
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(llmdispatch.__path__, prefix="llmdispatch.")
    if not info.name.endswith(".__main__")
)


def test_the_package_has_examples_to_run() -> None:
    finder = doctest.DocTestFinder()
    found = [
        t for name in MODULES for t in finder.find(importlib.import_module(name)) if t.examples
    ]
    assert len(found) >= 8


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False, report=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
