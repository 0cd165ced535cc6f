"""A signal calibrated to P(correct), per model and per data-set label.

The same raw value means different things for different models (a 1B model's confident
letter is right less often than GPT-4o's) and different tasks (``cascades9`` stores an
answer log-prob for multiple choice but a self-check log-prob for open questions), so a
calibrator is fitted for every model and, where a group has enough examples, for every
(model, data-set label) pair; the per-model calibrator serves labels it has not seen, and
live requests whose ``Query.metadata`` carries no ``"dataset"``. Labels are the part before
the first ``/`` (``mmlu/anatomy`` → ``mmlu``).

Calibration is fitted only on the table given to :meth:`CalibratedSignal.fit` (a training
split). A signal that learns from scores (the FrugalGPT scorer) is cross-fitted: its raw values
on the training rows come from k models that did not see those rows, so the calibrator learns
how the scorer behaves on new data; the final scorer is then fitted on all rows.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import numpy.typing as npt

from llmdispatch.data.splits import kfold_indices
from llmdispatch.data.table import OutcomeTable
from llmdispatch.query import Query
from llmdispatch.signals.base import Response, Signal
from llmdispatch.signals.calibration import (
    Calibrator,
    ConstantCalibrator,
    expected_calibration_error,
    make_calibrator,
)
from llmdispatch.types import FloatMatrix


def group_label(label: str | None) -> str | None:
    """One top-level data-set label (``mmlu/anatomy`` → ``mmlu``); ``None`` when unlabelled."""
    return str(label).split("/", 1)[0] if label else None


def group_labels(datasets: npt.NDArray[np.str_]) -> npt.NDArray[np.str_]:
    """Top-level data-set labels (``mmlu/anatomy`` → ``mmlu``)."""
    return np.array([str(d).split("/", 1)[0] for d in datasets], dtype=str)


class CalibratedSignal:
    """A raw :class:`~llmdispatch.signals.base.Signal` mapped to P(correct).

    Parameters
    ----------
    signal:
        The raw signal.
    method:
        ``isotonic`` or ``logistic`` (see :mod:`llmdispatch.signals.calibration`).
    by_dataset:
        Fit a calibrator per (model, data-set label) where the group is large enough.
    min_group:
        Least number of (raw value, outcome) pairs to fit a calibrator for a group (a group
        with one outcome only gets its base rate).
    folds:
        Cross-fitting folds for signals that learn.
    """

    def __init__(
        self,
        signal: Signal,
        method: str = "isotonic",
        by_dataset: bool = True,
        min_group: int = 60,
        folds: int = 5,
    ) -> None:
        self.signal = signal
        self.method = method
        self.by_dataset = by_dataset
        self.min_group = min_group
        self.folds = folds

    # ---- fitting ------------------------------------------------------------------------
    def fit(self, table: OutcomeTable) -> Self:
        """Fit the signal (if it learns) and its calibrators on ``table``."""
        make_calibrator(self.method)  # validates the name before any work
        raw = self._training_raw(table)
        groups = group_labels(table.datasets)
        self.models_ = tuple(table.models)
        self.model_cal_: dict[str, Calibrator] = {}
        self.group_cal_: dict[str, dict[str, Calibrator]] = {}
        for j, model in enumerate(table.models):
            x, y = raw[:, j], table.score[:, j]
            if (cal := self._fit_one(x, y)) is not None:
                self.model_cal_[model] = cal
            if not self.by_dataset:
                continue
            for g in np.unique(groups):
                rows = groups == g
                if (cal := self._fit_one(x[rows], y[rows])) is not None:
                    self.group_cal_.setdefault(model, {})[str(g)] = cal
        return self

    def _training_raw(self, table: OutcomeTable) -> FloatMatrix:
        if not self.signal.learns:
            return self.signal.fit(table).offline(table)
        k = min(self.folds, table.n_prompts)
        return self.signal.cross_fit(table, list(kfold_indices(table.n_prompts, k, seed=0)))

    def _fit_one(self, x: FloatMatrix, y: FloatMatrix) -> Calibrator | None:
        ok = ~(np.isnan(x) | np.isnan(y))
        if ok.sum() < self.min_group:
            return None
        if len(np.unique(y[ok] >= 0.5)) < 2:
            # One outcome only (a model always right on a group): the signal cannot rank
            # answers there, and the base rate is the best estimate.
            return ConstantCalibrator().fit(x[ok], y[ok])
        return make_calibrator(self.method).fit(x[ok], y[ok])

    # ---- applying -----------------------------------------------------------------------
    def _calibrator(self, model: str, group: str | None) -> Calibrator | None:
        if group is not None and (cal := self.group_cal_.get(model, {}).get(group)):
            return cal
        return self.model_cal_.get(model)

    def calibrate(
        self, raw: FloatMatrix, datasets: npt.NDArray[np.str_], models: tuple[str, ...]
    ) -> FloatMatrix:
        """P(correct) for raw values of ``models`` on rows labelled ``datasets`` (NaN kept)."""
        self._check_fitted()
        out = np.full(raw.shape, np.nan)
        groups = group_labels(datasets)
        for j, model in enumerate(models):
            for g in np.unique(groups):
                rows = groups == g
                if (cal := self._calibrator(model, str(g))) is not None:
                    out[rows, j] = cal.predict(raw[rows, j])
        return out

    def transform(self, table: OutcomeTable) -> FloatMatrix:
        """P(correct) of every recorded answer of ``table``; NaN where the signal is missing."""
        return self.calibrate(self.signal.offline(table), table.datasets, table.models)

    def probability(self, model: str, raw: float, query: Query | None = None) -> float:
        """P(correct) of one live answer with raw value ``raw``."""
        self._check_fitted()
        group = None if query is None else group_label(query.metadata.get("dataset"))
        cal = self._calibrator(model, group)
        if cal is None or np.isnan(raw):
            return float("nan")
        return float(cal.predict(np.array([raw]))[0])

    def value(self, query: Query, answer: Response) -> float:
        """Calibrated value of an answer whose raw signal needs no further call."""
        return self.probability(answer.model, self.signal.value(query, answer), query)

    def usable(self, table: OutcomeTable) -> bool:
        """Whether any answer of ``table`` gets a calibrated value."""
        return bool(np.isfinite(self.transform(table)).any())

    def report(self, table: OutcomeTable, bins: int = 10) -> dict[str, float]:
        """ECE per model (and ``"all"``) of the calibrated signal on ``table`` (held-out data)."""
        p = self.transform(table)
        out = {
            m: expected_calibration_error(p[:, j], table.score[:, j], bins)
            for j, m in enumerate(table.models)
        }
        out["all"] = expected_calibration_error(p.ravel(), table.score.ravel(), bins)
        return out

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_cal_"):
            raise RuntimeError("CalibratedSignal is not fitted; call fit() first")

    # ---- persistence ----------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Parameters, the signal's state and every calibrator."""
        self._check_fitted()
        return {
            "params": {
                "method": self.method,
                "by_dataset": self.by_dataset,
                "min_group": self.min_group,
                "folds": self.folds,
            },
            "signal": self.signal.node(),
            "models": list(self.models_),
            "model_cal": {m: c.get_state() for m, c in self.model_cal_.items()},
            "group_cal": {
                m: {g: c.get_state() for g, c in d.items()} for m, d in self.group_cal_.items()
            },
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CalibratedSignal:
        """Rebuild a fitted calibrated signal."""
        from llmdispatch.artifacts import restore

        obj = cls(restore(state["signal"]), **state["params"])
        obj.models_ = tuple(state["models"])
        obj.model_cal_ = {m: Calibrator.from_state(s) for m, s in state["model_cal"].items()}
        obj.group_cal_ = {
            m: {g: Calibrator.from_state(s) for g, s in d.items()}
            for m, d in state["group_cal"].items()
        }
        return obj
