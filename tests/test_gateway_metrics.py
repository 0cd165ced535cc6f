"""Gateway metrics: a registry per app, and exposition text with the recorded values."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from llmdispatch.gateway.metrics import CONTENT_TYPE, GatewayMetrics


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_render_what_was_recorded() -> None:
    m = GatewayMetrics()
    m.observe_request("router", "small", 200, 0.2, decision="small")
    m.observe_request("router", "large", 200, 1.5, decision="small")
    m.observe_request("router", "", 429, 0.001)
    m.ttft.labels("small").observe(0.05)
    m.cost.labels("large").inc(0.02)
    m.cost.labels("large").inc(0.01)
    m.escalations.labels("cascade").inc(2)
    m.fallbacks.labels("large", "http_503").inc()
    m.budget_remaining.labels("global").set(9.5)
    m.rate_limited.labels("rate").inc()
    m.circuit_open.labels("large").set(1)
    m.log_dropped.set(3)
    s = _samples(m.render())
    req = "llmdispatch_requests_total"
    assert s[(req, (("model", "small"), ("policy", "router"), ("status", "200")))] == 1
    assert s[(req, (("model", ""), ("policy", "router"), ("status", "429")))] == 1
    assert s[("llmdispatch_decisions_total", (("model", "small"), ("policy", "router")))] == 2
    assert s[("llmdispatch_request_seconds_count", (("model", "large"),))] == 1
    assert s[("llmdispatch_request_seconds_sum", (("model", "large"),))] == 1.5
    assert ("llmdispatch_request_seconds_count", (("model", ""),)) not in s
    bucket = ("le", "0.25"), ("model", "small")
    assert s[("llmdispatch_request_seconds_bucket", bucket)] == 1
    assert s[("llmdispatch_time_to_first_token_seconds_count", (("model", "small"),))] == 1
    assert abs(s[("llmdispatch_cost_usd_total", (("model", "large"),))] - 0.03) < 1e-12
    assert s[("llmdispatch_escalations_total", (("policy", "cascade"),))] == 2
    assert s[("llmdispatch_fallbacks_total", (("model", "large"), ("reason", "http_503")))] == 1
    assert s[("llmdispatch_budget_remaining_usd", (("scope", "global"),))] == 9.5
    assert s[("llmdispatch_rate_limited_total", (("reason", "rate"),))] == 1
    assert s[("llmdispatch_circuit_open", (("model", "large"),))] == 1
    assert s[("llmdispatch_log_dropped_rows", ())] == 3
    assert CONTENT_TYPE.startswith("text/plain")


def test_observe_request_counts_escalations_and_reuses_labelled_children() -> None:
    m = GatewayMetrics()
    for _ in range(3):
        m.observe_request("cascade", "large", 200, 0.1, decision="small", escalations=1)
    m.observe_request("cascade", "small", 200, 0.1, decision="small", escalations=0)
    s = _samples(m.render())
    assert s[("llmdispatch_escalations_total", (("policy", "cascade"),))] == 3
    assert s[("llmdispatch_decisions_total", (("model", "small"), ("policy", "cascade")))] == 4
    assert m.child(m.cost, "large") is m.child(m.cost, "large") is m.cost.labels("large")


def test_each_app_has_its_own_registry() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()  # a second app would clash in one registry
    a.cost.labels("m").inc(1.0)
    assert _samples(b.render()).get(("llmdispatch_cost_usd_total", (("model", "m"),))) is None
    assert REGISTRY.get_sample_value("llmdispatch_cost_usd_total", {"model": "m"}) is None
