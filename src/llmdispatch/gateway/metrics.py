"""Prometheus metrics of one gateway process (its own registry, not the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class GatewayMetrics:
    """Requests, latency and time to first token, decisions, cost, escalations, fallbacks."""

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

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
