"""The cascade's deferral rule, offline replay, live generator and artifacts."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from _cascade_tables import make_table, planted_table
from llmdispatch.artifacts import load_artifact, save_artifact
from llmdispatch.data import load_table
from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.replay import replay
from llmdispatch.policies.base import Attempt, AttemptResult, Policy
from llmdispatch.policies.cascade import Cascade, ModelStats, ladder_decisions
from llmdispatch.policies.cascade_fit import FrugalGPTCascade
from llmdispatch.policies.ladder import NoAnswerError, accepts, replay_ladder, run_ladder
from llmdispatch.query import Query
from llmdispatch.signals.calibrated import CalibratedSignal
from llmdispatch.signals.recorded import CheckCosts, RecordedConfidence
from llmdispatch.signals.verify import SelfCheck

NAN = float("nan")

DataLookup = Callable[[str], Path]


# ---- the rule, offline -------------------------------------------------------------------
def test_replay_ladder_on_hand_built_rows() -> None:
    p = np.array(
        [
            [0.9, 0.5, 0.1],  # confident first rung: accepted
            [0.7, 0.5, 0.1],  # tie with the threshold: accepted
            [NAN, 0.8, 0.1],  # missing confidence: escalates, second rung accepts
            [0.1, 0.2, 0.3],  # nobody confident: the last rung answers unchecked
            [0.1, 0.2, 0.3],  # last rung unavailable: the second answers unchecked
            [0.1, 0.2, 0.3],  # first rung unavailable: skipped, not paid
            [0.1, 0.2, 0.3],  # nothing available
        ]
    )
    avail = np.ones_like(p, dtype=bool)
    avail[4, 2] = False
    avail[5, 0] = False
    avail[6] = False
    out = replay_ladder(p, avail, [0.7, 0.6, 0.0])
    assert list(out.final) == [0, 0, 1, 2, 1, 2, -1]
    assert out.called.tolist() == [
        [True, False, False],
        [True, False, False],
        [True, True, False],
        [True, True, True],
        [True, True, False],
        [False, True, True],
        [False, False, False],
    ]
    # The answer that ends the ladder is only checked when it was not the last option.
    assert out.checked[3].tolist() == [True, True, False]
    assert out.checked[4].tolist() == [True, False, False]
    accepting = replay_ladder(p, avail, [0.7, 0.6, 0.0], on_missing="accept")
    assert accepting.final[2] == 0
    with pytest.raises(ValueError, match="on_missing"):
        replay_ladder(p, avail, [0.7, 0.6, 0.0], on_missing="ignore")
    with pytest.raises(ValueError, match="one threshold per rung"):
        replay_ladder(p, avail, [0.7])


def test_single_rung_cascade_always_answers_and_never_checks() -> None:
    p = np.array([[0.0], [NAN], [1.0]])
    out = replay_ladder(p, np.ones((3, 1), dtype=bool), [0.99])
    assert list(out.final) == [0, 0, 0]
    assert not out.checked.any()


def test_accepts_ties_and_missing() -> None:
    assert accepts(0.5, 0.5)
    assert not accepts(0.4999, 0.5)
    assert not accepts(NAN, 0.0)
    assert accepts(NAN, 0.9, on_missing="accept")


def _stats(table: OutcomeTable) -> ModelStats:
    return ModelStats.of(table)


def test_ladder_decisions_pay_every_rung_and_fall_back() -> None:
    score = np.array([[0, 1, 1], [1, 0, 1], [0, 0, 1.0]])
    table = make_table(score, cost=[[1, 10, 100]] * 3)
    p = np.array([[0.2, 0.9, 0.0], [0.95, 0.0, 0.0], [0.1, 0.1, 0.1]])
    avail = np.ones((3, 3), dtype=bool)
    avail[2] = [False, True, False]  # only m1 is known on the last prompt, and not a rung
    d = ladder_decisions(
        table, avail, p, ["m0", "m2"], [0.5, 0.0], _stats(table), RecordedConfidence()
    )
    assert list(d.final) == [2, 0, 1]
    run_costs = (table.cost * d.called).sum(axis=1) + d.overhead_cost
    assert list(run_costs) == [101.0, 1.0, 10.0]


# ---- the policy on a planted table ----------------------------------------------------------
def test_cascade_sweep_trades_cost_for_quality() -> None:
    train, test = planted_table(800, seed=0), planted_table(800, seed=1)
    cascade = Cascade(["m0", "m2"], thresholds=0.7).fit(train)
    run = replay(cascade, test)
    assert run.knobs[0] == -1.0 and run.knobs[-1] == 1.0
    # Lowest shift: every first answer is accepted; highest: everything escalates.
    assert run.mean_cost[0] == pytest.approx(1.0)
    assert run.mean_cost[-1] == pytest.approx(17.0)
    assert np.all(np.diff(run.mean_cost) >= -1e-12)
    assert run.rungs[0] == 1.0 and run.rungs[-1] == 2.0
    # A useful signal: the mid-point beats mixing the two models at the same cost.
    mid = int(np.argmin(np.abs(run.mean_cost - 9.0)))
    share = (run.mean_cost[mid] - 1.0) / 16.0
    mixed = (1 - share) * test.mean_score()[0] + share * test.mean_score()[2]
    assert run.mean_quality[mid] > mixed + 0.03


def test_cascade_rejects_bad_configs() -> None:
    table = planted_table(100)
    with pytest.raises(ValueError, match="at least one rung"):
        Cascade([]).fit(table)
    with pytest.raises(KeyError, match="unknown model 'gpt-9'"):
        Cascade(["m0", "gpt-9"]).fit(table)
    with pytest.raises(ValueError, match="need 1 or 2 thresholds"):
        Cascade(["m0", "m1"], thresholds=[0.1, 0.2, 0.3]).fit(table)


# ---- live --------------------------------------------------------------------------------------
Responder = Callable[[Attempt], AttemptResult | Exception]


def drive(policy_flow: object, respond: Responder) -> tuple[str, list[Attempt]]:
    """Run a live flow to completion with a fake provider; return the answer and the calls."""
    flow = policy_flow  # a generator
    calls: list[Attempt] = []
    try:
        attempt = flow.send(None)  # type: ignore[attr-defined]
        while True:
            calls.append(attempt)
            result = respond(attempt)
            step = flow.throw if isinstance(result, Exception) else flow.send  # type: ignore[attr-defined]
            attempt = step(result)
    except StopIteration as stop:
        return str(stop.value), calls


def _calibrated_identity() -> CalibratedSignal:
    """Recorded confidence calibrated so that P(correct) ≈ exp(confidence)."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 1.0, (4000, 3))
    score = (rng.random(p.shape) < p).astype(float)
    table = make_table(score, confidence=np.log(p))
    return CalibratedSignal(RecordedConfidence(), method="logistic", by_dataset=False).fit(
        table.take(np.arange(4000))
    )


