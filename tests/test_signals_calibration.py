"""Calibrators are monotone and bounded, fit what they should, and round-trip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdispatch.signals.calibration import (
    Calibrator,
    ConstantCalibrator,
    IsotonicCalibrator,
    LogisticCalibrator,
    expected_calibration_error,
    make_calibrator,
)

raw_values = st.lists(
    st.floats(min_value=-30, max_value=0, allow_nan=False), min_size=4, max_size=60
)


@settings(max_examples=40, deadline=None)
@given(x=raw_values, data=st.data(), method=st.sampled_from(["isotonic", "logistic"]))
def test_calibration_is_monotone_and_bounded(
    x: list[float], data: st.DataObject, method: str
) -> None:
    y = data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=len(x), max_size=len(x)))
    cal = make_calibrator(method).fit(np.array(x), np.array(y))
    grid = np.concatenate([[-np.inf, -1e9], np.linspace(-40, 5, 300), [np.inf]])
    p = cal.predict(grid)
    assert np.all((p >= 0.0) & (p <= 1.0))
    assert np.all(np.diff(p) >= -1e-12)


@pytest.mark.parametrize("cls", [IsotonicCalibrator, LogisticCalibrator])
def test_calibrators_recover_a_known_curve(cls: type[Calibrator]) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-4, 0, 20_000)
    true_p = 1.0 / (1.0 + np.exp(-(2.0 * x + 3.0)))
    y = (rng.random(len(x)) < true_p).astype(float)
    cal = cls().fit(x, y)
    probe = np.linspace(-3.5, -0.5, 7)
    expected = 1.0 / (1.0 + np.exp(-(2.0 * probe + 3.0)))
    assert np.max(np.abs(cal.predict(probe) - expected)) < 0.06
    assert expected_calibration_error(cal.predict(x), y) < 0.02


def test_logistic_slope_is_never_negative() -> None:
    x = np.linspace(-5, 0, 200)
    y = (x < -2.5).astype(float)  # an inverted signal
    cal = LogisticCalibrator().fit(x, y)
    assert cal.coef_ >= 0.0
    assert np.all(np.diff(cal.predict(x)) >= -1e-12)


def test_nan_stays_nan_and_infinities_are_clipped() -> None:
    cal = IsotonicCalibrator().fit(np.array([-3.0, -2.0, -1.0, 0.0]), np.array([0, 0, 1, 1.0]))
    out = cal.predict(np.array([np.nan, -np.inf, np.inf]))
    assert np.isnan(out[0])
    assert out[1] == 0.0 and out[2] == 1.0
    with pytest.raises(ValueError, match="no pairs"):
        IsotonicCalibrator().fit(np.array([np.nan]), np.array([1.0]))


def test_ece_matches_a_hand_computation() -> None:
    p = np.array([0.05, 0.05, 0.95, 0.95, np.nan])
    y = np.array([0.0, 1.0, 1.0, 1.0, 1.0])
    # bin 0: mean p 0.05, accuracy 0.5 → gap 0.45 on 2 of 4; bin 9: gap 0.05 on 2 of 4.
    assert expected_calibration_error(p, y) == pytest.approx(0.25)
    assert np.isnan(expected_calibration_error(np.array([np.nan]), np.array([1.0])))


@pytest.mark.parametrize("method", ["isotonic", "logistic"])
def test_state_round_trip(method: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    y = (x + rng.normal(size=200) > 0).astype(float)
    cal = make_calibrator(method).fit(x, y)
    again = Calibrator.from_state(cal.get_state())
    np.testing.assert_allclose(again.predict(x), cal.predict(x))
    const = Calibrator.from_state(ConstantCalibrator().fit(x, y).get_state())
    assert const.predict(np.array([0.0]))[0] == pytest.approx(y.mean())


def test_unknown_method_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown calibration 'platt'"):
        make_calibrator("platt")
