"""The contract every registered policy keeps (the policies' `test_common`).

Parametrized over the registry, so a new policy is held to it without a line here, unless it
needs constructor arguments (``ARGS``). Each policy is fitted on a planted table whose
confidences predict correctness, then: its replay is well formed and respects which models
may be used; its artifact reloads with identical decisions; live, it calls only allowed
models and answers with one of them; ``explain`` names an allowed model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _cascade_tables import planted_table
from llmdispatch.artifacts import load_artifact, save_artifact
from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.replay import replay
from llmdispatch.policies.base import Decisions, Policy
from llmdispatch.registry import REGISTRY
from test_composite import drive, query_of, replay_provider

REGISTRY.load_builtins()
POLICIES = REGISTRY.names("policy")
#: Constructor arguments for the policies that cannot be built from defaults.
ARGS: dict[str, dict[str, Any]] = {"cascade": {"rungs": ["m0", "m1", "m2"]}}


@pytest.fixture(scope="module")
def tables() -> tuple[OutcomeTable, OutcomeTable]:
    table = planted_table(700, 3, seed=3)
    return table.take(np.arange(560)), table.take(np.arange(560, 700))


@pytest.fixture(scope="module")
def fitted(tables: tuple[OutcomeTable, OutcomeTable]) -> Callable[[str], Policy]:
    """Each policy fitted once on the training part, on first use."""
    train, _ = tables

    @functools.cache
    def fit(name: str) -> Policy:
        return REGISTRY.get("policy", name)(**ARGS.get(name, {})).fit(train)

    return fit


def _sweep(policy: Policy, table: OutcomeTable, available: np.ndarray) -> list[Any]:
    view = table if policy.needs_scores else table.blind()
    return policy.sweep(view, available)


def test_every_policy_is_covered() -> None:
    assert {"router", "cascade", "bandit", "cascade-routing", "router-cascade"} <= set(POLICIES)


@pytest.mark.parametrize("name", POLICIES)
def test_replay_is_well_formed(
    name: str, fitted: Callable[[str], Policy], tables: tuple[OutcomeTable, OutcomeTable]
) -> None:
    policy, (_, test) = fitted(name), tables
    run = replay(policy, test)
    assert len(run.knobs) >= 2 and run.knob_name == policy.knob_name
    assert np.all((run.mean_quality >= 0) & (run.mean_quality <= 1))
    assert np.all(np.isfinite(run.mean_cost)) and np.all(run.mean_cost > 0)
    assert np.all(run.rungs >= 1)
    # The knob trades something: the sweep does not give one point over and over.
    points = set(zip(run.mean_cost.round(9), run.mean_quality.round(9), strict=True))
    assert len(points) >= 2


@pytest.mark.parametrize("name", POLICIES)
def test_only_available_models_are_called(
    name: str, fitted: Callable[[str], Policy], tables: tuple[OutcomeTable, OutcomeTable]
) -> None:
    policy, (_, test) = fitted(name), tables
    available = test.known.copy()
    available[::2, 2] = False  # the dearest model is unavailable on every other prompt
    available[1::4, 0] = False  # the cheapest on every fourth
    for _, d in _sweep(policy, test, available):
        assert isinstance(d, Decisions)
        assert not (d.called & ~available).any()
        assert available[np.arange(test.n_prompts), d.final].all()


@pytest.mark.parametrize("name", POLICIES)
def test_artifact_round_trip_keeps_every_decision(
    name: str,
    fitted: Callable[[str], Policy],
    tables: tuple[OutcomeTable, OutcomeTable],
    tmp_path: Path,
) -> None:
    policy, (_, test) = fitted(name), tables
    save_artifact(tmp_path / name, policy, {"policy": name})
    loaded, meta = load_artifact(tmp_path / name)
    assert type(loaded) is type(policy) and meta["policy"] == name
    before = _sweep(policy, test, test.known)
    after = _sweep(loaded, test, test.known)
    assert [k for k, _ in before] == [k for k, _ in after]
    for (_, a), (_, b) in zip(before, after, strict=True):
        np.testing.assert_array_equal(a.final, b.final)
        np.testing.assert_array_equal(a.called, b.called)
        np.testing.assert_allclose(a.overhead_cost, b.overhead_cost)


@pytest.mark.parametrize("name", POLICIES)
def test_live_flow_calls_only_allowed_models(
    name: str, fitted: Callable[[str], Policy], tables: tuple[OutcomeTable, OutcomeTable]
) -> None:
    policy, (_, test) = fitted(name), tables
    for allowed in (frozenset(test.models), frozenset(test.models[:2])):
        for row in range(12):
            flow = policy.start(query_of(test, row), allowed)
            answer, calls = drive(flow, replay_provider(test, row))
            assert answer in allowed and answer in calls
            assert set(calls) <= allowed


@pytest.mark.parametrize("name", POLICIES)
def test_explain_names_an_allowed_model(
    name: str, fitted: Callable[[str], Policy], tables: tuple[OutcomeTable, OutcomeTable]
) -> None:
    policy, (_, test) = fitted(name), tables
    allowed = frozenset(test.models[1:])
    plan = policy.explain(query_of(test, 0), allowed)
    assert plan.choice in allowed
    assert {c.model for c in plan.candidates} <= set(test.models)
