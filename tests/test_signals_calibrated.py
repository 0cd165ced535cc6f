"""Per-model and per-data-set calibration of recorded confidences, on planted and real data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from _cascade_tables import make_table, planted_table
from llmdispatch.data import load_table
from llmdispatch.policies.base import AttemptResult
from llmdispatch.query import Query
from llmdispatch.signals.calibrated import CalibratedSignal, group_labels
from llmdispatch.signals.recorded import (
    RecordedConfidence,
    answer_call_cost,
    check_overhead,
    unbundle_checks,
)

DataLookup = Callable[[str], Path]


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


def test_calibration_on_cascades9_train_is_calibrated_on_test(shared_data: DataLookup) -> None:
    table = load_table(shared_data("cascades9"))
    train, test = table.split("train"), table.split("test")
    for method in ("isotonic", "logistic"):
        cal = CalibratedSignal(RecordedConfidence(), method=method).fit(train)
        report = cal.report(test)
        assert report["all"] < 0.08, (method, report)
        p = cal.transform(test)
        assert np.nanmin(p) >= 0.0 and np.nanmax(p) <= 1.0


def test_check_overhead_is_the_self_check_part_of_cascades9_cost(shared_data: DataLookup) -> None:
    table = load_table(shared_data("cascades9"))
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


def test_unbundled_cascades9_bills_checks_only_where_read(shared_data: DataLookup) -> None:
    table = load_table(shared_data("cascades9"))
    unbundled, checks = unbundle_checks(table)
    mc = np.isin(table.datasets, ["mmlu", "medmcqa"])
    np.testing.assert_array_equal(unbundled.cost[mc], table.cost[mc])
    np.testing.assert_allclose(
        unbundled.cost[~mc], answer_call_cost(table)[~mc], rtol=1e-9
    )  # open questions: the answer call alone
    np.testing.assert_allclose(unbundled.cost + checks.cost, table.cost, rtol=1e-12)
    signal = RecordedConfidence(check_costs=checks)
    part = unbundled.take(np.arange(100, 4000, 7))
    extra, latency = signal.offline_overhead(part)
    np.testing.assert_allclose(extra, check_overhead(table.take(np.arange(100, 4000, 7))))
    assert not latency.any()
    assert not RecordedConfidence().offline_overhead(part)[0].any()  # as recorded: billed
    again = RecordedConfidence.from_state(signal.get_state())
    assert again.check_costs is not None
    np.testing.assert_allclose(again.offline_overhead(part)[0], extra)
    with pytest.raises(KeyError, match="no self-check cost"):
        signal.offline_overhead(make_table([[1.0] * 9], models=table.models))


def test_a_group_with_one_outcome_gets_its_base_rate() -> None:
    rng = np.random.default_rng(0)
    n = 300
    labels = np.array(["easy" if i % 2 else "mixed" for i in range(n)])
    conf = rng.uniform(-2, 0, (n, 1))
    score = np.where(labels[:, None] == "easy", 1.0, (rng.random((n, 1)) < 0.5).astype(float))
    cal = CalibratedSignal(RecordedConfidence(), min_group=50).fit(
        make_table(score, confidence=conf, datasets=labels)
    )
    easy = Query(text="q", metadata={"dataset": "easy"})
    assert cal.probability("m0", -1.9, easy) == pytest.approx(1.0)
    assert cal.probability("m0", -0.1, easy) == pytest.approx(1.0)
