"""The escalation ladder shared by every cascade: one rule, replayed offline and run live.

A ladder is an ordered list of rungs ``(model, threshold)``. The rule, for one prompt:

1. rungs whose model is not allowed (offline: not ``available``) are skipped;
2. the last allowed rung's answer is accepted without checking it;
3. any other rung's answer is checked: its calibrated P(correct) ``p`` is accepted when
   ``p ≥ threshold`` (ties accept); a missing ``p`` escalates (or accepts, if so configured);
4. live only: a call that fails (the caller throws the exception into the generator) is
   skipped; when no later rung answers, the reply is the tried answer with the highest ``p``
   (ties: the later, stronger rung); when nothing answered, the last error is raised.

:func:`replay_ladder` applies rules 1-3 to whole tables at once (what ``bench`` replays) and
:func:`run_ladder` is the live generator (what the gateway runs); :func:`accepts` is the one
comparison both use.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np

from llmdispatch.policies.base import Attempt, AttemptResult
from llmdispatch.query import Query
from llmdispatch.signals.calibrated import CalibratedSignal
from llmdispatch.types import BoolMatrix, FloatMatrix, FloatVector, IntVector

ON_MISSING = ("escalate", "accept")

LiveFlow = Generator[Attempt, AttemptResult, str]


class NoAnswerError(RuntimeError):
    """Every rung a live cascade tried failed, or none of its models is allowed."""


def accepts(p: float, threshold: float, on_missing: str = "escalate") -> bool:
    """Whether a checked answer with calibrated probability ``p`` is accepted."""
    if math.isnan(p):
        return on_missing == "accept"
    return p >= threshold


@dataclass(frozen=True)
class LadderReplay:
    """What a ladder did per prompt: ``final`` rung (−1: no rung available), rungs called and
    rungs whose answer was checked (the signal was read)."""

    final: IntVector
    called: BoolMatrix
    checked: BoolMatrix


def replay_ladder(
    p: FloatMatrix,
    available: BoolMatrix,
    thresholds: FloatVector | Sequence[float],
    on_missing: str = "escalate",
) -> LadderReplay:
    """Apply the ladder rule to every row: ``p[i, r]`` is rung ``r``'s calibrated probability
    on prompt ``i`` and ``available[i, r]`` whether that rung may be called there."""
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")
    n, k = p.shape
    tau = np.asarray(thresholds, dtype=np.float64)
    if tau.shape != (k,):
        raise ValueError(f"need one threshold per rung ({k}), got {tau.shape}")
    any_avail = available.any(axis=1)
    last = np.where(any_avail, k - 1 - np.argmax(available[:, ::-1], axis=1), -1)
    final = np.full(n, -1, dtype=np.intp)
    called = np.zeros((n, k), dtype=bool)
    checked = np.zeros((n, k), dtype=bool)
    done = np.zeros(n, dtype=bool)
    for r in range(k):
        active = ~done & available[:, r]
        called[:, r] = active
        at_last = active & (last == r)
        check = active & ~at_last
        checked[:, r] = check
        pr = p[:, r]
        ok = np.where(np.isnan(pr), on_missing == "accept", pr >= tau[r])
        stop = at_last | (check & ok)
        final[stop] = r
        done |= stop
    return LadderReplay(final=final, called=called, checked=checked)


def assess(
    calibrated: CalibratedSignal, query: Query, answer: AttemptResult
) -> Generator[Attempt, AttemptResult, float]:
    """Run the signal's live flow for one answer; returns its calibrated P(correct).

    Verification requests become ``Attempt(purpose="verify")`` calls (to the answering model
    unless the signal names a judge); a failed verification call is passed on to the signal,
    which then reports the value as missing.
    """
    flow = calibrated.signal.assess(query, answer)
    try:
        request = next(flow)
        while True:
            attempt = Attempt(
                model=request.model or answer.model,
                purpose="verify",
                messages=request.messages,
                options=dict(request.options),
                reason=request.reason,
            )
            try:
                reply = yield attempt
            except Exception as exc:  # the verification call failed
                request = flow.throw(exc)
            else:
                request = flow.send(reply)
    except StopIteration as stop:
        raw = float(stop.value)
    return calibrated.probability(answer.model, raw, query)


def run_ladder(
    query: Query,
    ladder: Sequence[tuple[str, float]],
    calibrated: CalibratedSignal,
    on_missing: str = "escalate",
    label: str = "cascade",
) -> LiveFlow:
    """The live ladder: yield each rung's call (and its checks), return the answering model."""
    if not ladder:
        raise NoAnswerError(f"{label}: none of its models is allowed for this request")
    tried: list[tuple[float, int, str]] = []
    error: Exception | None = None
    for r, (model, threshold) in enumerate(ladder):
        last = r == len(ladder) - 1
        options = {} if last else calibrated.signal.request_options()
        reason = f"{label}: rung {r + 1}/{len(ladder)}"
        try:
            answer = yield Attempt(model=model, options=dict(options), reason=reason)
        except Exception as exc:  # the call failed: escalate past this rung
            error = exc
            continue
        if last:
            return model
        p = yield from assess(calibrated, query, answer)
        if accepts(p, threshold, on_missing):
            return model
        tried.append((-math.inf if math.isnan(p) else p, r, model))
    if tried:
        return max(tried)[2]
    raise NoAnswerError(f"{label}: every rung failed") from error
