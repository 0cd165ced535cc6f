"""Policies decide which models answer. Two faces, one object:

* offline, ``sweep(table, available)`` replays the policy over an outcome table for each value
  of its knob (λ, a threshold, a budget) and returns what it would have called;
* live, ``start(query, allowed)`` is a generator that yields the next :class:`Attempt` (which
  model to call, with which request options), receives its :class:`AttemptResult`, and finally
  returns the name of the model whose answer is the reply. Cascade logic is written once, for
  sync and async callers alike (the pattern of httpx's auth flow).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np

from llmdispatch.data.table import OutcomeTable
from llmdispatch.query import Query
from llmdispatch.types import BoolMatrix, FloatVector, IntVector


@dataclass(frozen=True)
class Decisions:
    """What a policy did on every prompt of a table, for one knob value.

    ``final[i]`` is the model whose answer prompt ``i`` gets; ``called[i, j]`` whether model
    ``j`` was called (its cost and latency are paid); ``overhead_*`` adds verifier or judge
    calls that are not model answers. Latency of the called models adds up (calls are
    sequential).
    """

    final: IntVector
    called: BoolMatrix
    overhead_cost: FloatVector
    overhead_latency_ms: FloatVector

    @classmethod
    def routed(cls, final: IntVector, n_models: int) -> Decisions:
        """One call per prompt: the chosen model answers."""
        final = np.asarray(final, dtype=np.intp)
        called = np.zeros((len(final), n_models), dtype=bool)
        called[np.arange(len(final)), final] = True
        zeros = np.zeros(len(final))
        return cls(final=final, called=called, overhead_cost=zeros, overhead_latency_ms=zeros)

    def __post_init__(self) -> None:
        n = len(self.final)
        if self.called.shape[0] != n:
            raise ValueError("called must have one row per prompt")
        if n and not self.called[np.arange(n), self.final].all():
            raise ValueError("every prompt's final model must be among the models it called")


@dataclass(frozen=True)
class Attempt:
    """The next call a live policy asks for.

    ``purpose`` is ``answer`` for a model's answer and ``verify`` for a check of an answer (a
    self-verification prompt or a judge), whose ``messages`` replace the user's.
    """

    model: str
    purpose: str = "answer"
    messages: tuple[dict[str, Any], ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    #: The policy's estimates for this call, when it has them (shown in response headers).
    quality: float | None = None
    cost: float | None = None


@dataclass(frozen=True)
class AttemptResult:
    """What came back from an :class:`Attempt`."""

    model: str
    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    latency_ms: float = 0.0
    token_logprobs: tuple[float, ...] | None = None
    top_logprobs: tuple[tuple[float, ...], ...] | None = None
    samples: tuple[str, ...] = ()
    confidence: float | None = None


@dataclass(frozen=True)
class Candidate:
    """One model as a policy scored it for a query."""

    model: str
    quality: float
    cost: float
    utility: float
    excluded: str | None = None


@dataclass(frozen=True)
class Plan:
    """A policy's explanation of its first choice: candidates best first, then excluded ones."""

    policy: str
    choice: str
    candidates: tuple[Candidate, ...]
    knob: float | None = None

    @property
    def fallbacks(self) -> list[str]:
        """Allowed models after the choice, in order of utility."""
        return [c.model for c in self.candidates if c.excluded is None and c.model != self.choice]


class Policy(ABC):
    """Base of every decision-maker: routers, cascades, bandits and their compositions.

    ``fit(train, validation)`` learns (and calibrates its knob on ``validation``). Replay
    tables reach ``sweep`` with their scores hidden unless ``needs_scores`` is set (only the
    oracle reference sets it), so no policy can peek at the answer it is judged on.
    """

    registry_kind: ClassVar[str]
    registry_name: ClassVar[str]
    knob_name: ClassVar[str] = "lambda"
    needs_scores: ClassVar[bool] = False

    #: Label in reports; set by the factory that built the policy.
    label: str = ""

    def fit(self, train: OutcomeTable, validation: OutcomeTable | None = None) -> Self:
        """Learn from ``train``; tune on ``validation`` when given. Default: nothing to learn."""
        return self

    @abstractmethod
    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """Replay over ``table`` for each knob value; only ``available`` models may be used."""

    def warm(self) -> None:
        """Build what the first live decision would build lazily (indexes, caches), so a
        served policy starts at full speed; the default warms every policy and estimator
        this one holds (a composition's router, a router's estimator)."""
        from llmdispatch.estimators.base import QualityEstimator

        for value in vars(self).values():
            if isinstance(value, Policy | QualityEstimator):
                value.warm()

    def held_policies(self) -> list[Policy]:
        """The policies this one holds (a composition's router and cascade)."""
        return [v for v in vars(self).values() if isinstance(v, Policy)]

    def prefetches(self) -> bool:
        """Whether :meth:`prefetch` computes anything for this policy (a router's
        estimates, or those of a router it holds)."""
        return any(p.prefetches() for p in self.held_policies())

    def prefetch(self, queries: Sequence[Query]) -> None:
        """Compute, in one batched call, what the live decisions on ``queries`` will need
        (a router's ``Q̂``), and leave it in each query's ``estimates`` for :meth:`start` and
        :meth:`explain` to read: a serving process deciding on many queries at once pays for
        one batch instead of one per query. The default prefetches for the held policies."""
        for policy in self.held_policies():
            if policy.prefetches():
                policy.prefetch(queries)

    def start(
        self, query: Query, allowed: frozenset[str]
    ) -> Generator[Attempt, AttemptResult, str]:
        """Live decision flow (see the module docstring). Offline-only policies raise."""
        raise NotImplementedError(f"{type(self).__name__} cannot serve live requests")
        yield  # pragma: no cover  (makes this a generator)

    def explain(self, query: Query, allowed: frozenset[str]) -> Plan:
        """The first decision with per-model estimates, without calling any model."""
        raise NotImplementedError(f"{type(self).__name__} cannot explain live decisions")