def test_run_ladder_escalates_on_low_confidence_and_failures() -> None:
    cal = _calibrated_identity()
    q = Query(text="q")
    conf = {"m0": math.log(0.05), "m1": math.log(0.99), "m2": math.log(0.5)}

    def ok(a: Attempt) -> AttemptResult:
        return AttemptResult(model=a.model, text="x", confidence=conf[a.model])

    answer, calls = drive(run_ladder(q, [("m0", 0.5), ("m1", 0.5), ("m2", 0.0)], cal), ok)
    assert answer == "m1" and [c.model for c in calls] == ["m0", "m1"]
    assert calls[0].options == {"logprobs": True}

    def m1_down(a: Attempt) -> AttemptResult | Exception:
        return ConnectionError("down") if a.model == "m1" else ok(a)

    answer, calls = drive(run_ladder(q, [("m0", 0.5), ("m1", 0.5), ("m2", 0.0)], cal), m1_down)
    assert answer == "m2" and [c.model for c in calls] == ["m0", "m1", "m2"]

    def last_down(a: Attempt) -> AttemptResult | Exception:
        return TimeoutError("slow") if a.model == "m2" else ok(a)

    # The last rung fails: the best answer tried so far is the reply.
    answer, _ = drive(run_ladder(q, [("m0", 0.99), ("m1", 0.999), ("m2", 0.0)], cal), last_down)
    assert answer == "m1"

    with pytest.raises(NoAnswerError, match="every rung failed"):
        drive(run_ladder(q, [("m0", 0.5), ("m2", 0.0)], cal), lambda a: OSError("all down"))
    with pytest.raises(NoAnswerError, match="none of its models"):
        drive(run_ladder(q, [], cal), ok)


def test_run_ladder_issues_verification_calls() -> None:
    table = planted_table(300)
    cal = CalibratedSignal(RecordedConfidence(), by_dataset=False).fit(table)
    cal.signal = SelfCheck()  # same calibration, raw values now from a live self-check
    q = Query(text="2+2?")

    def respond(a: Attempt) -> AttemptResult:
        if a.purpose == "verify":
            return AttemptResult(model=a.model, text="N", token_logprobs=(math.log(0.999),))
        return AttemptResult(model=a.model, text="5")

    answer, calls = drive(run_ladder(q, [("m0", 0.5), ("m2", 0.0)], cal), respond)
    assert answer == "m2"
    assert [(c.model, c.purpose) for c in calls] == [
        ("m0", "answer"),
        ("m0", "verify"),
        ("m2", "answer"),
    ]
    assert calls[1].messages is not None and "Proposed answer: 5" in str(calls[1].messages)


