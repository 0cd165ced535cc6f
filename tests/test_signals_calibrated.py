"""Per-model and per-data-set calibration of recorded confidences, on planted and real data."""

from __future__ import annotations

import numpy as np
import pytest

from _cascade_tables import make_table, planted_table
from llmdispatch.data import load_table
from llmdispatch.policies.base import AttemptResult
from llmdispatch.query import Query
from llmdispatch.signals.calibrated import CalibratedSignal, group_labels
from llmdispatch.signals.recorded import RecordedConfidence, answer_call_cost, check_overhead


def test_groups_get_their_own_calibrator_and_unknown_groups_fall_back() -> None:
    rng = np.random.default_rng(0)
    n = 400
    conf = rng.uniform(-2, 0, (n, 1))
    labels = np.array(["easy/x" if i % 2 else "hard" for i in range(n)])
    # Same raw confidence, different meaning: "easy" answers are right far more often.
    p_true = np.where(labels == "easy/x", 0.9, 0.2)
    score = (rng.random((n, 1)) < p_true[:, None]).astype(float)
    table = make_table(score, confidence=conf, datasets=labels)
    cal = CalibratedSignal(RecordedConfidence(), min_group=50).fit(table)
    p = cal.transform(table)[:, 0]
    assert p[labels == "easy/x"].mean() > 0.75
    assert p[labels == "hard"].mean() < 0.35
    pooled = cal.probability("m0", -1.0, Query(text="q"))
    assert 0.4 < pooled < 0.7  # the per-model calibrator serves queries without a label
    easy = cal.probability("m0", -1.0, Query(text="q", metadata={"dataset": "easy"}))
    assert easy > 0.75
    assert list(group_labels(np.array(["a/b/c", "d"]))) == ["a", "d"]


def test_missing_confidence_stays_missing_and_small_groups_are_skipped() -> None:
    score = np.array([[1.0, 0.0]] * 30 + [[0.0, 1.0]] * 30)
    conf = np.full(score.shape, np.nan)
    conf[:, 0] = np.linspace(-1, 0, 60)
    table = make_table(score, confidence=conf)
    cal = CalibratedSignal(RecordedConfidence(), min_group=20).fit(table)
    p = cal.transform(table)
    assert np.isnan(p[:, 1]).all()  # no signal for m1 at all
    assert np.isfinite(p[:, 0]).all()
    assert cal.usable(table)
    tiny = CalibratedSignal(RecordedConfidence(), min_group=1000).fit(table)
    assert not tiny.usable(table)


def test_recorded_confidence_live_reads_the_result_then_logprobs() -> None:
    sig = RecordedConfidence()
    q = Query(text="q")
    assert sig.value(q, AttemptResult(model="m", text="A", confidence=-0.25)) == -0.25
    fallback = AttemptResult(model="m", text="A", token_logprobs=(-0.5, -1.5))
    assert sig.value(q, fallback) == pytest.approx(-1.0)
    assert np.isnan(RecordedConfidence(logprob_fallback=False).value(q, fallback))
    assert sig.request_options() == {"logprobs": True}


def test_calibration_on_cascades9_train_is_calibrated_on_test() -> None:
    table = load_table("cascades9")
    train, test = table.split("train"), table.split("test")
    for method in ("isotonic", "logistic"):
        cal = CalibratedSignal(RecordedConfidence(), method=method).fit(train)
        report = cal.report(test)
        assert report["all"] < 0.08, (method, report)
        p = cal.transform(test)
        assert np.nanmin(p) >= 0.0 and np.nanmax(p) <= 1.0


def test_check_overhead_is_the_self_check_part_of_cascades9_cost() -> None:
    table = load_table("cascades9")
    over = check_overhead(table)
    mc = np.isin(table.datasets, ["mmlu", "medmcqa"])
    assert (over[mc] == 0).all()  # one answer call: no self-check billed
    assert (over[~mc] > 0).mean() > 0.99  # open questions billed a self-check
    np.testing.assert_allclose(
        answer_call_cost(table)[mc], table.cost[mc], rtol=1e-9
    )  # the card's prices reproduce the recorded cost of a single call


def test_calibrated_signal_state_round_trips() -> None:
    table = planted_table(300)
    for method in ("isotonic", "logistic"):
        cal = CalibratedSignal(RecordedConfidence(), method=method).fit(table)
        again = CalibratedSignal.from_state(cal.get_state())
        np.testing.assert_allclose(again.transform(table), cal.transform(table))
