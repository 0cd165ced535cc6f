"""One registry of named components: encoders, estimators, signals and policies.

Configs, the CLI, ``bench`` and artifacts name components by ``(kind, name)``; adding one is
adding one class with ``@register(kind, name)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

KINDS = ("encoder", "estimator", "signal", "policy", "benchmark-policy")

#: Subpackages whose every module is imported once to register the built-in components.
#: Modules there must be cheap to import: heavy dependencies load inside functions.
BUILTIN_PACKAGES = (
    "llmdispatch.features",
    "llmdispatch.estimators",
    "llmdispatch.signals",
    "llmdispatch.policies",
    "llmdispatch.evaluation.suites",
)

T = TypeVar("T")
_DECORATOR = re.compile(r'@register\(\s*"([\w-]+)",\s*"([\w.-]+)"\s*\)')


class UnknownComponentError(KeyError):
    """A name that is not registered; the message lists the names that are."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry:
    """Maps ``(kind, name)`` to a class or factory."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self._builtins_loaded = False

    def register(self, kind: str, name: str) -> Callable[[T], T]:
        """Decorator: register a class or factory under ``(kind, name)``."""
        if kind not in self._items:
            raise ValueError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")

        def deco(obj: T) -> T:
            existing = self._items[kind].get(name)
            if existing is not None and existing is not obj:
                raise ValueError(f"{kind} {name!r} is registered twice")
            self._items[kind][name] = obj
            if isinstance(obj, type):
                obj.registry_kind = kind  # type: ignore[attr-defined]
                obj.registry_name = name  # type: ignore[attr-defined]
            return obj

        return deco

    def get(self, kind: str, name: str) -> Any:
        """The component registered as ``(kind, name)``; a clear error lists the others.

        A built-in component is imported alone, found through an index of the built-in
        modules' ``@register`` decorators (read as text, nothing imported): a process that
        serves one router does not pay for every estimator's dependencies.
        """
        if name not in self._items.get(kind, {}) and not self._builtins_loaded:
            module = self._index().get((kind, name))
            if module is not None:
                importlib.import_module(module)
        if name not in self._items.get(kind, {}):
            self.load_builtins()
        try:
            return self._items[kind][name]
        except KeyError:
            known = ", ".join(sorted(self._items.get(kind, {}))) or "(none)"
            raise UnknownComponentError(f"unknown {kind} {name!r}; known: {known}") from None

    def _index(self) -> dict[tuple[str, str], str]:
        """``(kind, name)`` → module of the built-in packages, from their source text."""
        index: dict[tuple[str, str], str] | None = getattr(self, "_index_cache", None)
        if index is not None:
            return index
        index = {}
        for package in BUILTIN_PACKAGES:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                continue
            for folder in spec.submodule_search_locations:
                for path in sorted(Path(folder).glob("*.py")):
                    text = path.read_text(encoding="utf-8")
                    for kind, name in _DECORATOR.findall(text):
                        index.setdefault((kind, name), f"{package}.{path.stem}")
        self._index_cache = index
        return index

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, sorted."""
        self.load_builtins()
        return sorted(self._items[kind])

    def load_builtins(self) -> None:
        """Import the built-in component packages once (no I/O, no heavy imports)."""
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        for package in BUILTIN_PACKAGES:
            module = importlib.import_module(package)
            for info in pkgutil.iter_modules(module.__path__, prefix=f"{package}."):
                importlib.import_module(info.name)


REGISTRY = Registry()
register = REGISTRY.register