def _replay_provider(table: OutcomeTable, row: int) -> Responder:
    def respond(a: Attempt) -> AttemptResult:
        j = table.model_index(a.model)
        conf = table.confidence[row, j]
        return AttemptResult(
            model=a.model,
            text=str(table.responses[row, j]),
            cost=float(table.cost[row, j]),
            confidence=None if np.isnan(conf) else float(conf),
        )

    return respond


def live_matches_offline(policy: Policy, table: OutcomeTable, knob: float, rows: int) -> None:
    """Drive ``policy.start`` on recorded prompts; compare with its offline replay."""
    sweep = dict(policy.sweep(table.blind(), table.known))
    d = sweep[knob]
    rungs = d.called[:rows].sum(axis=1)
    assert (rungs == 1).any() and (rungs > 1).any()  # both accepting and escalating prompts
    for i in range(rows):
        query = Query.from_text(str(table.prompts[i]), table.systems[i])
        query = Query(query.text, query.messages, metadata={"dataset": str(table.datasets[i])})
        allowed = frozenset(m for j, m in enumerate(table.models) if table.known[i, j])
        answer, calls = drive(policy.start(query, allowed), _replay_provider(table, i))
        assert answer == table.models[d.final[i]], i
        assert sorted(c.model for c in calls) == sorted(
            table.models[j] for j in np.flatnonzero(d.called[i])
        ), i


def test_live_cascade_drives_the_same_decisions_as_offline_replay(shared_data: DataLookup) -> None:
    table = load_table(shared_data("cascades9"))
    train, test = table.split("train"), table.split("test").take(np.arange(0, 4048, 20))
    cascade = Cascade(["gpt-4o-mini", "llama3.1-70b", "llama3.1-405b"], [0.8, 0.7]).fit(train)
    cascade.shift = 0.05
    live_matches_offline(cascade, test, 0.05, test.n_prompts)


def test_cascade_artifact_round_trip(tmp_path: Path) -> None:
    train, test = planted_table(400, seed=0), planted_table(200, seed=3)
    cascade = Cascade(["m0", "m1", "m2"], [0.6, 0.8]).fit(train)
    save_artifact(tmp_path / "c", cascade)
    again, _ = load_artifact(tmp_path / "c")
    assert isinstance(again, Cascade)
    for (k1, d1), (k2, d2) in zip(
        cascade.sweep(test, test.known), again.sweep(test, test.known), strict=True
    ):
        assert k1 == k2
        np.testing.assert_array_equal(d1.final, d2.final)
        np.testing.assert_array_equal(d1.called, d2.called)


# ---- FrugalGPT: the search ---------------------------------------------------------------------
def test_frugalgpt_search_respects_budgets_and_matches_the_replay_on_validation() -> None:
    train, validation = planted_table(600, 4, seed=0), planted_table(500, 4, seed=1)
    # Reading the signal costs 0.3 per answer: the search must count it where it is read.
    checks = CheckCosts(tuple(validation.ids), validation.models, np.full((500, 4), 0.3))
    policy = FrugalGPTCascade(
        signal=RecordedConfidence(check_costs=checks), max_rungs=3, grid=6, n_budgets=12
    )
    policy.fit(train, validation)
    rows = np.arange(validation.n_prompts)
    cheapest = min(policy.configs_, key=lambda c: c.cost).cost
    sweep = policy.sweep(validation.blind(), validation.known)
    for budget, cfg, (knob, d) in zip(policy.budgets_, policy.configs_, sweep, strict=True):
        assert knob == budget
        paid = float(((validation.cost * d.called).sum(axis=1) + d.overhead_cost).mean())
        assert paid == pytest.approx(cfg.cost)  # the search's figure is the replay's
        assert validation.score[rows, d.final].mean() == pytest.approx(cfg.quality)
        assert cfg.cost <= budget * (1 + 1e-9) or cfg.cost == pytest.approx(cheapest)
    assert policy.n_searched_ > len(policy.configs_)
    # More budget never buys less validation quality.
    quality = [cfg.quality for cfg in policy.configs_]
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(quality))
    assert any(len(cfg.rungs) > 1 for cfg in policy.configs_)
    assert any((d.overhead_cost > 0).any() for _, d in sweep)


def test_frugalgpt_live_follows_the_budget() -> None:
    train, validation = planted_table(600, 3, seed=2), planted_table(400, 3, seed=3)
    policy = FrugalGPTCascade(grid=6, n_budgets=8).fit(train, validation)
    policy.budget = float(policy.budgets_[3])
    cfg = policy.config_for(policy.budget)
    plan = policy.explain(Query(text="q"), frozenset(train.models))
    assert plan.choice == cfg.rungs[0]
    policy.budget = None
    assert policy.config_for(None).quality == max(c.quality for c in policy.configs_)
