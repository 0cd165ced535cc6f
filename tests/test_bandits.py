"""Online learners: recovery of the best arm, state round-trips and merges, drift, budgets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from llmdispatch.artifacts import load_artifact, save_artifact
from llmdispatch.data.locate import load_table
from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.online import simulate
from llmdispatch.evaluation.replay import replay
from llmdispatch.policies.bandit import BanditRouter, UnknownRequestError
from llmdispatch.policies.linear_bandit import BanditError, LinearBandit, merge_learners
from llmdispatch.query import Query

ALGORITHMS = ("linucb", "thompson", "epsilon-greedy")


def _linear_problem(
    seed: int, n: int = 1500, d: int = 4, m: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Contexts with a bias column and each arm's true expected reward (arm 2 best on x₁>0)."""
    rng = np.random.default_rng(seed)
    X = np.hstack([np.ones((n, 1)), rng.normal(size=(n, d - 1))])
    theta = np.zeros((m, d))
    theta[:, 0] = [0.5, 0.4, 0.3]
    theta[1, 1] = 0.3
    theta[2, 1] = -0.1
    theta[2, 2] = 0.4
    return X, X @ theta.T


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_learner_recovers_the_best_arm_per_context(algorithm: str) -> None:
    X, mean = _linear_problem(0)
    rng = np.random.default_rng(1)
    learner = LinearBandit(["a", "b", "c"], dim=X.shape[1], algorithm=algorithm, seed=3)
    picks = np.empty(len(X), dtype=int)
    for t, x in enumerate(X):
        a = learner.choose(x)
        picks[t] = a
        learner.update(a, x, float(mean[t, a] + rng.normal(scale=0.1)))
    best = mean.argmax(axis=1)
    late = slice(len(X) * 2 // 3, None)
    assert (picks[late] == best[late]).mean() > 0.85
    regret = mean.max(axis=1) - mean[np.arange(len(X)), picks]
    # Sublinear: the last third loses far less per step than the first tenth.
    assert regret[late].mean() < 0.5 * regret[: len(X) // 10].mean()


def test_state_round_trip_and_merge_are_exact() -> None:
    X, mean = _linear_problem(2, n=200)
    base = LinearBandit(["a", "b", "c"], dim=X.shape[1], seed=0)
    for t in range(50):
        base.update(t % 3, X[t], float(mean[t, t % 3]), cost=0.01 * (t % 3))
    r1 = LinearBandit.from_state(base.get_state())
    r2 = LinearBandit.from_state(base.get_state())
    single = LinearBandit.from_state(base.get_state())
    for t in range(50, 200):
        replica = r1 if t % 2 else r2
        replica.update(t % 3, X[t], float(mean[t, t % 3]), cost=0.02)
        single.update(t % 3, X[t], float(mean[t, t % 3]), cost=0.02)
    merged = merge_learners(base, [r1, r2])
    np.testing.assert_allclose(merged.A, single.A)
    np.testing.assert_allclose(merged.theta, single.theta, atol=1e-10)
    np.testing.assert_allclose(merged.expected_cost(), single.expected_cost())
    again = LinearBandit.from_state(merged.get_state())
    np.testing.assert_array_equal(again.mean(X[:20]), merged.mean(X[:20]))
    with pytest.raises(BanditError, match="shape"):
        bad = merged.get_state()
        bad["b"] = bad["b"][:, :2]
        LinearBandit.from_state(bad)


def test_discounting_moves_traffic_after_drift() -> None:
    rng = np.random.default_rng(0)
    lags = {}
    for gamma in (1.0, 0.98):
        learner = LinearBandit(["good", "other"], dim=1, algorithm="linucb", gamma=gamma, seed=0)
        means = np.array([0.8, 0.5])
        picks = []
        for t in range(2000):
            if t == 1000:
                means = np.array([0.2, 0.5])  # "good" got worse
            a = learner.choose(np.ones(1))
            picks.append(a)
            learner.update(a, np.ones(1), float(means[a] + rng.normal(scale=0.05)))
        after = np.array(picks[1000:])
        moved = np.flatnonzero(after == 1)
        lags[gamma] = int(moved[0]) if len(moved) else 1000
        if gamma < 1.0:
            assert (after[200:] == 1).mean() > 0.9
    assert lags[0.98] <= lags[1.0]
    assert lags[0.98] < 100


def test_budget_cap_is_never_broken_by_exploration() -> None:
    learner = LinearBandit(["cheap", "pricey"], dim=1, algorithm="thompson", noise=5.0, seed=0)
    costs = np.array([0.001, 0.05])
    for _ in range(300):
        a = learner.choose(np.ones(1), expected_cost=costs, cost_cap=0.01)
        assert a == 0
        learner.update(a, np.ones(1), 0.1, cost=costs[a])
    # Nothing fits the cap: the cheapest allowed arm, never an error.
    assert learner.choose(np.ones(1), expected_cost=costs, cost_cap=0.0) == 0


def test_new_arm_is_explored_and_arms_leave_cleanly() -> None:
    learner = LinearBandit(["a", "b"], dim=1, algorithm="linucb", alpha=1.0, seed=0)
    for _ in range(200):
        a = learner.choose(np.ones(1))
        learner.update(a, np.ones(1), 0.5 if a == 0 else 0.3)
    learner.add_arm("new")
    picks = []
    for _ in range(200):
        a = learner.choose(np.ones(1))
        picks.append(a)
        learner.update(a, np.ones(1), 0.9 if a == 2 else (0.5 if a == 0 else 0.3))
    assert picks[0] == 2  # the exploration bonus tries it at once
    assert np.mean(np.array(picks[50:]) == 2) > 0.9
    learner.remove_arm("b")
    assert learner.arms == ["a", "new"] and learner.A.shape[0] == 2
    with pytest.raises(BanditError, match="unknown arm"):
        learner.arm_index("b")


def test_bad_parameters_are_clear_errors() -> None:
    with pytest.raises(BanditError, match="unknown bandit algorithm"):
        LinearBandit(["a"], dim=1, algorithm="ucb9")
    with pytest.raises(BanditError, match="gamma"):
        LinearBandit(["a"], dim=1, gamma=0.0)
    learner = LinearBandit(["a", "b"], dim=2)
    with pytest.raises(BanditError, match="columns"):
        learner.choose(np.ones(3))
    with pytest.raises(BanditError, match="no arm is allowed"):
        learner.choose(np.ones(2), allowed=np.zeros(2, dtype=bool))


@pytest.fixture(scope="module")
def cascades_slice(shared_data: Callable[[str], Path]) -> tuple[OutcomeTable, OutcomeTable]:
    shared_data("cascades9")
    table = load_table("cascades9")
    rng = np.random.default_rng(0)
    rows = rng.permutation(table.n_prompts)[:900]
    small = table.take(np.sort(rows))
    return small.take(np.arange(0, 500)), small.take(np.arange(500, 900))


def test_router_replay_reads_only_the_chosen_score(
    cascades_slice: tuple[OutcomeTable, OutcomeTable],
) -> None:
    train, stream = cascades_slice
    policy = BanditRouter(algorithm="thompson", dim=8, seed=1).fit(train)
    X = policy.contexts(stream.full_prompts())
    prior = policy.priors(stream.full_prompts(), 0.2)
    order = np.random.default_rng(0).permutation(stream.n_prompts)
    chosen = policy.stream(stream, X, prior, stream.known, order, 0.2)
    # Scramble every score the learner was not shown: its choices must not change.
    noise = np.random.default_rng(5).random(stream.score.shape)
    mask = np.zeros(stream.score.shape, dtype=bool)
    mask[np.arange(stream.n_prompts), chosen] = True
    scrambled = replace(stream, score=np.where(mask, stream.score, noise))
    again = policy.stream(scrambled, X, prior, stream.known, order, 0.2)
    np.testing.assert_array_equal(chosen, again)
    run = replay(policy, stream)
    assert run.quality.shape == (len(policy.lambdas), stream.n_prompts)
    # Without the scores there is nothing to learn from: a clear error, not a NaN reward.
    with pytest.raises(BanditError, match="needs the table with its scores"):
        policy.sweep(stream.blind(), stream.known)
    # A higher λ never makes the stream more expensive on average by much (cost-aware).
    assert run.mean_cost[-1] <= run.mean_cost[0]


def test_warm_start_matches_offline_router_at_first(
    cascades_slice: tuple[OutcomeTable, OutcomeTable],
) -> None:
    train, stream = cascades_slice
    policy = BanditRouter(algorithm="linucb", warm_start="knn", dim=8).fit(train)
    run = simulate(policy, stream, lam=0.1, seeds=(0, 1))
    gap = (run.reward - run.offline_reward)[:, : stream.n_prompts // 2].mean()
    assert gap > -0.04  # starts as good as the offline router, within noise
    assert (run.oracle_reward >= run.reward - 1e-12).all()
    assert run.summary()["mean_reward"] <= run.summary()["oracle_mean_reward"]


def test_router_artifact_round_trip_and_feedback(
    cascades_slice: tuple[OutcomeTable, OutcomeTable], tmp_path: Path
) -> None:
    train, _ = cascades_slice
    policy = BanditRouter(algorithm="linucb", dim=8).fit(train)
    allowed = frozenset(train.models)
    q = Query.from_text("What is the capital of France?")
    model = policy.choose(q, allowed, request_id="r1")
    policy.feedback("r1", 1.0)
    before = policy.learner_.get_state()
    with pytest.raises(UnknownRequestError, match="r1"):
        policy.feedback("r1", 1.0)  # already used: unknown now, and nothing changes
    np.testing.assert_array_equal(before["A"], policy.learner_.A)
    save_artifact(tmp_path / "bandit", policy)
    back, _ = load_artifact(tmp_path / "bandit")
    assert isinstance(back, BanditRouter)
    np.testing.assert_array_equal(back.learner_.A, policy.learner_.A)
    plan_a, plan_b = policy.explain(q, allowed), back.explain(q, allowed)
    assert plan_a.choice == plan_b.choice and model in allowed
    first, second = policy.choose_pair(q, allowed)
    assert first != second
    policy.feedback_preference(q, first, second)
    with pytest.raises(BanditError, match="none of the router"):
        policy.choose(q, frozenset({"no-such-model"}))


def test_bandit_takes_lambda_from_router_calibration(shared_data: Callable[[str], Path]) -> None:
    from llmdispatch.data.splits import train_validation
    from llmdispatch.policies.router import Router

    table = load_table(shared_data("cascades9")).split("train")
    fit, val = train_validation(table)
    target = {"cost_per_query": 2e-4}
    bandit = BanditRouter(warm_start="knn", calibrate=target).fit(fit, val)
    router = Router(calibrate=target).fit(fit, val)
    assert bandit.lam == router.lam_ > 0
    assert bandit.calibration_["validation"]["met"] == 1.0
    again = BanditRouter.from_state(bandit.get_state())
    assert again.lam == bandit.lam and again.calibration_ == bandit.calibration_
