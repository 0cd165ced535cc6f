"""Compositions: cascade routing and router→cascade, replayed and live."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _cascade_tables import planted_table
from llmdispatch.artifacts import load_artifact, save_artifact
from llmdispatch.evaluation.replay import replay
from llmdispatch.policies.base import Attempt, AttemptResult
from llmdispatch.policies.composite import CascadeRouting, RouterCascade
from llmdispatch.query import Query


def run_live(flow, respond):  # type: ignore[no-untyped-def]
    """Drive a live flow with a fake provider; return (answer model, attempts)."""
    calls: list[Attempt] = []
    try:
        attempt = flow.send(None)
        while True:
            calls.append(attempt)
            result = respond(attempt)
            attempt = flow.throw(result) if isinstance(result, Exception) else flow.send(result)
    except StopIteration as stop:
        return str(stop.value), calls


def fitted(cls: type, **kw):  # type: ignore[no-untyped-def]
    table = planted_table(600, 3)
    train, test = table.take(np.arange(400)), table.take(np.arange(400, 600))
    return cls(**kw).fit(train), test


def test_cascade_routing_escalates_on_low_confidence_and_pays_every_call() -> None:
    policy, test = fitted(CascadeRouting)
    # With a cost weight the cheapest model answers first; escalation follows low signals.
    Q = policy.router_.quality_table(test)
    C = policy.router_.costs_.for_table(test)
    P = policy.calibrated_.transform(test)
    _, called = policy.decide(Q, C, P, test.known, lam=1.5)
    first_only = called.sum(axis=1) == 1
    assert first_only.any() and (~first_only).any()
    # Escalated prompts had a lower calibrated signal on the first model than accepted ones.
    assert P[~first_only, 0].mean() < P[first_only, 0].mean()
    run = replay(policy, test)
    costs = test.cost
    # Every call is paid: the replayed cost equals the sum over called models.
    d = policy.sweep(test.blind(), test.known)[3][1]
    np.testing.assert_allclose(run.cost[3], (costs * d.called).sum(axis=1))
    # The curve spans cheap to strong.
    assert run.mean_cost.min() < run.mean_cost.max()
    assert run.mean_quality.max() > test.mean_score()[0]


def test_cascade_routing_live_matches_the_rule() -> None:
    policy, test = fitted(CascadeRouting, lam=1.5)
    q = Query.from_text(str(test.prompts[0]))

    def low_then_high(a: Attempt) -> AttemptResult:
        conf = -3.0 if a.model == "m0" else -0.01
        return AttemptResult(model=a.model, text="x", confidence=conf)

    answer, calls = run_live(policy.start(q, frozenset(test.models)), low_then_high)
    assert calls[0].model == "m0" and len(calls) >= 2 and answer != "m0"

    def failing_first(a: Attempt) -> AttemptResult | Exception:
        if a.model == "m0":
            return ConnectionError("down")
        return AttemptResult(model=a.model, text="x", confidence=-0.01)

    answer, calls = run_live(policy.start(q, frozenset(test.models)), failing_first)
    assert answer != "m0" and calls[0].model == "m0"


def test_router_cascade_and_artifacts(tmp_path: Path) -> None:
    policy, test = fitted(RouterCascade, lam=0.3, tau=0.6)
    run = replay(policy, test)
    assert run.rungs.max() > 1.0 and run.rungs.min() >= 1.0
    save_artifact(tmp_path / "rc", policy)
    again, _ = load_artifact(tmp_path / "rc")
    np.testing.assert_array_equal(replay(again, test).quality, run.quality)
    q = Query.from_text(str(test.prompts[1]))
    answer, calls = run_live(
        again.start(q, frozenset(test.models)),
        lambda a: AttemptResult(model=a.model, text="x", confidence=-5.0),
    )
    assert len(calls) == 2 and answer == calls[1].model


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="max_calls"):
        CascadeRouting(max_calls=0)
