"""Compositions: cascade routing and router→cascade, their rules, replays and live flows."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from _cascade_tables import planted_table
from llmdispatch.artifacts import load_artifact, save_artifact
from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.replay import replay
from llmdispatch.policies.base import Attempt, AttemptResult, Policy
from llmdispatch.policies.cascade import Cascade
from llmdispatch.policies.composite import (
    CascadeRouting,
    Inputs,
    LadderChoice,
    RouterCascade,
    entry_models,
    expected_max,
)
from llmdispatch.policies.ladder import NoAnswerError
from llmdispatch.policies.router import Router
from llmdispatch.query import Query
from llmdispatch.signals.recorded import CheckCosts, RecordedConfidence

Respond = Callable[[Attempt], AttemptResult | Exception]


def drive(flow: Generator[Attempt, AttemptResult, str], respond: Respond) -> tuple[str, list[str]]:
    """Run a live flow with a fake provider; return the answering model and the models called."""
    calls: list[str] = []
    try:
        attempt = flow.send(None)  # type: ignore[arg-type]
        while True:
            calls.append(attempt.model)
            result = respond(attempt)
            attempt = flow.throw(result) if isinstance(result, Exception) else flow.send(result)
    except StopIteration as stop:
        return str(stop.value), calls


def replay_provider(table: OutcomeTable, row: int) -> Respond:
    """Answers as recorded for one prompt (the confidence travels with the answer)."""

    def respond(a: Attempt) -> AttemptResult:
        j = table.model_index(a.model)
        conf = table.confidence[row, j]
        return AttemptResult(
            model=a.model, text="x", confidence=None if np.isnan(conf) else float(conf)
        )

    return respond


def query_of(table: OutcomeTable, row: int) -> Query:
    """A live query that sees what the offline replay sees (tokens, data-set label)."""
    return Query(
        text=str(table.prompts[row]),
        tokens_in=int(table.tokens_in[row, 0]),
        metadata={"dataset": str(table.datasets[row])},
    )


def split(n: int = 900, m: int = 3, seed: int = 0) -> tuple[OutcomeTable, OutcomeTable]:
    table = planted_table(n, m, seed=seed)
    return table.take(np.arange(n - 200)), table.take(np.arange(n - 200, n))


def assert_live_matches_offline(policy: Policy, test: OutcomeTable, rows: int = 60) -> None:
    """``start`` on recorded answers calls exactly what ``sweep`` replays, knob by knob."""
    sweep = policy.sweep(test.blind(), test.known)
    seen_escalation = False
    for knob, d in sweep[:: max(1, len(sweep) // 6)]:
        policy.lam = knob  # type: ignore[attr-defined]
        for i in range(rows):
            answer, calls = drive(
                policy.start(query_of(test, i), frozenset(test.models)), replay_provider(test, i)
            )
            assert answer == test.models[d.final[i]], (knob, i)
            assert sorted(calls) == sorted(test.models[j] for j in np.flatnonzero(d.called[i]))
            seen_escalation |= len(calls) > 1
    assert seen_escalation


# ---- cascade routing: the value of a supermodel ---------------------------------------------
def test_expected_max_one_model_is_exact_and_bounded() -> None:
    rng = np.random.default_rng(0)
    mu, sd, floor = 0.6, 0.2, 0.5
    x = np.clip(rng.normal(mu, sd, 400_000), 0.0, 1.0)
    mc = np.maximum(floor, x).mean()
    got = expected_max(np.array([floor]), np.array([[mu]]), np.array([[sd**2]]))[0]
    assert got == pytest.approx(mc, abs=2e-3)
    # Before any answer (floor −inf) the value is the mean of the clipped quality.
    got = expected_max(np.array([-np.inf]), np.array([[mu]]), np.array([[sd**2]]))[0]
    assert got == pytest.approx(x.mean(), abs=2e-3)
    # Without uncertainty: max(b, μ) clipped to [0, 1].
    flat = expected_max(
        np.array([0.3, 0.7, -np.inf]), np.array([[0.5], [0.5], [1.4]]), np.zeros((1, 1))
    )
    np.testing.assert_allclose(flat, [0.5, 0.7, 1.0], atol=1e-9)


def test_expected_max_of_correlated_models_matches_monte_carlo() -> None:
    rng = np.random.default_rng(1)
    for k in (2, 3):
        for _ in range(5):
            a = rng.normal(size=(k, k)) * 0.12
            cov = a @ a.T + 0.01 * np.eye(k)
            mu = rng.uniform(0.3, 0.8, k)
            floor = rng.uniform(0.2, 0.7)
            x = np.clip(rng.multivariate_normal(mu, cov, 300_000), 0.0, 1.0).max(axis=1)
            mc = np.maximum(floor, x).mean()
            got = expected_max(np.array([floor]), mu[None, :], cov)[0]
            assert got == pytest.approx(mc, abs=0.015)  # Clark's normal approximation
            # Never below the floor nor the best single model's value.
            single = max(
                expected_max(np.array([floor]), mu[None, [j]], cov[[j]][:, [j]])[0]
                for j in range(k)
            )
            assert got >= single - 1e-9 and got <= 1.0


def _hand_cascade_routing(cov: np.ndarray, max_calls: int = 2) -> CascadeRouting:
    """A cascade router with given parameters, without fitting (two models: cheap, strong)."""
    policy = CascadeRouting(max_calls=max_calls)
    policy.router_ = SimpleNamespace(cost_scale_=1.0)  # type: ignore[assignment]
    policy.order_ = np.array([0, 1])
    policy.cov_ = cov
    return policy


def _inputs(Q: list[list[float]], C: list[list[float]], P: list[list[float]]) -> Inputs:
    q = np.array(Q)
    z = np.zeros_like(q)
    return Inputs(
        Q=q, C=np.array(C, dtype=float), K=z, P=np.array(P), check_cost=z, check_latency=z
    )


def test_cascade_routing_rule_on_hand_inputs() -> None:
    x = _inputs(
        [[0.6, 0.9]] * 3,
        [[0.01, 1.0]] * 3,
        [[0.95, 0.9], [0.2, 0.9], [np.nan, 0.9]],  # cheap answer: confident, unsure, missing
    )
    avail = np.ones((3, 2), dtype=bool)
    # Without uncertainty, λ = 0 goes straight to the strong model, a huge λ stays cheap.
    certain = _hand_cascade_routing(np.zeros((2, 2)))
    (final, called), (final2, called2) = certain.decide(x, avail, [0.0, 100.0])
    assert called.tolist() == [[False, True]] * 3 and list(final) == [1, 1, 1]
    assert called2.tolist() == [[True, False]] * 3 and list(final2) == [0, 0, 0]
    # With what an answer may reveal, the cheap model runs first and decides escalation.
    unsure = _hand_cascade_routing(np.array([[0.09, 0.0], [0.0, 0.01]]))
    ((final, called),) = unsure.decide(x, avail, [0.1])
    assert called[:, 0].all()
    assert called[:, 1].tolist() == [False, True, True]  # a missing signal counts as Q̂ = 0.6
    assert list(final) == [0, 1, 1]
    # The strong model is not available on the last prompt: the cheap answer stands.
    avail[2, 1] = False
    ((final, called),) = unsure.decide(x, avail, [0.1])
    assert called[2].tolist() == [True, False] and final[2] == 0
    # max_calls = 1 is a router.
    ((final, called),) = _hand_cascade_routing(unsure.cov_, max_calls=1).decide(x, avail, [0.1])
    assert (called.sum(axis=1) == 1).all()


def test_cascade_routing_replay_pays_every_call_and_every_check() -> None:
    table = planted_table(900, 3)
    train, test = table.take(np.arange(700)), table.take(np.arange(700, 900))
    # Reading the signal costs 0.5 per answer (a self-check billed apart from the answer).
    checks = CheckCosts(tuple(table.ids), table.models, np.full(table.cost.shape, 0.5))
    policy = CascadeRouting(signal=RecordedConfidence(check_costs=checks)).fit(train)
    assert policy.checks_.expected(["a", None])[:, 0] == pytest.approx([0.5, 0.5])
    run = replay(policy, test)
    for k, (_, d) in enumerate(policy.sweep(test.blind(), test.known)):
        paid = (test.cost * d.called).sum(axis=1) + 0.5 * d.called.sum(axis=1)
        np.testing.assert_allclose(run.cost[k], paid)
    assert run.rungs.max() > 1.0 and run.rungs.min() == pytest.approx(1.0)
    assert run.mean_cost[0] > run.mean_cost[-1]  # λ = 0 spends most
    # A dearer check makes escalation less attractive: fewer calls at the same λ.
    free = CascadeRouting().fit(train)
    assert replay(free, test).rungs.sum() > run.rungs.sum()


def test_cascade_routing_live_matches_offline_replay() -> None:
    train, test = split(seed=2)
    policy = CascadeRouting(lambdas=(0.0, 0.03, 0.1, 0.3, 1.0, 3.0)).fit(train)
    assert_live_matches_offline(policy, test)


def test_cascade_routing_live_survives_failures() -> None:
    train, test = split(seed=3)
    policy = CascadeRouting(lam=0.0, max_calls=2).fit(train)
    q = query_of(test, 0)
    ok = replay_provider(test, 0)
    answer, calls = drive(policy.start(q, frozenset(test.models)), ok)
    first = calls[0]

    def first_down(a: Attempt) -> AttemptResult | Exception:
        return ConnectionError("down") if a.model == first else ok(a)

    answer, calls = drive(policy.start(q, frozenset(test.models)), first_down)
    assert calls[0] == first and len(calls) >= 2 and answer != first
    with pytest.raises(NoAnswerError, match="every call failed"):
        drive(policy.start(q, frozenset(test.models)), lambda a: OSError("all down"))
    with pytest.raises(NoAnswerError, match="none of its models"):
        drive(policy.start(q, frozenset()), ok)
    plan = policy.explain(q, frozenset(test.models))
    assert plan.choice == first and plan.policy == "cascade-routing"


# ---- router → cascade -------------------------------------------------------------------------
def test_entry_models() -> None:
    Q = np.array([[0.5, 0.9, 0.7], [0.5, 0.9, 0.7]])
    C = np.array([[1.0, 10.0, 2.0]] * 2)
    avail = np.array([[True, True, True], [True, False, True]])
    assert list(entry_models(Q, C, avail, 0.0, 10.0, [0, 1])) == [1, 2]
    assert list(entry_models(Q, C, avail, 100.0, 10.0, [0, 1])) == [0, 0]
    assert list(entry_models(Q, C, avail, np.inf, 10.0, [1, 2])) == [1, 2]  # the ladder's first
    none = np.zeros((1, 3), dtype=bool)
    assert entry_models(Q[:1], C[:1], none, 0.0, 1.0, [0])[0] == -1


def test_router_cascade_holds_the_router_and_the_cascade() -> None:
    train, test = split(seed=4)
    policy = RouterCascade().fit(train)
    view, avail = test.blind(), test.known
    x = policy.inputs(view)
    # τ = 0 accepts the entry's answer: exactly the router at the entry λ.
    for lam in (0.0, 0.3, 3.0):
        d = policy.ladder_run(view, x, avail, LadderChoice(0.0, lam, ("m0", "m2"), 0.0, 0, 0))
        router = Router.choose(x.Q, x.C, avail, lam, policy.scale)
        np.testing.assert_array_equal(d.final, router)
        assert (d.called.sum(axis=1) == 1).all()
    # Entry λ = ∞ is the plain cascade over the ladder.
    choice = LadderChoice(0.0, np.inf, ("m0", "m2"), 0.7, 0, 0)
    d = policy.ladder_run(view, x, avail, choice)
    cascade = Cascade(["m0", "m2"], thresholds=0.7, shifts=[0.0])
    cascade.tau_, cascade.stats_, cascade.calibrated_ = (
        np.array([0.7, 0.0]),
        policy.stats_,
        policy.calibrated_,
    )
    ((_, expected),) = cascade.sweep(view, avail)
    np.testing.assert_array_equal(d.final, expected.final)
    np.testing.assert_array_equal(d.called, expected.called)


def test_router_cascade_choices_follow_the_validation_utility() -> None:
    train, test = split(seed=5)
    policy = RouterCascade().fit(train)
    costs = [ch.cost for ch in policy.choices_]
    quality = [ch.quality for ch in policy.choices_]
    # A larger λ never buys a dearer point on validation (they are utility maximisers).
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(costs))
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(quality))
    assert policy.choice_for(0.0).rungs[-1] == "m2"  # every ladder ends at the strongest
    run = replay(policy, test)
    assert run.rungs.max() > 1.0
    assert run.mean_quality[0] > test.mean_score()[0]


def test_router_cascade_live_matches_offline_replay() -> None:
    train, test = split(seed=6)
    policy = RouterCascade(lambdas=(0.0, 0.1, 0.3, 1.0, 3.0, 10.0)).fit(train)
    assert_live_matches_offline(policy, test)
    plan = policy.explain(query_of(test, 0), frozenset(test.models))
    assert plan.policy == "router-cascade" and plan.choice in test.models


@pytest.mark.parametrize("cls", [CascadeRouting, RouterCascade])
def test_compositions_round_trip_as_artifacts(cls: type[Any], tmp_path: Path) -> None:
    train, test = split(seed=7)
    policy = cls(lambdas=(0.0, 0.1, 1.0)).fit(train)
    save_artifact(tmp_path / "p", policy)
    again, _ = load_artifact(tmp_path / "p")
    assert isinstance(again, cls)
    for (k1, d1), (k2, d2) in zip(
        policy.sweep(test.blind(), test.known), again.sweep(test.blind(), test.known), strict=True
    ):
        assert k1 == k2
        np.testing.assert_array_equal(d1.final, d2.final)
        np.testing.assert_array_equal(d1.called, d2.called)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="max_calls"):
        CascadeRouting(max_calls=0)
    with pytest.raises(ValueError, match=">= 0"):
        CascadeRouting(lam=-1.0)
    with pytest.raises(ValueError, match="max_rungs"):
        RouterCascade(max_rungs=0)
