"""Named benchmark policies: what ``bench`` runs by default, one module per family.

Each module registers :class:`BenchmarkPolicy` entries under ``("benchmark-policy", name)``
with :func:`benchmark_policy`. An entry builds an unfitted, labelled policy; ``bench`` calls
``policy.fit(train, validation)`` and replays it on the test split. ``applies(table)`` returns
why an entry does not apply to a table (e.g. a cascade on a table without a usable signal),
or ``None`` when it does; ``family`` groups entries in reports (reference, router, cascade,
composition, bandit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmdispatch.data.table import OutcomeTable
from llmdispatch.policies.base import Policy
from llmdispatch.registry import REGISTRY, register

FAMILIES = ("reference", "router", "cascade", "composition", "bandit")


@dataclass(frozen=True)
class BenchmarkPolicy:
    """One named policy configuration that ``bench`` can run."""

    name: str
    family: str
    factory: Callable[[], Policy]
    applies: Callable[[OutcomeTable], str | None] | None = None

    def build(self) -> Policy:
        """A fresh, unfitted policy labelled with the entry's name."""
        policy = self.factory()
        policy.label = self.name
        return policy

    def skip_reason(self, table: OutcomeTable) -> str | None:
        """Why this entry does not apply to ``table``, or ``None``."""
        return self.applies(table) if self.applies is not None else None


def benchmark_policy(
    name: str, family: str, applies: Callable[[OutcomeTable], str | None] | None = None
) -> Callable[[Callable[[], Policy]], Callable[[], Policy]]:
    """Decorator: register a zero-argument policy factory as a benchmark entry."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; families are {', '.join(FAMILIES)}")

    def deco(factory: Callable[[], Policy]) -> Callable[[], Policy]:
        register("benchmark-policy", name)(BenchmarkPolicy(name, family, factory, applies))
        return factory

    return deco


def benchmark_entries(names: list[str] | None = None) -> list[BenchmarkPolicy]:
    """Registered entries (all, or these names in this order; unknown names are an error)."""
    wanted = names if names is not None else REGISTRY.names("benchmark-policy")
    entries = [REGISTRY.get("benchmark-policy", n) for n in wanted]
    order = {f: i for i, f in enumerate(FAMILIES)}
    return entries if names is not None else sorted(entries, key=lambda e: order[e.family])
