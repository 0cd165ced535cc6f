"""Verification signals: a second call checks the answer (the model itself, or a judge).

* :class:`SelfCheck` — the model is asked whether its proposed answer is correct and must
  reply ``Y`` or ``N`` in one token. Value: ``log p(Y)`` if it replied Y and
  ``log(1 − p(N))`` if it replied N: the signal ``cascades9`` recorded for its open-ended
  benchmarks (Zellinger & Thomson, arXiv:2501.09345), so a live self-check reproduces it.
* :class:`JudgeVerdict` — the same Y/N verdict from a fixed judge model (LLM-as-a-judge,
  Zheng et al., NeurIPS 2023 Datasets & Benchmarks).
* :class:`AutoMixVerifier` — AutoMix (Aggarwal et al., NeurIPS 2024): a few-shot
  self-verification prompt, sampled k times; the value is the share of samples whose
  verdict is "Correct". Adapted: no separate context passage (the question is the context),
  and the few-shot examples are generic ones written for this package.

Outcome tables hold no verification calls except the recorded confidence, so offline these
are NaN; use ``recorded`` for ``cascades9``.
"""

from __future__ import annotations

import re
from typing import Any

from llmdispatch.data.table import OutcomeTable
from llmdispatch.query import Query
from llmdispatch.registry import register
from llmdispatch.signals.base import (
    NAN,
    Assessment,
    Response,
    Signal,
    VerifyRequest,
    log1mexp,
    nan_matrix,
)
from llmdispatch.types import FloatMatrix

SELF_CHECK_PROMPT = (
    "Question: {question}\n\nProposed answer: {answer}\n\n"
    "Is the proposed answer correct? Reply with a single letter: Y (yes) or N (no)."
)
JUDGE_PROMPT = (
    "You are a strict grader. Decide whether the answer to the question below is correct.\n\n"
    "Question: {question}\n\nAnswer: {answer}\n\n"
    "Reply with a single letter: Y if the answer is correct, N if it is not."
)
AUTOMIX_PROMPT = """\
Context: The capital of Australia is Canberra, not Sydney.
Question: What is the capital of Australia?
AI Generated Answer: Sydney
Instruction: Your task is to evaluate if the AI Generated Answer is correct, based on the \
provided context and question. Provide the judgement and reasoning for each case. Choose \
between Correct or Incorrect.
Evaluation: The context states that the capital is Canberra, so the answer Sydney is wrong. \
Verdict: Incorrect

Context: Water boils at 100 degrees Celsius at sea level.
Question: At what temperature in Celsius does water boil at sea level?
AI Generated Answer: 100 degrees
Instruction: Your task is to evaluate if the AI Generated Answer is correct, based on the \
provided context and question. Provide the judgement and reasoning for each case. Choose \
between Correct or Incorrect.
Evaluation: The context gives 100 degrees Celsius, which matches the answer. Verdict: Correct

Context: {question}
Question: {question}
AI Generated Answer: {answer}
Instruction: Your task is to evaluate if the AI Generated Answer is correct, based on the \
provided context and question. Provide the judgement and reasoning for each case. Choose \
between Correct or Incorrect.
Evaluation:"""

_VERDICT = re.compile(r"\b(incorrect|correct)\b", re.I)


def parse_yes_no(text: str) -> bool | None:
    """``True`` for a reply starting with Y/yes, ``False`` for N/no, ``None`` otherwise."""
    word = text.strip().strip("\"'*`([").lower()
    if word.startswith("y"):
        return True
    if word.startswith("n"):
        return False
    return None


def yes_no_logprob(reply: Response) -> float:
    """``log p(Y)`` for a Y reply, ``log(1 − p(N))`` for an N reply (NaN if unparsable).

    Without log-probs the verdict alone counts: 0 (certain yes) or −inf (certain no).
    """
    verdict = parse_yes_no(reply.text)
    if verdict is None:
        return NAN
    lp = reply.token_logprobs[0] if reply.token_logprobs else 0.0
    return float(lp) if verdict else log1mexp(float(lp))


def parse_automix_verdict(text: str) -> bool | None:
    """The last "Correct"/"Incorrect" in a verification; ``None`` when there is none."""
    found = _VERDICT.findall(text)
    return found[-1].lower() == "correct" if found else None


class _YesNoCheck(Signal):
    """A one-token Y/N verification of the answer."""

    verifies = True
    prompt: str = SELF_CHECK_PROMPT
    judge: str | None = None

    def offline(self, table: OutcomeTable) -> FloatMatrix:
        """All NaN: verification calls are not recorded (``recorded`` holds cascades9's)."""
        return nan_matrix(table)

    def request(self, query: Query, answer: Response) -> VerifyRequest:
        """The verification call for this answer."""
        content = self.prompt.format(question=query.text, answer=answer.text)
        return VerifyRequest(
            messages=({"role": "user", "content": content},),
            model=self.judge,
            options={"logprobs": True, "max_tokens": 1, "temperature": 0.0},
            reason=f"{self.registry_name} of {answer.model}",
        )

    def assess(self, query: Query, answer: Response) -> Assessment:
        """Yield the check, read ``log p(Y)`` / ``log(1 − p(N))`` from the reply."""
        try:
            reply = yield self.request(query, answer)
        except Exception:  # the verification call failed: the signal is unknown
            return NAN
        return yes_no_logprob(reply)


@register("signal", "self-check")
class SelfCheck(_YesNoCheck):
    """The answering model checks its own answer with a Y/N reply (cascades9's signal)."""


@register("signal", "judge")
class JudgeVerdict(_YesNoCheck):
    """A judge model's Y/N verdict on the answer, as ``log p(Y)`` / ``log(1 − p(N))``."""

    prompt = JUDGE_PROMPT

    def __init__(self, judge: str) -> None:
        self.judge = judge

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"judge": self.judge}


@register("signal", "automix")
class AutoMixVerifier(Signal):
    """AutoMix few-shot self-verification, sampled k times; value = share judged Correct."""

    verifies = True

    def __init__(self, k: int = 8, temperature: float = 0.7, max_tokens: int = 128) -> None:
        self.k = k
        self.temperature = temperature
        self.max_tokens = max_tokens

    def offline(self, table: OutcomeTable) -> FloatMatrix:
        """All NaN: verification calls are not recorded in outcome tables."""
        return nan_matrix(table)

    def request(self, query: Query, answer: Response) -> VerifyRequest:
        """The few-shot verification call, k samples."""
        content = AUTOMIX_PROMPT.format(question=query.text, answer=answer.text)
        return VerifyRequest(
            messages=({"role": "user", "content": content},),
            options={"n": self.k, "temperature": self.temperature, "max_tokens": self.max_tokens},
            reason=f"automix self-verification of {answer.model}",
        )

    def assess(self, query: Query, answer: Response) -> Assessment:
        """Share of parsable verdicts that say Correct (NaN when none parses)."""
        try:
            reply = yield self.request(query, answer)
        except Exception:  # the verification call failed: the signal is unknown
            return NAN
        texts = list(reply.samples) or [reply.text]
        verdicts = [v for v in map(parse_automix_verdict, texts) if v is not None]
        return sum(verdicts) / len(verdicts) if verdicts else NAN

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"k": self.k, "temperature": self.temperature, "max_tokens": self.max_tokens}
