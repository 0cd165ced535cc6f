"""The signal interface: "is this answer good enough?" as one raw number per answer.

A :class:`Signal` gives a raw value (higher = more likely correct; NaN = unknown) two ways:

* offline, ``offline(table)`` returns an ``(n_prompts, n_models)`` matrix from what the
  outcome table recorded (the stored confidence, the responses), so cascades replay exactly;
* live, ``assess(query, answer)`` is a generator: it may yield :class:`VerifyRequest` s (a
  self-check or a judge call), receives the response of each and returns the raw value. A
  verification call that fails is reported by throwing the exception into the generator; the
  value is then NaN. Signals that need something from the answer call itself (log-probs,
  several samples) say so in :meth:`Signal.request_options`.

Signals sit below policies, so they do not import the policies' ``Attempt`` types: a
:class:`Response` is anything shaped like :class:`~llmdispatch.policies.base.AttemptResult`,
and the policy turns each :class:`VerifyRequest` into an ``Attempt(purpose="verify")``.

Raw values are calibrated to P(correct) by :mod:`llmdispatch.signals.calibrated` before any
threshold is applied.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self

import numpy as np

from llmdispatch.data.table import OutcomeTable
from llmdispatch.query import Query
from llmdispatch.types import FloatMatrix, IntVector

NAN = float("nan")


class Response(Protocol):
    """What a model call returned, as signals read it (``AttemptResult`` has this shape)."""

    @property
    def model(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def token_logprobs(self) -> tuple[float, ...] | None: ...
    @property
    def top_logprobs(self) -> tuple[tuple[float, ...], ...] | None: ...
    @property
    def samples(self) -> tuple[str, ...]: ...
    @property
    def confidence(self) -> float | None: ...


@dataclass(frozen=True)
class VerifyRequest:
    """A verification call a signal needs: ``model`` None means the answering model itself."""

    messages: tuple[dict[str, Any], ...]
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


#: A live signal computation: yields verification requests, returns the raw value.
Assessment = Generator[VerifyRequest, Response, float]


class Signal(ABC):
    """A raw per-answer confidence, offline from a table and live from a response.

    Constructors only store parameters; signals that learn (the FrugalGPT scorer) do it in
    :meth:`fit` and keep learned state in attributes ending in ``_``.
    """

    registry_kind: ClassVar[str]
    registry_name: ClassVar[str]
    #: Whether :meth:`fit` learns from scores (then calibration must cross-fit it).
    learns: ClassVar[bool] = False
    #: Whether the live value needs a second call (a self-check or a judge).
    verifies: ClassVar[bool] = False

    def fit(self, table: OutcomeTable) -> Self:
        """Learn from a training table; the default learns nothing."""
        return self

    @abstractmethod
    def offline(self, table: OutcomeTable) -> FloatMatrix:
        """Raw values for every (prompt, model) of ``table``; NaN where not recorded."""

    def cross_fit(
        self, table: OutcomeTable, folds: Sequence[tuple[IntVector, IntVector]]
    ) -> FloatMatrix:
        """Out-of-fold raw values on ``table`` (each fold's rows valued by a copy fitted on
        the others' rows), then fit this signal on the whole table. A signal that learns may
        override it to share work between the folds, with the same values."""
        raw = np.full((table.n_prompts, table.n_models), np.nan)
        for train_rows, held_rows in folds:
            part = type(self).from_state(self.get_state())
            raw[held_rows] = part.fit(table.take(train_rows)).offline(table.take(held_rows))
        self.fit(table)
        return raw

    def offline_overhead(self, table: OutcomeTable) -> tuple[FloatMatrix, FloatMatrix]:
        """Cost (USD) and latency (ms) of computing the signal, per (prompt, model), beyond
        what ``table.cost`` and ``table.latency_ms`` already bill. Default: nothing extra."""
        zeros = np.zeros((table.n_prompts, table.n_models))
        return zeros, zeros.copy()

    def request_options(self) -> dict[str, Any]:
        """Options the answer call needs for this signal (e.g. ``{"logprobs": True}``)."""
        return {}

    def value(self, query: Query, answer: Response) -> float:
        """The raw value computable from the answer alone (NaN when it is not)."""
        return NAN

    def assess(self, query: Query, answer: Response) -> Assessment:
        """Live raw value; the default reads it from the answer without further calls."""
        return self.value(query, answer)
        yield  # pragma: no cover  (makes this a generator)

    def usable(self, table: OutcomeTable) -> bool:
        """Whether :meth:`offline` yields any finite value on ``table``."""
        return bool(np.isfinite(self.offline(table)).any())

    def get_state(self) -> dict[str, Any]:
        """Parameters and learned state for :mod:`llmdispatch.artifacts`."""
        return {"params": self.get_params()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        return cls(**state.get("params", {}))

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-able); the default: none."""
        return {}

    def node(self) -> dict[str, Any]:
        """This signal as an artifact node (what ``artifacts.restore`` rebuilds)."""
        return {"kind": self.registry_kind, "name": self.registry_name, "state": self.get_state()}


def nan_matrix(table: OutcomeTable) -> FloatMatrix:
    """An all-NaN ``(n_prompts, n_models)`` matrix: the signal is not recorded."""
    return np.full((table.n_prompts, table.n_models), np.nan)


def finite_or_nan(x: float | None) -> float:
    """``x`` as a float, NaN when missing or not a number (infinities are kept)."""
    if x is None:
        return NAN
    try:
        v = float(x)
    except (TypeError, ValueError):
        return NAN
    return v if not math.isnan(v) else NAN


def log1mexp(logp: float) -> float:
    """``log(1 − exp(logp))`` for ``logp ≤ 0``, computed stably (−inf at ``logp = 0``)."""
    if logp >= 0.0:
        return -math.inf
    if logp > -math.log(2.0):
        return math.log(-math.expm1(logp))
    return math.log1p(-math.exp(logp))
