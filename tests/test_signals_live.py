"""Live signals from responses: log-probs, margin, self-consistency, self-check, judge, AutoMix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _cascade_tables import make_table
from llmdispatch.policies.base import AttemptResult
from llmdispatch.query import Query
from llmdispatch.registry import REGISTRY
from llmdispatch.signals.answers import agreement, answer_key, majority_share
from llmdispatch.signals.base import Signal, VerifyRequest, log1mexp
from llmdispatch.signals.consistency import SelfConsistency
from llmdispatch.signals.logprob import MeanLogprob, MinLogprob, TopMargin
from llmdispatch.signals.verify import (
    AutoMixVerifier,
    JudgeVerdict,
    SelfCheck,
    parse_automix_verdict,
    parse_yes_no,
)

Q = Query(text="What is 2 + 2?")


def _drive(
    signal: Signal, answer: AttemptResult, replies: list[AttemptResult | Exception]
) -> tuple[float, list[VerifyRequest]]:
    """Run a signal's live flow against canned replies; return its value and its requests."""
    flow = signal.assess(Q, answer)
    requests: list[VerifyRequest] = []
    try:
        request = next(flow)
        for reply in replies:
            requests.append(request)
            request = flow.throw(reply) if isinstance(reply, Exception) else flow.send(reply)
    except StopIteration as stop:
        return float(stop.value), requests
    raise AssertionError("the signal asked for more calls than expected")


def test_token_logprob_signals() -> None:
    ans = AttemptResult(model="m", text="4", token_logprobs=(-0.1, -0.5, -0.3))
    assert MeanLogprob().value(Q, ans) == pytest.approx(-0.3)
    assert MinLogprob().value(Q, ans) == pytest.approx(-0.5)
    bare = AttemptResult(model="m", text="4")
    assert math.isnan(MeanLogprob().value(Q, bare)) and math.isnan(MinLogprob().value(Q, bare))
    assert MeanLogprob().request_options() == {"logprobs": True}
    table = make_table([[1.0, 0.0]])
    assert np.isnan(MeanLogprob().offline(table)).all()


def test_top_margin_of_the_first_token() -> None:
    ans = AttemptResult(
        model="m", text="B", top_logprobs=((math.log(0.2), math.log(0.7)), (math.log(0.9),))
    )
    assert TopMargin().value(Q, ans) == pytest.approx(0.5)  # sorted: 0.7 − 0.2
    assert TopMargin(position=1).value(Q, ans) == pytest.approx(0.9)
    assert math.isnan(TopMargin(position=3).value(Q, ans))
    assert TopMargin().request_options() == {"logprobs": True, "top_logprobs": 2}


def test_answer_keys_and_agreement() -> None:
    assert answer_key(" (b) because ...") == "B"
    assert answer_key("Answer: C") == "C"
    assert answer_key("so the total is 12.\n#### 1,200") == "1200"
    assert answer_key("The Nicholas Nickleby!") == "nicholas nickleby"
    assert answer_key(None) == ""
    assert agreement("A", ["A", "a", "B", "(A)"]) == pytest.approx(0.75)
    assert majority_share(["x", "y", "x"]) == pytest.approx(2 / 3)
    assert math.isnan(agreement("A", []))


def test_self_consistency_counts_agreeing_samples() -> None:
    sig = SelfConsistency(k=4)
    ans = AttemptResult(
        model="m", text="#### 4", samples=("#### 4", "#### 5", "#### 4.0", "#### 4")
    )
    assert sig.value(Q, ans) == pytest.approx(0.75)
    assert sig.request_options() == {"n": 4, "temperature": 0.7}
    assert math.isnan(sig.value(Q, AttemptResult(model="m", text="4")))
    with pytest.raises(ValueError, match="k ≥ 2"):
        SelfConsistency(k=1).request_options()


def test_self_check_reproduces_the_cascades9_formula() -> None:
    ans = AttemptResult(model="small", text="5")
    yes = AttemptResult(model="small", text="Y", token_logprobs=(math.log(0.8),))
    value, requests = _drive(SelfCheck(), ans, [yes])
    assert value == pytest.approx(math.log(0.8))
    assert requests[0].model is None  # the answering model checks itself
    assert requests[0].options["logprobs"] is True and requests[0].options["max_tokens"] == 1
    assert "Proposed answer: 5" in requests[0].messages[0]["content"]
    no = AttemptResult(model="small", text="N", token_logprobs=(math.log(0.9),))
    value, _ = _drive(SelfCheck(), ans, [no])
    assert value == pytest.approx(math.log(0.1))  # log(1 − p(N))
    value, _ = _drive(SelfCheck(), ans, [AttemptResult(model="small", text="maybe")])
    assert math.isnan(value)
    value, _ = _drive(SelfCheck(), ans, [TimeoutError("verifier down")])
    assert math.isnan(value)


def test_judge_uses_its_own_model() -> None:
    ans = AttemptResult(model="small", text="5")
    verdict = AttemptResult(model="judge", text="yes")
    value, requests = _drive(JudgeVerdict(judge="big"), ans, [verdict])
    assert requests[0].model == "big"
    assert value == 0.0  # a Y without log-probs: certain
    assert JudgeVerdict.from_state(JudgeVerdict("big").get_state()).judge == "big"


def test_automix_share_of_correct_verdicts() -> None:
    ans = AttemptResult(model="small", text="Paris")
    reply = AttemptResult(
        model="small",
        text="",
        samples=(
            "The answer matches. Verdict: Correct",
            "It is wrong. Verdict: Incorrect",
            "Verdict: Correct",
            "no idea",
        ),
    )
    value, requests = _drive(AutoMixVerifier(k=4), ans, [reply])
    assert value == pytest.approx(2 / 3)
    assert requests[0].options["n"] == 4
    assert "AI Generated Answer: Paris" in requests[0].messages[0]["content"]
    assert parse_automix_verdict("correct ... actually incorrect") is False
    assert parse_automix_verdict("nothing") is None


def test_yes_no_parsing_and_log1mexp() -> None:
    assert parse_yes_no(' "Yes."') is True
    assert parse_yes_no("N") is False
    assert parse_yes_no("?") is None
    assert log1mexp(math.log(0.25)) == pytest.approx(math.log(0.75))
    assert log1mexp(-1e-12) == pytest.approx(math.log(1e-12), rel=1e-3)
    assert log1mexp(0.0) == -math.inf


def test_every_signal_is_registered() -> None:
    names = REGISTRY.names("signal")
    for name in (
        "recorded",
        "logprob-mean",
        "logprob-min",
        "top-margin",
        "self-consistency",
        "self-check",
        "judge",
        "automix",
        "frugalgpt-scorer",
    ):
        assert name in names
