"""Token log-probability signals of a live answer: mean, minimum and the top-1/top-2 margin.

These are the classic confidence-cascade signals (e.g. Varshney & Baral, 2022; Gupta et al.,
"Language Model Cascades: Token-level uncertainty and beyond", ICLR 2024): the mean or the
minimum log-probability of the generated tokens, and the probability margin between the two
most likely candidates for the first answer token. Outcome tables do not keep token
log-probs, so offline these signals are NaN (use ``recorded`` where a table stores one).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llmdispatch.data.table import OutcomeTable
from llmdispatch.query import Query
from llmdispatch.registry import register
from llmdispatch.signals.base import NAN, Response, Signal, nan_matrix
from llmdispatch.types import FloatMatrix


class _TokenSignal(Signal):
    """Shared offline face: tables hold no token log-probs."""

    def offline(self, table: OutcomeTable) -> FloatMatrix:
        """All NaN: token log-probs are not recorded in outcome tables."""
        return nan_matrix(table)

    def request_options(self) -> dict[str, Any]:
        """The answer call must return token log-probs."""
        return {"logprobs": True}


@register("signal", "logprob-mean")
class MeanLogprob(_TokenSignal):
    """Mean log-probability of the answer's tokens: ``(1/T) Σ_t log p(y_t | y_<t, x)``."""

    def value(self, query: Query, answer: Response) -> float:
        """Mean of ``answer.token_logprobs``; NaN without log-probs."""
        lp = answer.token_logprobs
        return float(np.mean(lp)) if lp else NAN


@register("signal", "logprob-min")
class MinLogprob(_TokenSignal):
    """Least token log-probability of the answer: ``min_t log p(y_t | y_<t, x)``."""

    def value(self, query: Query, answer: Response) -> float:
        """Minimum of ``answer.token_logprobs``; NaN without log-probs."""
        lp = answer.token_logprobs
        return float(np.min(lp)) if lp else NAN


@register("signal", "top-margin")
class TopMargin(_TokenSignal):
    """Probability margin of the first answer token: ``p(top-1) − p(top-2)``.

    Read from ``top_logprobs[position]`` (the candidates' log-probs at that position, most
    likely first). With a single candidate the margin is its probability.
    """

    def __init__(self, position: int = 0) -> None:
        self.position = position

    def request_options(self) -> dict[str, Any]:
        """Log-probs with the two best candidates per position."""
        return {"logprobs": True, "top_logprobs": 2}

    def value(self, query: Query, answer: Response) -> float:
        """``exp(l1) − exp(l2)`` at ``position``; NaN when the candidates are missing."""
        top = answer.top_logprobs
        if not top or len(top) <= self.position or not top[self.position]:
            return NAN
        ranked = sorted((float(v) for v in top[self.position]), reverse=True)
        first = math.exp(ranked[0])
        second = math.exp(ranked[1]) if len(ranked) > 1 else 0.0
        return first - second

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"position": self.position}
