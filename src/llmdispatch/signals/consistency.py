"""Self-consistency: agreement among k sampled answers to the same prompt.

Wang et al., "Self-Consistency Improves Chain of Thought Reasoning in Language Models"
(ICLR 2023) sample k answers and take the majority; the share of samples that agree is a
confidence signal used by consistency cascades (e.g. Yue et al., "Large Language Model
Cascades with Mixture of Thought Representations", ICLR 2024). The value is
``(1/k) Σ_i 1[key(s_i) = key(answer)]``: how many of the k samples give the returned
answer (keys from :mod:`llmdispatch.signals.answers`). Adapted: the k samples are requested
from the answer call itself (``n = k`` at a sampling temperature), so the returned answer is
the first sample and the others vote.
"""

from __future__ import annotations

from typing import Any

from llmdispatch.data.table import OutcomeTable
from llmdispatch.query import Query
from llmdispatch.registry import register
from llmdispatch.signals.answers import agreement
from llmdispatch.signals.base import NAN, Response, Signal, nan_matrix
from llmdispatch.types import FloatMatrix


@register("signal", "self-consistency")
class SelfConsistency(Signal):
    """Share of k sampled answers that agree with the returned answer.

    Parameters
    ----------
    k:
        Number of samples requested (``n`` in the OpenAI API).
    temperature:
        Sampling temperature of the answer call (k > 1 needs diversity).
    """

    def __init__(self, k: int = 5, temperature: float = 0.7) -> None:
        self.k = k
        self.temperature = temperature

    def offline(self, table: OutcomeTable) -> FloatMatrix:
        """All NaN: outcome tables keep one answer per model, not k samples."""
        return nan_matrix(table)

    def request_options(self) -> dict[str, Any]:
        """k samples at the sampling temperature."""
        if self.k < 2:
            raise ValueError(f"self-consistency needs k ≥ 2 samples, got {self.k}")
        return {"n": self.k, "temperature": self.temperature}

    def value(self, query: Query, answer: Response) -> float:
        """Agreement of ``answer.samples`` with ``answer.text`` (the text counts as one vote)."""
        samples = list(answer.samples)
        if not samples:
            return NAN
        if samples[0] != answer.text:
            samples = [answer.text, *samples]
        return agreement(answer.text, samples)

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"k": self.k, "temperature": self.temperature}
