"""The confidence an outcome table recorded, and what recording it cost.

Tables such as ``cascades9`` store a raw confidence per answer (the answer's log-probability
for multiple choice, a self-check's log-probability for open questions). Offline it is read
from ``table.confidence``; live it is read from ``AttemptResult.confidence`` (the replay
provider returns the recorded value), falling back to the mean token log-prob of the answer.

Where the confidence came from a second, self-check call, ``cascades9`` bills that call in
``cost_usd`` already, with every answer, whether or not a policy reads the confidence: a router
replayed on the table as recorded pays for self-checks it never makes. Two accountings:

* as recorded (the default): ``table.cost`` bills the check with every answer and the signal
  adds nothing;
* unbundled: :func:`unbundle_checks` returns the table with each answer's cost reduced to the
  answer call (tokens × card prices) and the checks' costs as :class:`CheckCosts`;
  ``RecordedConfidence(check_costs=...)`` bills a check only where a policy reads the
  confidence (:meth:`Signal.offline_overhead`). Latency stays as recorded (the source does not
  time the two calls separately).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Self

import numpy as np

from llmdispatch.data.table import OutcomeTable
from llmdispatch.query import Query
from llmdispatch.registry import register
from llmdispatch.signals.base import NAN, Response, Signal, finite_or_nan
from llmdispatch.types import FloatMatrix


@register("signal", "recorded")
class RecordedConfidence(Signal):
    """The source's own raw confidence: ``table.confidence`` offline, ``result.confidence`` live.

    Parameters
    ----------
    logprob_fallback:
        Live, when the response carries no recorded confidence, use the mean token
        log-probability of the answer instead (requesting log-probs from the model).
    check_costs:
        The self-checks' costs of an unbundled table (:func:`unbundle_checks`), billed where
        the confidence is read; ``None``: the table's cost already bills them.
    """

    def __init__(
        self, logprob_fallback: bool = True, check_costs: CheckCosts | None = None
    ) -> None:
        self.logprob_fallback = logprob_fallback
        self.check_costs = check_costs

    def offline(self, table: OutcomeTable) -> FloatMatrix:
        """The recorded confidences (NaN where absent)."""
        return np.array(table.confidence, dtype=np.float64, copy=True)

    def offline_overhead(self, table: OutcomeTable) -> tuple[FloatMatrix, FloatMatrix]:
        """The self-check's cost per answer when unbundled, else nothing extra."""
        zeros = np.zeros((table.n_prompts, table.n_models))
        if self.check_costs is None:
            return zeros, zeros.copy()
        return self.check_costs.for_table(table), zeros

    def request_options(self) -> dict[str, Any]:
        """Log-probs when the fallback may be needed."""
        return {"logprobs": True} if self.logprob_fallback else {}

    def value(self, query: Query, answer: Response) -> float:
        """``answer.confidence``, else the mean token log-prob (when allowed), else NaN."""
        conf = finite_or_nan(answer.confidence)
        if not np.isnan(conf):
            return conf
        if self.logprob_fallback and answer.token_logprobs:
            return float(np.mean(answer.token_logprobs))
        return NAN

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (the check costs are kept by :meth:`get_state`)."""
        return {"logprob_fallback": self.logprob_fallback}

    def get_state(self) -> dict[str, Any]:
        """Parameters and, when unbundled, the checks' costs."""
        state: dict[str, Any] = {"params": self.get_params()}
        if self.check_costs is not None:
            state["check_costs"] = self.check_costs.state()
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        checks = state.get("check_costs")
        return cls(
            **state.get("params", {}),
            check_costs=CheckCosts.from_state(checks) if checks is not None else None,
        )


@dataclass(frozen=True)
class CheckCosts:
    """The cost of the self-check behind each recorded confidence, by prompt id and model."""

    ids: tuple[str, ...]
    models: tuple[str, ...]
    cost: FloatMatrix

    def for_table(self, table: OutcomeTable) -> FloatMatrix:
        """The checks' costs for the rows and models of ``table`` (rows are matched by id)."""
        index = {pid: i for i, pid in enumerate(self.ids)}
        try:
            rows = np.array([index[str(pid)] for pid in table.ids], dtype=np.intp)
        except KeyError as exc:
            raise KeyError(f"no self-check cost recorded for prompt {exc.args[0]!r}") from None
        cols = [self.models.index(m) if m in self.models else -1 for m in table.models]
        out = np.zeros((table.n_prompts, table.n_models))
        for j, c in enumerate(cols):
            if c >= 0:
                out[:, j] = self.cost[rows, c]
        return out

    def state(self) -> dict[str, Any]:
        """JSON-able state (the matrix is stored as an array)."""
        return {"ids": list(self.ids), "models": list(self.models), "cost": self.cost}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CheckCosts:
        """Rebuild from :meth:`state`."""
        return cls(
            tuple(str(i) for i in state["ids"]),
            tuple(state["models"]),
            np.asarray(state["cost"], dtype=np.float64),
        )


def unbundle_checks(table: OutcomeTable) -> tuple[OutcomeTable, CheckCosts]:
    """The table with each answer billed for the answer call alone, and the checks' costs.

    Where :func:`check_overhead` finds a billed self-check, ``cost`` becomes the answer call's
    token cost; elsewhere it is unchanged. The check's cost is returned by prompt id, for
    ``RecordedConfidence(check_costs=...)`` to bill only where a policy reads the confidence.
    """
    extra = check_overhead(table)
    unbundled = replace(table, cost=np.where(extra > 0, table.cost - extra, table.cost))
    return unbundled, CheckCosts(tuple(str(i) for i in table.ids), tuple(table.models), extra)


def answer_call_cost(table: OutcomeTable) -> FloatMatrix:
    """Token cost of the answer call alone (tokens × card prices); NaN where unknown."""
    out = np.full(table.cost.shape, np.nan)
    for j, name in enumerate(table.models):
        card = table.card(name)
        if card.price_in_per_mtok is None or card.price_out_per_mtok is None:
            continue
        out[:, j] = (
            table.tokens_in[:, j] * card.price_in_per_mtok
            + table.tokens_out[:, j] * card.price_out_per_mtok
        ) / 1e6
    return out


def check_overhead(table: OutcomeTable, tolerance: float = 1e-3) -> FloatMatrix:
    """The part of the recorded cost that is not the answer call (a billed self-check).

    ``cost − answer_call_cost`` where it exceeds the answer cost by more than ``tolerance``
    (relative), else 0; 0 where tokens or prices are unknown.
    """
    answer = answer_call_cost(table)
    extra = table.cost - answer
    billed = np.isfinite(extra) & (extra > tolerance * np.abs(answer))
    return np.where(billed, extra, 0.0)
