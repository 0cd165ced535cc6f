"""The FrugalGPT-style learned scorer learns a planted signal and helps on real responses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from _cascade_tables import make_table
from llmdispatch.data import load_table
from llmdispatch.policies.base import AttemptResult
from llmdispatch.query import Query
from llmdispatch.signals.calibrated import CalibratedSignal
from llmdispatch.signals.scorer import LearnedScorer

DataLookup = Callable[[str], Path]


def _planted(n: int, seed: int) -> tuple[np.ndarray, list[list[str]]]:
    rng = np.random.default_rng(seed)
    score = (rng.random((n, 2)) < 0.5).astype(float)
    words = {1.0: ["certainly", "precisely"], 0.0: ["perhaps", "unsure"]}
    responses = [
        [f"{rng.choice(words[score[i, j]])} answer {rng.integers(100)}" for j in range(2)]
        for i in range(n)
    ]
    return score, responses


def test_scorer_learns_a_planted_word() -> None:
    score, responses = _planted(300, 0)
    table = make_table(score, responses=responses)
    scorer = LearnedScorer(n_features=2**12).fit(table)
    test_score, test_responses = _planted(200, 1)
    test = make_table(test_score, responses=test_responses)
    p = scorer.offline(test)
    assert roc_auc_score(test_score.ravel(), p.ravel()) > 0.95
    live = scorer.value(Query(text="prompt 0"), AttemptResult(model="m0", text="certainly 7"))
    assert live > 0.7
    again = LearnedScorer.from_state(scorer.get_state())
    np.testing.assert_allclose(again.offline(test), p)


def test_scorer_leaves_missing_responses_missing_and_needs_data() -> None:
    score, responses = _planted(40, 2)
    responses[0][1] = None  # type: ignore[call-overload]
    table = make_table(score, responses=responses)
    p = LearnedScorer(n_features=2**10).fit(table).offline(table)
    assert np.isnan(p[0, 1]) and np.isfinite(p[0, 0])
    with pytest.raises(ValueError, match="too few"):
        LearnedScorer().fit(table.take(np.arange(3)))
    with pytest.raises(RuntimeError, match="not fitted"):
        LearnedScorer().offline(table)


def test_scorer_beats_chance_on_real_responses_once_calibrated(shared_data: DataLookup) -> None:
    table = load_table(shared_data("cascades9")).only_datasets(["triviaqa", "truthfulqa"])
    rng = np.random.default_rng(0)
    rows = rng.permutation(table.n_prompts)
    train, test = table.take(rows[:300]), table.take(rows[300:600])
    cal = CalibratedSignal(LearnedScorer(n_features=2**12), folds=3).fit(train)
    p = cal.transform(test)
    ok = ~np.isnan(p)
    assert roc_auc_score(test.score[ok], p[ok]) > 0.6
    assert cal.report(test)["all"] < 0.1


def test_cross_fitting_hashes_once_and_gives_the_per_fold_values() -> None:
    from llmdispatch.data.splits import kfold_indices
    from llmdispatch.signals.base import Signal

    score, responses = _planted(120, 3)
    responses[5][0] = None  # type: ignore[call-overload]
    score[7, 1] = np.nan  # a response without a score: valued, not learned from
    table = make_table(score, responses=responses)
    folds = list(kfold_indices(table.n_prompts, 5, seed=0))
    shared, per_fold = LearnedScorer(n_features=2**10), LearnedScorer(n_features=2**10)
    got = shared.cross_fit(table, folds)
    want = Signal.cross_fit(per_fold, table, folds)  # a fitted copy per fold, as the base does
    np.testing.assert_array_equal(got, want)  # bit for bit, NaN where there is no response
    assert np.isnan(got[5, 0]) and np.isfinite(got[7, 1])
    np.testing.assert_array_equal(shared.coef_, per_fold.coef_)
