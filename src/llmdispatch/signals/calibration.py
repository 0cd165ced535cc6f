"""Calibrators: raw signal → P(correct), monotone and bounded, plus calibration error.

Two maps, both non-decreasing in the raw value and bounded in [0, 1]:

* isotonic regression (Zadrozny & Elkan, KDD 2002): the non-decreasing step function that
  minimises squared error, stored as its breakpoints and evaluated by linear interpolation
  (flat beyond the ends);
* logistic ("Platt scaling", Platt 1999): ``p = σ(a·x + b)`` with ``a ≥ 0`` enforced, so the
  map stays monotone even when the signal is uninformative.

Raw values of −inf (a log-prob of an impossible token) are clipped to :data:`RAW_FLOOR`;
NaN stays NaN (the caller decides what a missing signal means).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Self

import numpy as np
from scipy.special import expit

from llmdispatch.types import FloatVector

#: Raw values below this are treated as this (log-probs of −inf and their neighbours).
RAW_FLOOR = -50.0


def _clean(x: FloatVector) -> FloatVector:
    return np.clip(np.asarray(x, dtype=np.float64), RAW_FLOOR, -RAW_FLOOR)


class Calibrator(ABC):
    """A monotone map from raw signal values to probabilities of being correct."""

    kind: str = ""

    @abstractmethod
    def fit(self, x: FloatVector, y: FloatVector) -> Self:
        """Fit on finite-or-infinite raw values ``x`` and 0/1 (or [0, 1]) outcomes ``y``."""

    @abstractmethod
    def predict(self, x: FloatVector) -> FloatVector:
        """P(correct) for raw values ``x``; NaN in, NaN out."""

    @abstractmethod
    def get_state(self) -> dict[str, Any]:
        """Fitted state (arrays allowed)."""

    @staticmethod
    def from_state(state: dict[str, Any]) -> Calibrator:
        """Rebuild either calibrator from its state."""
        kind = state["kind"]
        if kind == "isotonic":
            iso = IsotonicCalibrator()
            iso.x_ = np.asarray(state["x"], dtype=np.float64)
            iso.y_ = np.asarray(state["y"], dtype=np.float64)
            return iso
        if kind == "logistic":
            log = LogisticCalibrator()
            log.coef_, log.intercept_ = float(state["coef"]), float(state["intercept"])
            return log
        if kind == "constant":
            return ConstantCalibrator(float(state["p"]))
        raise ValueError(f"unknown calibrator kind {kind!r}")


class IsotonicCalibrator(Calibrator):
    """Isotonic regression of the outcome on the raw value (Zadrozny & Elkan, 2002)."""

    kind = "isotonic"

    def fit(self, x: FloatVector, y: FloatVector) -> Self:
        """Fit the non-decreasing step function (pool-adjacent-violators)."""
        from sklearn.isotonic import IsotonicRegression

        xs, ys = _check(x, y)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(xs, ys)
        self.x_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y_ = np.clip(np.asarray(iso.y_thresholds_, dtype=np.float64), 0.0, 1.0)
        return self

    def predict(self, x: FloatVector) -> FloatVector:
        """Interpolate between breakpoints; constant beyond the fitted range."""
        x = np.asarray(x, dtype=np.float64)
        out = np.interp(_clean(np.nan_to_num(x, nan=0.0)), self.x_, self.y_)
        return np.where(np.isnan(x), np.nan, out)

    def get_state(self) -> dict[str, Any]:
        """Breakpoints of the step function."""
        return {"kind": self.kind, "x": self.x_, "y": self.y_}


class LogisticCalibrator(Calibrator):
    """Platt scaling ``p = σ(a·x + b)`` with ``a ≥ 0`` (Platt, 1999)."""

    kind = "logistic"

    def __init__(self, regularization: float = 1e-3) -> None:
        self.regularization = regularization

    def fit(self, x: FloatVector, y: FloatVector) -> Self:
        """Maximum likelihood with a small L2 penalty; ``a`` is clipped at zero."""
        from scipy.optimize import minimize

        xs, ys = _check(x, y)
        mu, sd = float(xs.mean()), float(xs.std()) or 1.0
        z = (xs - mu) / sd
        lam = self.regularization

        def loss(w: FloatVector) -> tuple[float, FloatVector]:
            t = w[0] * z + w[1]
            p = expit(t)
            nll = np.mean(np.logaddexp(0.0, t) - ys * t) + lam * w[0] ** 2
            g = p - ys
            return float(nll), np.array([np.mean(g * z) + 2 * lam * w[0], np.mean(g)])

        prior = float(np.clip(ys.mean(), 1e-3, 1 - 1e-3))
        w0 = np.array([0.0, np.log(prior / (1 - prior))])
        res = minimize(loss, w0, jac=True, method="L-BFGS-B", bounds=[(0.0, None), (None, None)])
        self.coef_ = float(res.x[0] / sd)
        self.intercept_ = float(res.x[1] - res.x[0] * mu / sd)
        return self

    def predict(self, x: FloatVector) -> FloatVector:
        """σ(a·x + b); NaN in, NaN out."""
        x = np.asarray(x, dtype=np.float64)
        t = self.coef_ * _clean(np.nan_to_num(x, nan=0.0)) + self.intercept_
        return np.where(np.isnan(x), np.nan, expit(t))

    def get_state(self) -> dict[str, Any]:
        """Slope and intercept on the raw scale."""
        return {"kind": self.kind, "coef": self.coef_, "intercept": self.intercept_}


class ConstantCalibrator(Calibrator):
    """The base rate, whatever the raw value: used where a signal cannot be fitted."""

    kind = "constant"

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def fit(self, x: FloatVector, y: FloatVector) -> Self:
        """The mean outcome."""
        y = np.asarray(y, dtype=np.float64)
        self.p = float(np.clip(y.mean(), 0.0, 1.0)) if len(y) else 0.5
        return self

    def predict(self, x: FloatVector) -> FloatVector:
        """``p`` for every finite input; NaN in, NaN out."""
        x = np.asarray(x, dtype=np.float64)
        return np.where(np.isnan(x), np.nan, self.p)

    def get_state(self) -> dict[str, Any]:
        """The base rate."""
        return {"kind": self.kind, "p": self.p}


CALIBRATORS: dict[str, type[Calibrator]] = {
    "isotonic": IsotonicCalibrator,
    "logistic": LogisticCalibrator,
}


def make_calibrator(method: str) -> Calibrator:
    """A fresh calibrator by name (``isotonic`` or ``logistic``)."""
    try:
        return CALIBRATORS[method]()
    except KeyError:
        raise ValueError(
            f"unknown calibration {method!r}; use one of {sorted(CALIBRATORS)}"
        ) from None


def expected_calibration_error(p: FloatVector, y: FloatVector, bins: int = 10) -> float:
    """ECE: Σ_b (n_b / n)·|mean(y)_b − mean(p)_b| over equal-width probability bins.

    Pairs with NaN in ``p`` or ``y`` are left out; NaN when nothing is left.
    """
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = ~(np.isnan(p) | np.isnan(y))
    p, y = p[ok], y[ok]
    if not len(p):
        return float("nan")
    idx = np.minimum((np.clip(p, 0.0, 1.0) * bins).astype(int), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    gap = np.abs(
        np.bincount(idx, weights=y, minlength=bins) - np.bincount(idx, weights=p, minlength=bins)
    )
    return float(gap.sum() / counts.sum())


def _check(x: FloatVector, y: FloatVector) -> tuple[FloatVector, FloatVector]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    ok = ~(np.isnan(x) | np.isnan(y))
    if not ok.any():
        raise ValueError("no pairs with both a raw value and an outcome to calibrate on")
    return _clean(x[ok]), np.clip(y[ok], 0.0, 1.0)
