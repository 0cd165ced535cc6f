"""Learn-then-test and the guaranteed cascade: valid p-values, and the bound holds w.p. ≥ 1 − δ."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from _cascade_tables import planted_table
from llmdispatch.artifacts import load_artifact, save_artifact
from llmdispatch.data import load_table
from llmdispatch.policies.guaranteed import GuaranteedCascade, check_guarantee
from llmdispatch.policies.risk_control import fixed_sequence, learn_then_test, risk_pvalue
from llmdispatch.query import Query

DataLookup = Callable[[str], Path]


def test_binary_pvalue_is_valid_at_the_boundary_of_the_null() -> None:
    # True risk exactly ε: a valid p-value is ≤ δ with probability at most δ.
    rng = np.random.default_rng(0)
    eps, delta, n = 0.1, 0.1, 200
    p = np.array([risk_pvalue((rng.random(n) < eps).astype(float), eps) for _ in range(3000)])
    assert (p <= delta).mean() <= delta + 0.015
    # Far inside the alternative (true risk 0.02) the test rejects almost always.
    p = np.array([risk_pvalue((rng.random(n) < 0.02).astype(float), eps) for _ in range(300)])
    assert (p <= delta).mean() > 0.95


def test_bounded_pvalue_is_valid_and_checks_its_input() -> None:
    rng = np.random.default_rng(1)
    eps, delta, n = 0.2, 0.1, 300
    # Losses in [0, 1] with mean exactly ε (Beta): Hoeffding–Bentkus stays valid.
    p = np.array([risk_pvalue(rng.beta(2.0, 8.0, n), eps) for _ in range(2000)])
    assert (p <= delta).mean() <= delta
    assert risk_pvalue(np.zeros(10), 0.0) == 1.0  # nothing certifies a zero risk
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        risk_pvalue(np.array([1.5]), 0.1)
    with pytest.raises(ValueError, match="non-empty"):
        risk_pvalue(np.array([]), 0.1)


def test_fixed_sequence_stops_at_the_first_failure() -> None:
    assert fixed_sequence(np.array([0.01, 0.02, 0.5, 0.01]), 0.05) == 1
    assert fixed_sequence(np.array([0.5, 0.01]), 0.05) == -1
    assert fixed_sequence(np.array([0.01, 0.01]), 0.05) == 1


def test_learn_then_test_controls_the_risk_of_its_pick() -> None:
    # Candidates in a fixed order with known risks rising past ε; the pick's true risk may
    # exceed ε in at most a δ share of calibration draws.
    rng = np.random.default_rng(2)
    risks = np.linspace(0.0, 0.3, 31)
    eps, delta, n = 0.1, 0.1, 400
    bad = 0
    draws = 400
    for _ in range(draws):
        u = rng.random(n)
        losses = (u[None, :] < risks[:, None]).astype(float)  # nested: monotone in the index
        pick, _ = learn_then_test(losses, eps, delta)
        bad += pick >= 0 and risks[pick] > eps
    assert bad / draws <= delta
    assert pick > 0  # and it does certify something below ε


def test_guaranteed_cascade_bound_holds_on_synthetic_data_with_a_known_risk() -> None:
    train = planted_table(2000, 2, seed=10, datasets=("a",))
    population = planted_table(60_000, 2, seed=11, datasets=("a",))
    policy = GuaranteedCascade(
        epsilon=0.05, delta=0.1, rungs=("m0", "m1"), grid=25, epsilons=(0.0, 0.02, 0.05, 0.1)
    ).fit_base(train)
    p_pop = policy.calibrated_.transform(population)

    def true_risk(t: float) -> float:
        d = policy._decisions(population, population.known, p_pop, t)
        got = population.score[np.arange(population.n_prompts), d.final]
        return float(np.clip(population.score[:, 1] - got, 0.0, 1.0).mean())

    risks = {float(t): true_risk(float(t)) for t in policy.candidates_}
    rng = np.random.default_rng(12)
    failures = {e: 0 for e in policy.epsilons}
    draws = 150
    thresholds = []
    for _ in range(draws):
        rows = rng.choice(population.n_prompts, 400, replace=False)
        policy.certify(population.take(rows))
        for e in policy.epsilons:
            failures[e] += risks[policy.threshold_for(e)] > e + 1e-12
        thresholds.append(policy.threshold_for(0.05))
    for e, f in failures.items():
        assert f / draws <= policy.delta, (e, f)
    # The known answers: ε = 0 cannot be certified (always the strong model), and for ε = 0.05
    # the certified thresholds are finite and cheaper than always escalating.
    assert policy.threshold_for(0.0) == np.inf
    assert np.isfinite(thresholds).mean() > 0.9
    assert risks[np.inf] == 0.0


def test_guarantee_statement_live_flow_and_artifact(tmp_path: Path) -> None:
    table = planted_table(1600, 3, seed=20)
    train, validation = table.take(np.arange(800)), table.take(np.arange(800, 1600))
    policy = GuaranteedCascade(epsilon=0.05, delta=0.2, grid=20).fit(train, validation)
    text = policy.guarantee()
    assert "at least 80%" in text and "800 validation prompts" in text and "minus 0.05" in text
    assert policy.rungs_[-1] == "m2"  # the reference: the best model on train
    run = dict(policy.sweep(validation.blind(), validation.known))
    assert set(run) == set(policy.knobs_)
    save_artifact(tmp_path / "g", policy)
    again, _ = load_artifact(tmp_path / "g")
    assert isinstance(again, GuaranteedCascade)
    np.testing.assert_array_equal(again.thresholds_, policy.thresholds_)
    plan = again.explain(Query(text="q"), frozenset(table.models))
    assert plan.choice == policy.rungs_[0] and plan.knob == 0.05
    flow = again.start(Query(text="q"), frozenset(table.models))
    first = next(flow)
    assert first.model == policy.rungs_[0]
    with pytest.raises(ValueError, match="delta"):
        GuaranteedCascade(delta=1.0).fit(train, validation)


def test_check_guarantee_reports_every_epsilon() -> None:
    table = planted_table(3000, 2, seed=30, datasets=("a",))
    train, pool = table.take(np.arange(1000)), table.take(np.arange(1000, 3000))
    policy = GuaranteedCascade(rungs=("m0", "m1"), grid=15, delta=0.1).fit_base(train)
    checks = check_guarantee(policy, pool, splits=30, epsilons=(0.02, 0.1))
    assert [c.epsilon for c in checks] == [0.02, 0.1]
    for c in checks:
        assert len(c.drops) == c.splits == 30
        assert np.all(c.losses >= c.drops - 1e-12)  # the certified loss bounds the drop
        assert 0.0 <= c.failure_share <= 0.2
        assert np.all(c.costs <= c.reference_costs + 1.0 + 1e-9)  # at most one extra call
    assert checks[1].costs.mean() < checks[0].costs.mean()  # more tolerance, less cost
    with pytest.raises(ValueError, match="validation_fraction"):
        check_guarantee(policy, pool, splits=1, validation_fraction=1.0)


@pytest.mark.slow
def test_guarantee_holds_over_200_resplits_of_cascades9(shared_data: DataLookup) -> None:
    table = load_table(shared_data("cascades9"))
    policy = GuaranteedCascade(delta=0.1).fit_base(table.split("train"))
    checks = check_guarantee(
        policy, table.split("test"), splits=200, epsilons=(0.01, 0.02, 0.03, 0.05)
    )
    for c in checks:
        assert c.failure_share <= c.delta, (c.epsilon, c.failure_share)
