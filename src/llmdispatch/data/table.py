"""The outcome table: prompts x models with score, cost, tokens, latency and confidence."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from llmdispatch.catalog import ModelCard

FloatMatrix = npt.NDArray[np.float64]
IntVector = npt.NDArray[np.intp]
BoolVector = npt.NDArray[np.bool_]

#: Per-row fields (one value per prompt).
ROW_FIELDS = ("ids", "prompts", "systems", "references", "datasets", "splits")
#: The numeric per-(prompt, model) fields, in the order loaders fill them.
NUMERIC_FIELDS = (
    "score",
    "raw_score",
    "cost",
    "tokens_in",
    "tokens_out",
    "latency_ms",
    "confidence",
)


@dataclass
class LoadReport:
    """What a loader saw: rows read, rows and values skipped (with reasons), derived values."""

    source: str = ""
    rows_read: int = 0
    rows_skipped: int = 0
    problems: list[str] = field(default_factory=list)
    derived_costs: int = 0
    notes: list[str] = field(default_factory=list)

    def problem(self, message: str) -> None:
        """Record one problem (file, line and field are part of the message)."""
        self.problems.append(message)


@dataclass(frozen=True, eq=False)
class OutcomeTable:
    """Prompts x models with what each model scored, cost and answered.

    Numeric matrices are ``float64`` of shape ``(n_prompts, n_models)`` with ``NaN`` where a
    value is unknown. ``responses`` is an object matrix of ``str`` or ``None``. Row labels
    (``ids``, ``datasets``, ``splits``) are ``str`` arrays so boolean masks select rows.
    """

    name: str
    ids: npt.NDArray[np.str_]
    prompts: npt.NDArray[np.object_]
    systems: npt.NDArray[np.object_]
    references: npt.NDArray[np.object_]
    datasets: npt.NDArray[np.str_]
    splits: npt.NDArray[np.str_]
    models: tuple[str, ...]
    score: FloatMatrix
    raw_score: FloatMatrix
    cost: FloatMatrix
    tokens_in: FloatMatrix
    tokens_out: FloatMatrix
    latency_ms: FloatMatrix
    confidence: FloatMatrix
    responses: npt.NDArray[np.object_]
    cards: dict[str, ModelCard]
    report: LoadReport = field(default_factory=LoadReport)
    costs_estimated: bool = False

    def __post_init__(self) -> None:
        n, m = len(self.ids), len(self.models)
        for name in NUMERIC_FIELDS:
            arr = getattr(self, name)
            if arr.shape != (n, m):
                raise ValueError(f"{name} has shape {arr.shape}, expected {(n, m)}")
        if self.responses.shape != (n, m):
            raise ValueError(f"responses has shape {self.responses.shape}, expected {(n, m)}")
        for name in ("prompts", "systems", "references", "datasets", "splits"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected {n}")
        if len(set(self.models)) != m:
            raise ValueError("model names must be unique")

    # ---- shape -----------------------------------------------------------------------
    @property
    def n_prompts(self) -> int:
        """Number of prompts (rows)."""
        return len(self.ids)

    @property
    def n_models(self) -> int:
        """Number of models (columns)."""
        return len(self.models)

    def __len__(self) -> int:
        return self.n_prompts

    @property
    def known(self) -> npt.NDArray[np.bool_]:
        """Mask of (prompt, model) pairs with a known score."""
        return ~np.isnan(self.score)

    def model_index(self, name: str) -> int:
        """Column of a model; a clear error lists the models when it is unknown."""
        try:
            return self.models.index(name)
        except ValueError:
            raise KeyError(f"unknown model {name!r}; the table has {list(self.models)}") from None

    def card(self, name: str) -> ModelCard:
        """The model's card, or a bare card when the catalogue does not list it."""
        return self.cards.get(name) or ModelCard(name=name)

    # ---- selection ---------------------------------------------------------------------
    def take(self, rows: IntVector | BoolVector | Sequence[int]) -> OutcomeTable:
        """A table with only these rows (index array or boolean mask)."""
        idx = np.asarray(rows)
        if idx.dtype == np.bool_:
            idx = np.flatnonzero(idx)
        row_fields: dict[str, Any] = {name: getattr(self, name)[idx] for name in ROW_FIELDS}
        mats = {name: getattr(self, name)[idx] for name in (*NUMERIC_FIELDS, "responses")}
        return replace(self, **row_fields, **mats)

    def split(self, name: str) -> OutcomeTable:
        """Rows whose ``split`` label equals ``name`` (``train`` or ``test``)."""
        return self.take(self.splits == name)

    def only_datasets(self, names: Iterable[str]) -> OutcomeTable:
        """Rows whose dataset label is one of ``names`` or starts with ``<name>/``."""
        wanted = set(names)
        tops = np.array([d.split("/", 1)[0] for d in self.datasets], dtype=str)
        mask = np.isin(self.datasets, list(wanted)) | np.isin(tops, list(wanted))
        return self.take(mask)

    def concat(self, other: OutcomeTable) -> OutcomeTable:
        """This table's rows followed by ``other``'s (the same models, in the same order)."""
        if other.models != self.models:
            raise ValueError(
                f"cannot join tables with different models: {list(self.models)} and "
                f"{list(other.models)}"
            )
        joined: dict[str, Any] = {
            name: np.concatenate([getattr(self, name), getattr(other, name)])
            for name in (*ROW_FIELDS, *NUMERIC_FIELDS, "responses")
        }
        return replace(self, **joined)

    def select_models(self, names: Sequence[str]) -> OutcomeTable:
        """Only these model columns, in this order."""
        cols = [self.model_index(n) for n in names]
        mats = {name: getattr(self, name)[:, cols] for name in (*NUMERIC_FIELDS, "responses")}
        cards = {n: self.cards[n] for n in names if n in self.cards}
        return replace(self, models=tuple(names), cards=cards, **mats)

    def blind(self) -> OutcomeTable:
        """The table with scores hidden (NaN): what a policy may see while being judged."""
        hidden = np.full_like(self.score, np.nan)
        return replace(self, score=hidden, raw_score=hidden.copy())

    def with_splits(self, splits: npt.NDArray[np.str_]) -> OutcomeTable:
        """The same table with other split labels."""
        return replace(self, splits=np.asarray(splits, dtype=str))

    # ---- summaries ---------------------------------------------------------------------
    def mean_score(self) -> FloatMatrix:
        """Per-model mean score over the prompts where it is known."""
        return np.asarray(_nanmean_cols(self.score), dtype=np.float64)

    def mean_cost(self) -> FloatMatrix:
        """Per-model mean cost over the prompts where it is known."""
        return np.asarray(_nanmean_cols(self.cost), dtype=np.float64)

    def oracle_score(self) -> float:
        """Mean over prompts of the best known score (prompts with no score are left out)."""
        best = _nanmax_rows(self.score)
        return float(np.nanmean(best)) if np.isfinite(best).any() else float("nan")

    def full_prompts(self) -> list[str]:
        """System prompt and prompt joined, as a model would see them."""
        return [
            f"{s}\n\n{p}" if isinstance(s, str) and s else str(p)
            for s, p in zip(self.systems, self.prompts, strict=True)
        ]


def _nanmean_cols(a: FloatMatrix) -> FloatMatrix:
    counts = np.sum(~np.isnan(a), axis=0)
    sums = np.nansum(a, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _nanmax_rows(a: FloatMatrix) -> FloatMatrix:
    filled = np.where(np.isnan(a), -np.inf, a)
    best = filled.max(axis=1) if a.shape[1] else np.full(a.shape[0], -np.inf)
    return np.where(np.isinf(best), np.nan, best)
