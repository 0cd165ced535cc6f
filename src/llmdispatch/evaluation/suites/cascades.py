"""Benchmark cascades and compositions; they apply where answers carry a usable signal.

* ``cascade-frugalgpt``: FrugalGPT's search over model lists and thresholds per budget, on
  the recorded confidence (``cascades9`` stores one per answer).
* ``cascade-frugalgpt-scorer``: the same with FrugalGPT's learned (query, answer) scorer, for
  tables that record responses but no confidence.
* ``cascade-guaranteed``: thresholds certified by learn-then-test (quality drop ≤ ε vs the
  strongest model with probability ≥ 1 − δ).
* ``cascade-routing`` (Dekoninck et al., ICML 2025; here it may also make its final call
  without reading the signal) and ``router-cascade`` (the router picks the entry model, a
  ladder escalates above it; entry, ladder and threshold chosen per data-set label): the
  compositions on :mod:`llmdispatch.policies.composite`'s base, with the kNN router and the
  recorded confidence, tuned on cross-fitted training prompts plus the validation split.

Costs are replayed as the table records them; for ``cascades9`` that bills the self-check
behind each open-ended confidence with every answer, routers included
(``benchmarks/bench_cascades.py`` also reports the unbundled accounting, see
:func:`llmdispatch.signals.recorded.unbundle_checks`).
"""

from __future__ import annotations

import numpy as np

from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.suites import benchmark_policy
from llmdispatch.policies.base import Policy
from llmdispatch.policies.cascade_fit import FrugalGPTCascade
from llmdispatch.policies.cascade_routing import CascadeRouting
from llmdispatch.policies.guaranteed import GuaranteedCascade
from llmdispatch.policies.router_cascade import RouterCascade

#: Least share of (prompt, model) answers with a recorded confidence for it to be usable.
MIN_SIGNAL_SHARE = 0.5


def needs_confidence(table: OutcomeTable) -> str | None:
    """Why the recorded-confidence policies do not apply, or ``None``."""
    known = table.known
    share = float((~np.isnan(table.confidence) & known).sum() / max(known.sum(), 1))
    if share < MIN_SIGNAL_SHARE:
        return f"only {share:.0%} of answers carry a recorded confidence"
    return None


def needs_responses_only(table: OutcomeTable) -> str | None:
    """The learned scorer applies where responses exist and no confidence is recorded."""
    has = np.vectorize(lambda r: isinstance(r, str) and bool(r), otypes=[bool])(table.responses)
    if has.mean() < MIN_SIGNAL_SHARE:
        return "the table records too few responses for a learned scorer"
    if needs_confidence(table) is None:
        return "the recorded confidence is used instead"
    return None


@benchmark_policy("cascade-frugalgpt", family="cascade", applies=needs_confidence)
def frugalgpt() -> Policy:
    """FrugalGPT on the recorded confidence."""
    return FrugalGPTCascade(signal="recorded")


@benchmark_policy("cascade-frugalgpt-scorer", family="cascade", applies=needs_responses_only)
def frugalgpt_scorer() -> Policy:
    """FrugalGPT with its learned answer scorer."""
    return FrugalGPTCascade(signal="frugalgpt-scorer")


@benchmark_policy("cascade-guaranteed", family="cascade", applies=needs_confidence)
def guaranteed() -> Policy:
    """The certified cascade."""
    return GuaranteedCascade(signal="recorded")


@benchmark_policy("cascade-routing", family="composition", applies=needs_confidence)
def cascade_routing() -> Policy:
    """Cascade routing with the kNN router."""
    return CascadeRouting()


@benchmark_policy("router-cascade", family="composition", applies=needs_confidence)
def router_cascade() -> Policy:
    """kNN router first, recorded confidence to escalate."""
    return RouterCascade()
