"""Compositions: cascade routing and router→cascade, their rules, replays and live flows."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from _cascade_tables import planted_table
from llmdispatch.artifacts import load_artifact, save_artifact
from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.replay import replay
from llmdispatch.policies import composite as composite_module
from llmdispatch.policies.base import Attempt, AttemptResult, Policy
from llmdispatch.policies.cascade import Cascade
from llmdispatch.policies.cascade_routing import CascadeRouting, GaussianOutlook, expected_max
from llmdispatch.policies.composite import Inputs, LabelCosts
from llmdispatch.policies.ladder import NoAnswerError
from llmdispatch.policies.router import Router
from llmdispatch.policies.router_cascade import LadderChoice, RouterCascade, entry_models
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


def _hand_cascade_routing(
    cov: np.ndarray, max_calls: int = 2, commit: bool = True
) -> CascadeRouting:
    """A cascade router with given parameters, without fitting (two models: cheap, strong)."""
    policy = CascadeRouting(max_calls=max_calls, commit=commit)
    policy.router_ = SimpleNamespace(cost_scale_=1.0)  # type: ignore[assignment]
    policy.order_ = np.array([0, 1])
    policy.outlook_ = GaussianOutlook.fixed(cov)
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
    first, second = certain.decide(x, avail, [0.0, 100.0])
    assert first.called.tolist() == [[False, True]] * 3 and list(first.final) == [1, 1, 1]
    assert second.called.tolist() == [[True, False]] * 3 and list(second.final) == [0, 0, 0]
    # With what an answer may reveal, the cheap model runs first and decides escalation.
    unsure = _hand_cascade_routing(np.array([[0.09, 0.0], [0.0, 0.01]]))
    (steps,) = unsure.decide(x, avail, [0.1])
    assert steps.called[:, 0].all() and steps.checked[:, 0].all()
    # A missing signal counts as Q̂ = 0.6.
    assert steps.called[:, 1].tolist() == [False, True, True]
    assert list(steps.final) == [0, 1, 1]
    # The strong model is not available on the last prompt: the cheap answer stands.
    avail[2, 1] = False
    (steps,) = unsure.decide(x, avail, [0.1])
    assert steps.called[2].tolist() == [True, False] and steps.final[2] == 0
    # max_calls = 1 is a router.
    (steps,) = _hand_cascade_routing(unsure.cov_, max_calls=1).decide(x, avail, [0.1])
    assert (steps.called.sum(axis=1) == 1).all()


def test_cascade_routing_replay_pays_every_call_and_every_check() -> None:
    table = planted_table(900, 3)
    train, test = table.take(np.arange(700)), table.take(np.arange(700, 900))
    # Reading the signal costs 0.5 per answer (a self-check billed apart from the answer).
    checks = CheckCosts(tuple(table.ids), table.models, np.full(table.cost.shape, 0.5))
    policy = CascadeRouting(signal=RecordedConfidence(check_costs=checks)).fit(train)
    assert policy.checks_.expected(["a", None])[:, 0] == pytest.approx([0.5, 0.5])
    run = replay(policy, test)
    steps = policy.decide(policy.inputs(test.blind()), test.known, policy.lambdas)
    unchecked = 0
    for k, (_, d) in enumerate(policy.sweep(test.blind(), test.known)):
        s = steps[k]
        np.testing.assert_array_equal(d.called, s.called)
        assert not (s.checked & ~s.called).any()
        # An unchecked call is the final, committed one: at most one per prompt, and it answers.
        free = s.called & ~s.checked
        assert (free.sum(axis=1) <= 1).all()
        rows = np.flatnonzero(free.any(axis=1))
        assert (free[rows, d.final[rows]]).all()
        unchecked += len(rows)
        paid = (test.cost * d.called).sum(axis=1) + 0.5 * s.checked.sum(axis=1)
        np.testing.assert_allclose(run.cost[k], paid)
    assert unchecked > 0  # with a dear check, committing without it is sometimes worth it
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


# ---- what the compositions learn and pay ------------------------------------------------------
def _checked_split(seed: int = 8, check: float = 0.5) -> tuple[OutcomeTable, OutcomeTable, Any]:
    """A planted table whose signal costs ``check`` per answer read (a billed self-check)."""
    table = planted_table(900, 3, seed=seed)
    checks = CheckCosts(tuple(table.ids), table.models, np.full(table.cost.shape, check))
    return table.take(np.arange(700)), table.take(np.arange(700, 900)), checks


def test_router_cascade_every_tau_matches_the_ladder_replay() -> None:
    train, test, checks = _checked_split()
    policy = RouterCascade(signal=RecordedConfidence(check_costs=checks)).fit(train)
    view = test.blind()
    avail = test.known.copy()
    avail[::7, 1] = False
    avail[::11, 2] = False
    avail[5] = False  # a prompt with nothing available falls back like the ladder
    x = policy.inputs(view)
    rows = np.arange(test.n_prompts)
    for rungs in policy.ladders():
        ladder = [test.model_index(m) for m in rungs]
        for entry_lam in (0.0, 0.3, np.inf):
            entry = entry_models(x.Q, x.C, avail, entry_lam, policy.scale, ladder)
            q, c = policy.every_tau(test, x, avail, ladder, entry, policy.taus)
            for k, tau in enumerate(policy.taus):
                choice = LadderChoice(0.0, entry_lam, rungs, tau, 0.0, 0.0)
                d = policy.ladder_run(view, x, avail, choice, entry)
                np.testing.assert_allclose(q[k], np.nan_to_num(test.score[rows, d.final]))
                paid = (np.nan_to_num(test.cost) * d.called).sum(axis=1) + d.overhead_cost
                np.testing.assert_allclose(c[k], paid)


def test_router_cascade_at_tau_zero_checks_nothing() -> None:
    train, test, checks = _checked_split(seed=9)
    policy = RouterCascade(signal=RecordedConfidence(check_costs=checks)).fit(train)
    view, avail = test.blind(), test.known
    x = policy.inputs(view)
    d = policy.ladder_run(view, x, avail, LadderChoice(0.0, 100.0, ("m0", "m2"), 0.0, 0, 0))
    assert (d.called.sum(axis=1) == 1).all() and (d.overhead_cost == 0).all()
    d = policy.ladder_run(view, x, avail, LadderChoice(0.0, 100.0, ("m0", "m2"), 0.9, 0, 0))
    assert d.overhead_cost.max() == pytest.approx(0.5)  # the cheap answer's check is paid


def test_router_cascade_chooses_per_label() -> None:
    # Label "a": the cheap model's signal is informative; label "b": it is noise.
    rng = np.random.default_rng(10)
    base = planted_table(1200, 3, seed=10)
    labels = np.array(base.datasets)
    conf = base.confidence.copy()
    b = labels == "b"
    conf[b, 0] = -np.abs(rng.normal(0.0, 0.6, b.sum()))
    table = replace(base, confidence=conf)
    train, test = table.take(np.arange(1000)), table.take(np.arange(1000, 1200))
    policy = RouterCascade(lambdas=(0.0, 0.05, 0.2, 1.0)).fit(train)
    assert set(policy.label_choices_) == {"a", "b"}
    # Where the signal means something the ladder uses it; where it does not, no threshold
    # beats routing at some λ.
    assert any(ch.tau > 0 for ch in policy.label_choices_["a"])
    view, avail = test.blind(), test.known
    x = policy.inputs(view)
    for k, (_, d) in enumerate(policy.sweep(view, avail)):
        for g in ("a", "b"):
            rows = np.array(test.datasets) == g
            own = policy.ladder_run(view, x, avail, policy.label_choices_[g][k])
            np.testing.assert_array_equal(d.final[rows], own.final[rows])
            np.testing.assert_array_equal(d.called[rows], own.called[rows])
    # A label without enough tuning prompts uses the pooled choice.
    few = RouterCascade(lambdas=(0.0, 1.0), min_label=10_000).fit(train)
    assert few.label_choices_ == {}
    assert few.choice_for(1.0, "a") == few.choice_for(1.0)


def test_cascade_routing_commits_when_the_check_is_dear() -> None:
    x = _inputs([[0.6, 0.9]] * 2, [[0.01, 1.0]] * 2, [[0.95, 0.9], [0.2, 0.9]])
    avail = np.ones((2, 2), dtype=bool)
    policy = _hand_cascade_routing(np.array([[0.09, 0.0], [0.0, 0.01]]))
    (free,) = policy.decide(x, avail, [0.1])
    assert free.checked[:, 0].all()  # a free check on the cheap answer is worth reading
    dear = replace(x, K=np.full((2, 2), 5.0))
    (steps,) = policy.decide(dear, avail, [0.1])
    # With a check dearer than the strong model, both prompts go straight to it, unchecked.
    assert steps.called.tolist() == [[False, True]] * 2 and not steps.checked.any()
    assert list(steps.final) == [1, 1]
    # The paper's rule (no commit) must read the answer it pays for.
    (paper,) = _hand_cascade_routing(policy.cov_, commit=False).decide(dear, avail, [0.1])
    assert (paper.checked == paper.called).all()


def test_gaussian_outlook_recovers_a_planted_regression() -> None:
    rng = np.random.default_rng(11)
    n = 4000
    q = rng.uniform(0.2, 0.9, (n, 2))
    groups = np.where(np.arange(n) % 2 == 0, "a", "b")
    slope = np.where(groups == "a", 0.5, 1.0)[:, None]
    noise = rng.normal(0.0, 0.1, (n, 2))
    p = 0.2 + slope * q + noise
    p[::50, 1] = np.nan  # missing signals are left out of the regression
    outlook = GaussianOutlook(prior=0.0).fit(q, p, groups)
    a, b, cov = outlook.of("a")
    assert b == pytest.approx([0.5, 0.5], abs=0.03) and a == pytest.approx([0.2, 0.2], abs=0.03)
    assert np.diag(cov) == pytest.approx([0.01, 0.01], rel=0.15)
    assert outlook.of("b")[1] == pytest.approx([1.0, 1.0], abs=0.03)
    assert outlook.of("unseen")[1] == pytest.approx([0.75, 0.75], abs=0.05)  # pooled fit
    mean = outlook.mean(q[:4], groups[:4])
    assert ((mean >= 0) & (mean <= 1)).all()
    # Residuals, not P − Q̂: a router whose estimates are noisy does not look like news.
    assert np.diag(cov).max() < np.var(p[groups == "a"][:, 0] - q[groups == "a"][:, 0])
    again = GaussianOutlook.from_state(outlook.state())
    np.testing.assert_allclose(again.mean(q, groups), outlook.mean(q, groups))


def test_label_costs_rescale_the_router_estimate() -> None:
    table = planted_table(400, 2, seed=12)
    labels = np.array(table.datasets)
    cost = table.cost.copy()
    cost[labels == "b"] *= 3.0  # answers on label b are three times dearer
    table = replace(table, cost=cost)
    expected = np.tile([1.0, 4.0], (table.n_prompts, 1))
    costs = LabelCosts().fit(table, expected)
    f = costs.factors(["a", "b/sub", None, "new"])
    assert f[0] == pytest.approx([1.0, 1.0]) and f[1] == pytest.approx([3.0, 3.0])
    assert f[2] == pytest.approx([2.0, 2.0]) and f[3] == pytest.approx([2.0, 2.0])
    assert LabelCosts.from_state(costs.state()).factors(["b"]) == pytest.approx(f[1:2])


def test_tuning_uses_cross_fitted_training_prompts_and_reuses_routers() -> None:
    train, test = split(seed=13)
    fit, validation = train.take(np.arange(500)), train.take(np.arange(500, 700))
    policy = CascadeRouting(lambdas=(0.0, 0.3))
    policy.fit(fit, validation)
    table, x = policy.tuning_inputs(fit, validation)
    assert table.n_prompts == 700 and x.Q.shape == (700, 3)
    # A training prompt's Q̂ comes from a router that did not see it: it differs from the
    # fitted router's in-sample estimate.
    assert not np.allclose(x.Q[:500], policy.router_.quality_table(fit.blind()))
    only = CascadeRouting(lambdas=(0.0, 0.3), tune_folds=0)
    only.fit(fit, validation)
    assert only.tuning_inputs(fit, validation)[0].n_prompts == 200
    # A second fit on the same prompts reuses the router and the cross-fitted estimates,
    # with the same decisions as a fit from scratch; other costs refit the cost model.
    composite_module._MEMO.clear()
    dear = replace(fit, cost=fit.cost * 2.0)
    fresh = CascadeRouting(lambdas=(0.0, 0.3)).fit(dear, validation)
    reused = CascadeRouting(lambdas=(0.0, 0.3)).fit(dear, validation)
    assert reused.scale == pytest.approx(fresh.scale) and reused.scale != policy.scale
    for (_, d1), (_, d2) in zip(
        fresh.sweep(test.blind(), test.known), reused.sweep(test.blind(), test.known), strict=True
    ):
        np.testing.assert_array_equal(d1.called, d2.called)


def test_outlook_values_match_what_the_reply_realises() -> None:
    rng = np.random.default_rng(14)
    n = 3000
    q = np.full((n, 2), 0.6)
    groups = np.where(np.arange(n) % 2 == 0, "same", "own")
    # "same": both answers are right or wrong together, and each P is the base rate plus
    # noise, so picking the higher P gains nothing. "own": independent answers, each right
    # with probability exactly P, so the higher P is worth its full value.
    p = np.clip(0.6 + rng.normal(0.0, 0.15, (n, 2)), 0.0, 1.0)
    score = (rng.random((n, 2)) < p).astype(float)
    same = groups == "same"
    score[same] = (rng.random((same.sum(), 1)) < 0.6).astype(float)
    outlook = GaussianOutlook(prior=0.0).fit(q, p, groups)
    outlook.match_realised(q, p, score, groups, 2)
    assert outlook.kappa_["same"] <= 0.1 < 0.7 <= outlook.kappa_["own"]
    for g in ("same", "own"):
        rows = groups == g
        pick = p[rows].argmax(axis=1)
        real = score[rows][np.arange(rows.sum()), pick].mean()
        cov = outlook.of(g)[2]
        pred = expected_max(np.full(rows.sum(), -np.inf), outlook.mean(q[rows], groups[rows]), cov)
        assert pred.mean() == pytest.approx(real, abs=0.02)
