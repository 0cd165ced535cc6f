"""Pairwise comparisons derived from outcome tables.

Two sources give the same representation:

* **score tables** — on each prompt, every pair of models whose scores are both known is a
  game: the higher score wins. Ties count as half a win for each side (``ties="half"``) or
  are skipped (``ties="skip"``). Each game weighs 1 (``weighting="unit"``) or ``|Δscore|``
  (``weighting="margin"``, so ties weigh nothing whatever ``ties`` says).
* **preference tables against a fixed reference** — ``alpaca-eval``'s score is
  ``P(model beats gpt4_1106_preview)`` from a judge's weighted preference. That is itself a
  soft comparison, so each prompt gives one game ``(m, reference)`` per model with soft
  outcome ``score[i, m]`` and weight 1; the reference's own (constant 0.5) score is unused.

Games are stored per prompt over *unordered* model pairs ``(first[p], second[p])``:
``wins[i, p]`` is the weighted win of ``first`` over ``second`` on prompt ``i`` and
``totals[i, p]`` the weight of that game (``wins ≤ totals``). Any weighted sum over prompts
(``W @ wins``, ``W @ totals``) is again a valid set of soft comparisons, which is how the
local estimators weigh a query's neighbours. Unknown (NaN) scores create no game.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from llmdispatch.data.table import OutcomeTable
from llmdispatch.types import FloatMatrix, IntVector

Source = Literal["auto", "scores", "reference"]
Ties = Literal["half", "skip"]
Weighting = Literal["unit", "margin"]

_TIE_TOL = 1e-12


@dataclass(frozen=True)
class PairwiseData:
    """Per-prompt soft games over unordered model pairs (see the module docstring)."""

    n_models: int
    first: IntVector
    second: IntVector
    wins: FloatMatrix
    totals: FloatMatrix
    source: str = "scores"
    reference: int = -1

    @property
    def n_prompts(self) -> int:
        """Number of prompts (rows of ``wins``)."""
        return int(self.wins.shape[0])

    @property
    def n_pairs(self) -> int:
        """Number of unordered model pairs that ever meet."""
        return len(self.first)

    def rows(self, idx: IntVector) -> PairwiseData:
        """The games of these prompts only."""
        return PairwiseData(
            self.n_models,
            self.first,
            self.second,
            self.wins[idx],
            self.totals[idx],
            self.source,
            self.reference,
        )

    def get_state(self) -> dict[str, Any]:
        """JSON + arrays."""
        return {
            "n_models": self.n_models,
            "first": self.first,
            "second": self.second,
            "wins": self.wins,
            "totals": self.totals,
            "source": self.source,
            "reference": self.reference,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PairwiseData:
        """Inverse of :meth:`get_state`."""
        return cls(
            int(state["n_models"]),
            np.asarray(state["first"], dtype=np.intp),
            np.asarray(state["second"], dtype=np.intp),
            np.asarray(state["wins"], dtype=np.float64),
            np.asarray(state["totals"], dtype=np.float64),
            str(state["source"]),
            int(state["reference"]),
        )


def find_reference(score: FloatMatrix, models: tuple[str, ...]) -> int:
    """Index of the one model scored exactly 0.5 on every prompt it has, else -1.

    In a preference table the reference's score against itself is a tie by construction
    (``alpaca-eval``: ``gpt4_1106_preview`` is 0.5 everywhere); no score table has such a
    column unless every answer of a model was judged a tie.
    """
    known = ~np.isnan(score)
    half = np.abs(np.where(known, score, 0.5) - 0.5) < 1e-9
    candidates = [j for j in range(len(models)) if known[:, j].any() and half[:, j].all()]
    return candidates[0] if len(candidates) == 1 else -1


def from_scores(
    score: FloatMatrix, *, ties: Ties = "half", weighting: Weighting = "unit"
) -> PairwiseData:
    """Games between every pair of models with known scores on the same prompt."""
    _check_option("ties", ties, ("half", "skip"))
    _check_option("weighting", weighting, ("unit", "margin"))
    m = score.shape[1]
    first, second = (np.asarray(a, dtype=np.intp) for a in np.triu_indices(m, k=1))
    a, b = score[:, first], score[:, second]
    known = ~(np.isnan(a) | np.isnan(b))
    diff = np.where(known, a - b, 0.0)
    tie = known & (np.abs(diff) <= _TIE_TOL)
    decisive = known & ~tie
    if weighting == "margin":
        totals = np.abs(diff) * decisive
        wins = totals * (diff > 0)
    else:
        totals = decisive.astype(np.float64)
        if ties == "half":
            totals = totals + tie
        wins = (decisive & (diff > 0)) + 0.5 * (tie if ties == "half" else 0.0)
    keep = totals.sum(axis=0) > 0
    return PairwiseData(
        m, first[keep], second[keep], np.asarray(wins, np.float64)[:, keep], totals[:, keep]
    )


def from_reference(score: FloatMatrix, reference: int) -> PairwiseData:
    """Soft games ``(m, reference)`` with outcome ``score[i, m] = P(m beats reference)``."""
    m = score.shape[1]
    if not 0 <= reference < m:
        raise ValueError(f"reference column {reference} is out of range for {m} models")
    others = np.array([j for j in range(m) if j != reference], dtype=np.intp)
    known = ~np.isnan(score[:, others])
    wins = np.where(known, np.clip(score[:, others], 0.0, 1.0), 0.0)
    totals = known.astype(np.float64)
    keep = totals.sum(axis=0) > 0
    ref = np.full(int(keep.sum()), reference, dtype=np.intp)
    return PairwiseData(
        m, others[keep], ref, wins[:, keep], totals[:, keep], "reference", reference
    )


def pairwise_from_table(
    table: OutcomeTable,
    *,
    source: Source = "auto",
    reference: str | None = None,
    ties: Ties = "half",
    weighting: Weighting = "unit",
) -> PairwiseData:
    """Games from a table: against a reference when it is a preference table, else by score.

    ``source="auto"`` uses the reference model when ``reference`` names one or when exactly
    one model is scored 0.5 on every prompt (:func:`find_reference`); otherwise scores.
    """
    _check_option("source", source, ("auto", "scores", "reference"))
    score = np.asarray(table.score, dtype=np.float64)
    if reference is not None:
        ref = table.model_index(reference)
    elif source == "scores":
        ref = -1
    else:
        ref = find_reference(score, table.models)
        if ref < 0 and source == "reference":
            raise ValueError(
                f"table {table.name!r} has no reference model (a column scored 0.5 on every "
                "prompt); name one with reference=..."
            )
    if source != "scores" and ref >= 0:
        data = from_reference(score, ref)
    else:
        data = from_scores(score, ties=ties, weighting=weighting)
    if data.n_pairs == 0:
        raise ValueError(f"table {table.name!r} yields no pairwise comparisons")
    return data


def pair_accuracy(strength: FloatMatrix, data: PairwiseData) -> float:
    """Weighted share of decisive games whose winner has the higher predicted strength.

    ``strength`` is ``(n_prompts, n_models)``; predicted ties count as half right. Used to
    choose hyperparameters on held-out prompts: it scores the whole ranking, which is what
    routing at any cost trade-off needs, and ignores the scale of the strengths.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        outcome = np.where(data.totals > 0, data.wins / np.maximum(data.totals, 1e-300), 0.5)
    sign = np.sign(outcome - 0.5)
    weight = data.totals * np.abs(outcome - 0.5)
    pred = np.sign(strength[:, data.first] - strength[:, data.second])
    right = np.where(pred == 0, 0.5, (pred == sign).astype(np.float64))
    total = float(weight.sum())
    return float((right * weight).sum() / total) if total > 0 else 0.5


def _check_option(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
