"""Prometheus metrics of one gateway process, in its own registry (not the global one).

Exposed names (counters get ``_total``, histograms ``_bucket``/``_sum``/``_count``):

========================================== =============================================
``llmdispatch_requests_total``             requests by policy, answering model, status
``llmdispatch_request_seconds``            end-to-end latency by answering model
``llmdispatch_time_to_first_token_seconds`` streamed time to first token by model
``llmdispatch_decisions_total``            a policy's first choice by model
``llmdispatch_decision_batch_size``        requests whose routing estimates were batched
``llmdispatch_cost_usd_total``             USD spent by model
``llmdispatch_escalations_total``          extra model calls made by cascades, by policy
``llmdispatch_fallbacks_total``            failures answered by another model, by reason
``llmdispatch_budget_remaining_usd``       USD left per budget scope
``llmdispatch_rate_limited_total``         requests refused by a limit or budget, by reason
``llmdispatch_circuit_open``               1 while a model's breaker is open
``llmdispatch_log_dropped_rows``           request-log rows the database refused
``llmdispatch_policy_reloads_total``       artifacts reloaded while serving, by outcome
========================================== =============================================
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Seconds; from a cache hit (1 ms) to a long generation (1 min).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

#: Requests per batch of routing decisions.
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

#: The media type of :meth:`GatewayMetrics.render`'s output.
CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    """Requests, latency and time to first token, decisions, cost, escalations, fallbacks,
    budgets, limits, breakers and reloads (see the module docstring for the names)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmdispatch_requests",
            "Requests by policy, model and status",
            ["policy", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "llmdispatch_request_seconds",
            "End-to-end request latency by answering model",
            ["model"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "llmdispatch_time_to_first_token_seconds",
            "Time to first streamed token by model",
            ["model"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "llmdispatch_decisions",
            "First choice of a policy by model",
            ["policy", "model"],
            registry=r,
        )
        self.decision_batch = Histogram(
            "llmdispatch_decision_batch_size",
            "Requests that reached the policy together and were estimated in one batch",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.cost = Counter("llmdispatch_cost_usd", "Spent USD by model", ["model"], registry=r)
        self.escalations = Counter(
            "llmdispatch_escalations",
            "Extra model calls made by cascades",
            ["policy"],
            registry=r,
        )
        self.fallbacks = Counter(
            "llmdispatch_fallbacks",
            "Provider failures answered by another model",
            ["model", "reason"],
            registry=r,
        )
        self.budget_remaining = Gauge(
            "llmdispatch_budget_remaining_usd",
            "USD left per budget scope",
            ["scope"],
            registry=r,
        )
        self.rate_limited = Counter(
            "llmdispatch_rate_limited",
            "Requests refused by a rate limit or budget",
            ["reason"],
            registry=r,
        )
        self.circuit_open = Gauge(
            "llmdispatch_circuit_open",
            "1 while a model's circuit breaker is open",
            ["model"],
            registry=r,
        )
        self.log_dropped = Gauge(
            "llmdispatch_log_dropped_rows",
            "Request-log rows the database refused since start",
            registry=r,
        )
        self.policy_reloads = Counter(
            "llmdispatch_policy_reloads",
            "Policies reloaded from a changed artifact while serving (ok or failed)",
            ["policy", "outcome"],
            registry=r,
        )
        # ``labels()`` checks its arguments and takes a lock on every call; the children it
        # returns are looked up here instead (as many as the registry itself keeps).
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered."""
        key = (metric, *values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def observe_request(
        self,
        policy: str,
        model: str,
        status: int,
        seconds: float,
        decision: str | None = None,
        escalations: int = 0,
    ) -> None:
        """Count a finished request, its latency, (if routed) the policy's first choice and
        (for cascades) the extra model calls."""
        self.child(self.requests, policy, model, str(status)).inc()
        if model:
            self.child(self.latency, model).observe(seconds)
        if decision:
            self.child(self.decisions, policy, decision).inc()
        if escalations > 0:
            self.child(self.escalations, policy).inc(escalations)

    def render(self) -> bytes:
        """The exposition text (serve it with :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
