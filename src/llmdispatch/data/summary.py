"""What an outcome table holds: counts, per-model means, oracle, missing fields, leaks.

``llmdispatch data info`` prints a :class:`TableSummary`; :func:`find_leaks` and
:func:`drop_leaks` (prompts in both train and test) live in :mod:`llmdispatch.data.leaks`
and are re-exported here.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmdispatch.data.leaks import drop_leaks, find_leaks
from llmdispatch.data.table import NUMERIC_FIELDS, OutcomeTable

__all__ = [
    "DatasetCount",
    "ModelSummary",
    "TableSummary",
    "count_prompts",
    "drop_leaks",
    "find_leaks",
    "summarize_table",
]

#: Best single model: highest mean among models scored on at least this share of prompts
#: (the shared data cards use the same rule).
BEST_MIN_COVERAGE = 0.9


@dataclass(frozen=True)
class ModelSummary:
    """One model's means over the prompts where each value is known."""

    model: str
    coverage: float
    mean_score: float | None
    mean_cost: float | None
    prices_estimated: bool


@dataclass(frozen=True)
class DatasetCount:
    """Prompts of one dataset label (top level, before ``/``) per split, and its leaks."""

    dataset: str
    train: int
    test: int
    leaked: int


@dataclass(frozen=True)
class TableSummary:
    """A table's summary; ``to_dict()`` is its JSON form (``data info --json``)."""

    name: str
    source: str
    prompts: int
    models: int
    load_seconds: float | None
    per_dataset: list[DatasetCount]
    per_model: list[ModelSummary]
    oracle: float | None
    best_single: ModelSummary | None
    missing_share: dict[str, float]
    costs_estimated: bool
    leaked_test_prompts: int
    rows_read: int
    rows_skipped: int
    derived_costs: int
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``per_dataset`` keyed by dataset label)."""
        out = asdict(self)
        out["per_dataset"] = {
            d.dataset: {"train": d.train, "test": d.test, "leaked": d.leaked}
            for d in self.per_dataset
        }
        return out


def _nan_to_none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _per_model(table: OutcomeTable) -> list[ModelSummary]:
    known = table.known
    q, c = table.mean_score(), table.mean_cost()
    return [
        ModelSummary(
            model=name,
            coverage=float(known[:, j].mean()) if table.n_prompts else 0.0,
            mean_score=_nan_to_none(q[j]),
            mean_cost=_nan_to_none(c[j]),
            prices_estimated=table.card(name).prices_estimated,
        )
        for j, name in enumerate(table.models)
    ]


def _per_dataset(table: OutcomeTable, leaks: np.ndarray) -> list[DatasetCount]:
    tops = [str(d).split("/", 1)[0] for d in table.datasets]
    counts = Counter(zip(tops, (str(s) for s in table.splits), strict=True))
    leaked = Counter(tops[i] for i in leaks)
    return [
        DatasetCount(d, counts.get((d, "train"), 0), counts.get((d, "test"), 0), leaked[d])
        for d in sorted(set(tops))
    ]


def _missing_share(table: OutcomeTable) -> dict[str, float]:
    """Share of (prompt, model) cells with no value, per field."""
    missing = {
        f: float(np.isnan(getattr(table, f)).mean()) if table.score.size else 1.0
        for f in NUMERIC_FIELDS
    }
    has_text = np.frompyfunc(lambda r: isinstance(r, str) and bool(r), 1, 1)
    missing["response"] = (
        1.0 - float(has_text(table.responses).astype(bool).mean()) if table.responses.size else 1.0
    )
    return missing


def summarize_table(table: OutcomeTable, load_seconds: float | None = None) -> TableSummary:
    """Summarise ``table``; ``load_seconds`` is how long loading it took, if measured."""
    leaks = find_leaks(table)
    models = _per_model(table)
    eligible = [m for m in models if m.mean_score is not None and m.coverage >= BEST_MIN_COVERAGE]
    best = max(eligible, key=lambda m: m.mean_score or 0.0, default=None)
    report = table.report
    return TableSummary(
        name=table.name,
        source=report.source,
        prompts=table.n_prompts,
        models=table.n_models,
        load_seconds=load_seconds,
        per_dataset=_per_dataset(table, leaks),
        per_model=models,
        oracle=_nan_to_none(table.oracle_score()),
        best_single=best,
        missing_share=_missing_share(table),
        costs_estimated=table.costs_estimated or any(m.prices_estimated for m in models),
        leaked_test_prompts=len(leaks),
        rows_read=report.rows_read,
        rows_skipped=report.rows_skipped,
        derived_costs=report.derived_costs,
        problems=list(report.problems),
        notes=list(report.notes),
    )


def count_prompts(folder: Path) -> tuple[int, int] | None:
    """(prompts, models) of a common-format data-set folder without building the table.

    Counts the non-empty lines of ``outcomes.jsonl[.gz]`` and the entries of ``models.json``;
    ``None`` when the folder is not in the common format (e.g. a RouterBench CSV folder).
    """
    for name in ("outcomes.jsonl.gz", "outcomes.jsonl"):
        path = folder / name
        if path.is_file():
            with gzip.open(path) if name.endswith(".gz") else path.open("rb") as fh:
                prompts = sum(1 for line in fh if line.strip())
            catalog = folder / "models.json"
            models = 0
            if catalog.is_file():
                models = len(json.loads(catalog.read_text(encoding="utf-8")))
            return prompts, models
    return None
