"""The confidence an outcome table recorded, and what recording it cost.

Tables such as ``cascades9`` store a raw confidence per answer (the answer's log-probability
for multiple choice, a self-check's log-probability for open questions). Offline it is read
from ``table.confidence``; live it is read from ``AttemptResult.confidence`` (the replay
provider returns the recorded value), falling back to the mean token log-prob of the answer.

Where the confidence came from a second, self-check call, ``cascades9`` bills that call in
``cost_usd`` already. :func:`check_overhead` recovers that part (recorded cost minus the
answer call's token cost) so reports can show verifier overhead without charging it twice.
"""

from __future__ import annotations

from typing import Any

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
    """

    def __init__(self, logprob_fallback: bool = True) -> None:
        self.logprob_fallback = logprob_fallback

    def offline(self, table: OutcomeTable) -> FloatMatrix:
        """The recorded confidences (NaN where absent)."""
        return np.array(table.confidence, dtype=np.float64, copy=True)

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
        """Constructor parameters."""
        return {"logprob_fallback": self.logprob_fallback}


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
