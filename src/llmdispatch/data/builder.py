"""Assemble an :class:`OutcomeTable` from per-prompt records, validating as it goes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from llmdispatch.catalog import ModelCard
from llmdispatch.data.table import NUMERIC_FIELDS, LoadReport, OutcomeTable

#: JSON key of each numeric field in the common format.
JSON_KEYS = {
    "score": "score",
    "raw_score": "raw_score",
    "cost": "cost_usd",
    "tokens_in": "tokens_in",
    "tokens_out": "tokens_out",
    "latency_ms": "latency_ms",
    "confidence": "confidence",
}
KNOWN_OUTCOME_KEYS = {*JSON_KEYS.values(), "response"}


class DataError(ValueError):
    """Input that cannot be read as an outcome table; the message names file, line and field."""


class TableBuilder:
    """Collects prompts and per-model outcomes, then builds the arrays in one pass."""

    def __init__(self, name: str, source: str, cards: Mapping[str, ModelCard]) -> None:
        self.name = name
        self.report = LoadReport(source=source)
        self.cards = dict(cards)
        self._rows: list[tuple[str, str, str | None, str | None, str, str]] = []
        self._outcomes: list[Mapping[str, Mapping[str, Any]]] = []
        self._seen_ids: set[str] = set()

    def add(
        self,
        *,
        where: str,
        id: str,
        prompt: str,
        system: str | None,
        reference: str | None,
        dataset: str,
        split: str,
        outcomes: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """Add one prompt; ``where`` (``file:line``) prefixes every problem reported."""
        if id in self._seen_ids:
            raise DataError(f"{where}: field 'id': duplicate id {id!r}")
        self._seen_ids.add(id)
        clean: dict[str, dict[str, Any]] = {}
        for model, result in outcomes.items():
            if not isinstance(result, Mapping):
                raise DataError(f"{where}: field 'outcomes.{model}': expected an object")
            clean[model] = self._check_outcome(where, model, result)
        self._rows.append((id, prompt, system, reference, dataset, split))
        self._outcomes.append(clean)

    def _check_outcome(self, where: str, model: str, result: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in result.items():
            loc = f"{where}: field 'outcomes.{model}.{key}'"
            if key == "response":
                if value is not None and not isinstance(value, str):
                    raise DataError(f"{loc}: expected a string, got {type(value).__name__}")
                out[key] = value
                continue
            if key not in KNOWN_OUTCOME_KEYS:
                self.report.problem(f"{loc}: unknown field ignored")
                continue
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise DataError(f"{loc}: expected a number, got {type(value).__name__} {value!r}")
            number = float(value)
            if math.isnan(number) or math.isinf(number):
                raise DataError(f"{loc}: not a finite number")
            if key == "score" and not 0.0 <= number <= 1.0:
                raise DataError(f"{loc}: score {number} is outside [0, 1]")
            if key in ("cost_usd", "tokens_in", "tokens_out", "latency_ms") and number < 0:
                raise DataError(f"{loc}: negative value {number}")
            out[key] = number
        return out

    def build(self, *, costs_estimated: bool = False) -> OutcomeTable:
        """The finished table. Models seen in no row's outcomes are an error."""
        models = list(self.cards)
        seen = {m for o in self._outcomes for m in o}
        extra = sorted(seen - set(models))
        models += extra
        if extra:
            self.report.notes.append(f"models without a catalogue entry: {', '.join(extra)}")
        empty = [m for m in models if m not in seen]
        if empty:
            raise DataError(
                f"{self.report.source}: model(s) with no rows: {', '.join(empty)} "
                "(listed in models.json but absent from every outcome)"
            )
        col = {m: j for j, m in enumerate(models)}
        n, m = len(self._rows), len(models)
        mats = {f: np.full((n, m), np.nan) for f in NUMERIC_FIELDS}
        responses = np.full((n, m), None, dtype=object)
        keyed = [(f, JSON_KEYS[f], mats[f]) for f in NUMERIC_FIELDS]
        for i, outcome in enumerate(self._outcomes):
            for model, result in outcome.items():
                j = col[model]
                for _, key, mat in keyed:
                    value = result.get(key)
                    if value is not None:
                        mat[i, j] = value
                responses[i, j] = result.get("response")
        no_score = np.isnan(mats["score"]) & ~np.isnan(mats["cost"])
        if no_score.any():
            self.report.notes.append(
                f"{int(no_score.sum())} outcomes have a cost but no score (treated as unknown)"
            )
        self._derive_costs(models, mats)
        columns = list(zip(*self._rows, strict=True)) if n else [() for _ in range(6)]
        ids, prompts, systems, refs, datasets, splits = columns
        return OutcomeTable(
            name=self.name,
            ids=np.asarray(ids, dtype=str),
            prompts=np.asarray(prompts, dtype=object),
            systems=np.asarray(systems, dtype=object),
            references=np.asarray(refs, dtype=object),
            datasets=np.asarray(datasets, dtype=str),
            splits=np.asarray(splits, dtype=str),
            models=tuple(models),
            responses=responses,
            cards={k: v for k, v in self.cards.items() if k in col},
            report=self.report,
            costs_estimated=costs_estimated,
            **mats,
        )

    def _derive_costs(self, models: list[str], mats: dict[str, np.ndarray]) -> None:
        """Fill unknown cost from tokens x price where both are known."""
        cost, t_in, t_out = mats["cost"], mats["tokens_in"], mats["tokens_out"]
        for j, model in enumerate(models):
            card = self.cards.get(model)
            if card is None or card.price_in_per_mtok is None or card.price_out_per_mtok is None:
                continue
            todo = np.isnan(cost[:, j]) & ~np.isnan(t_in[:, j])
            if not todo.any():
                continue
            out = np.nan_to_num(t_out[todo, j], nan=0.0)
            cost[todo, j] = (
                t_in[todo, j] * card.price_in_per_mtok + out * card.price_out_per_mtok
            ) / 1e6
            self.report.derived_costs += int(todo.sum())
