"""Expected cost of a query on each model, known before any model is called.

``Ĉ[x, m] = s_m · (t_in(x, m) · p_in(m) + E[t_out | m] · p_out(m)) / 10⁶``

``t_in`` is the prompt's token count (the table's recorded count when a replayed prompt has
one: tokenising is free before the call; else about four characters a token), ``E[t_out | m]``
the model's mean completion length on the training table, ``p_in``/``p_out`` its card prices
per million tokens. ``s_m`` rescales the formula to the training table's recorded costs (mean
recorded ÷ mean formula), so data sets whose costs were estimated another way (e.g. prompt
tokens × input price only) are matched. A model without prices costs its training mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from llmdispatch.catalog import ModelCard
from llmdispatch.data.table import OutcomeTable
from llmdispatch.query import Query
from llmdispatch.types import FloatMatrix, FloatVector

CHARS_PER_TOKEN = 4.0


def _nanmean(a: FloatMatrix, axis: int = 0) -> FloatVector:
    known = ~np.isnan(a)
    counts = known.sum(axis=axis)
    sums = np.where(known, a, 0.0).sum(axis=axis)
    return np.asarray(np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), np.float64)


class CostModel:
    """Per-model expected cost of a query, fitted on a training table."""

    def fit(self, table: OutcomeTable) -> Self:
        """Learn completion lengths, prices and the rescaling from ``table``."""
        self.models_ = tuple(table.models)
        m = table.n_models
        self.price_in_ = np.full(m, np.nan)
        self.price_out_ = np.full(m, np.nan)
        for j, name in enumerate(table.models):
            card = table.card(name)
            if card.price_in_per_mtok is not None and card.price_out_per_mtok is not None:
                self.price_in_[j] = card.price_in_per_mtok
                self.price_out_[j] = card.price_out_per_mtok
        self.mean_cost_ = np.nan_to_num(_nanmean(table.cost), nan=0.0)
        self.mean_tokens_out_ = np.nan_to_num(_nanmean(table.tokens_out), nan=0.0)
        tin = self._tokens_in_table(table)
        formula = self._formula(tin, np.ones(m))
        self.scale_ = np.ones(m)
        for j in range(m):
            both = ~np.isnan(table.cost[:, j]) & np.isfinite(formula[:, j])
            denom = float(formula[both, j].sum())
            if both.any() and denom > 0:
                self.scale_[j] = float(table.cost[both, j].sum()) / denom
        return self

    # ---- prediction ----------------------------------------------------------------------
    @property
    def cost_scale(self) -> float:
        """``c̄``, the largest per-model mean cost: the unit that makes a router's λ unit-free."""
        return float(max(self.mean_cost_.max(), 1e-12))

    def _formula(self, tokens_in: FloatMatrix, scale: FloatVector) -> FloatMatrix:
        raw = (tokens_in * self.price_in_ + self.mean_tokens_out_ * self.price_out_) / 1e6
        return np.asarray(raw * scale, dtype=np.float64)

    def _expected(self, tokens_in: FloatMatrix) -> FloatMatrix:
        est = self._formula(tokens_in, self.scale_)
        return np.asarray(np.where(np.isfinite(est), est, self.mean_cost_), dtype=np.float64)

    @staticmethod
    def _tokens_in_table(table: OutcomeTable) -> FloatMatrix:
        fallback = np.array(
            [max(1.0, len(t) / CHARS_PER_TOKEN) for t in table.full_prompts()], dtype=np.float64
        )
        return np.where(np.isnan(table.tokens_in), fallback[:, None], table.tokens_in)

    def for_table(self, table: OutcomeTable) -> FloatMatrix:
        """``Ĉ`` for every prompt of a (blinded) table, columns in the table's model order."""
        self._check_models(table.models)
        return self._expected(self._tokens_in_table(table))

    def for_queries(self, queries: Sequence[Query]) -> FloatMatrix:
        """``Ĉ`` for live queries."""
        tin = np.array([[float(q.estimated_tokens_in)] for q in queries], dtype=np.float64)
        return self._expected(np.broadcast_to(tin, (len(queries), len(self.models_))))

    def for_query(self, query: Query) -> FloatVector:
        """``Ĉ`` of one live query: the row of :meth:`for_queries`, with less overhead."""
        tokens_in = float(query.estimated_tokens_in)
        est = self._formula(np.full(len(self.models_), tokens_in), self.scale_)
        return np.asarray(np.where(np.isfinite(est), est, self.mean_cost_), dtype=np.float64)

    def _check_models(self, models: Sequence[str]) -> None:
        if tuple(models) != self.models_:
            raise ValueError(
                f"the table's models {list(models)} differ from the fitted ones "
                f"{list(self.models_)}"
            )

    # ---- state ---------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Arrays of the fitted cost model."""
        return {
            "models": list(self.models_),
            "price_in": self.price_in_,
            "price_out": self.price_out_,
            "mean_cost": self.mean_cost_,
            "mean_tokens_out": self.mean_tokens_out_,
            "scale": self.scale_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CostModel:
        """Rebuild from :meth:`get_state`."""
        obj = cls()
        obj.models_ = tuple(state["models"])
        for name in ("price_in", "price_out", "mean_cost", "mean_tokens_out", "scale"):
            setattr(obj, f"{name}_", np.asarray(state[name], dtype=np.float64))
        return obj


def card_fits(card: ModelCard, query: Query) -> str | None:
    """Why a model cannot take this query (modality, context window), or ``None``."""
    for modality in sorted(query.modalities):
        if not card.accepts(modality):
            return f"does not accept {modality} input"
    if card.context_window is not None and query.estimated_tokens_in > card.context_window:
        return (
            f"prompt of ~{query.estimated_tokens_in} tokens exceeds its "
            f"{card.context_window}-token context window"
        )
    return None
