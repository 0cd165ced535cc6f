"""Benchmark bandits: online learners replayed as a stream over the test split.

Cold learners start from nothing; warm ones take the kNN router's ``Q`` as their prior. The
replay reveals only the chosen model's score, once, after the decision (see
:class:`~llmdispatch.policies.bandit.BanditRouter`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmdispatch.evaluation.suites import benchmark_policy
from llmdispatch.policies.bandit import BanditRouter
from llmdispatch.policies.base import Policy

BANDITS: dict[str, dict[str, Any]] = {
    "linucb-warm": {"algorithm": "linucb", "warm_start": "knn"},
    "thompson-warm": {"algorithm": "thompson", "warm_start": "knn"},
    "linucb-cold": {"algorithm": "linucb"},
    "epsilon-greedy-warm": {"algorithm": "epsilon-greedy", "warm_start": "knn"},
}


def bandit_factory(label: str, params: dict[str, Any]) -> Callable[[], Policy]:
    """A zero-argument factory of an unfitted, labelled bandit router."""

    def factory() -> Policy:
        bandit = BanditRouter(**params)
        bandit.label = label
        return bandit

    factory.__doc__ = f"Bandit {label}: {params}."
    return factory


for _label, _params in BANDITS.items():
    benchmark_policy(f"bandit-{_label}", family="bandit")(
        bandit_factory(f"bandit-{_label}", _params)
    )
