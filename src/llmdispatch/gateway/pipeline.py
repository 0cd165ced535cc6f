"""The decision pipeline: which models may answer, the policy's live flow, calls, fallbacks.

A request's path: key → policy (or pass-through for a real model name) → allowed models
(configured, right modality and context window, breaker closed, within the key's rights and,
with ``on_exhausted: cheaper``, within budget) → the policy's live flow (``Policy.start``)
yields calls, each reserved against the budgets, sent to its provider (retries inside), fed
back to the policy → the reply → settle the budgets, metrics, request log.

A call that still fails is thrown into the policy (a cascade escalates past it); if the
policy does not handle it, the failed model is excluded and the policy decides again: the
fallback is the next-best allowed model by the same utility (``Plan.fallbacks``).

Session affinity: a conversation (``x-session-id`` header or the ``user`` field) is pinned to
the model that answered it. A router sends the next turns straight to that model (its own
choice only if the pinned model fails); a cascade starts at the pinned model's rung, so it
stays there unless its signal escalates.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmdispatch.catalog import ModelCard
from llmdispatch.gateway.auth import KeyInfo, KeyRing, check_rights
from llmdispatch.gateway.batching import DecisionBatcher
from llmdispatch.gateway.config import GatewayConfig
from llmdispatch.gateway.errors import GatewayError
from llmdispatch.gateway.metrics import GatewayMetrics
from llmdispatch.gateway.openai_format import attempt_result, split_prompt
from llmdispatch.gateway.policy_loader import load_policies
from llmdispatch.gateway.providers import Provider, UpstreamError, make_transport
from llmdispatch.gateway.reloader import signature
from llmdispatch.gateway.state import BudgetExceeded, GatewayState, Scope, make_state
from llmdispatch.policies.bandit import BanditRouter, UnknownRequestError
from llmdispatch.policies.base import Attempt, AttemptResult, Policy
from llmdispatch.policies.costs import card_fits
from llmdispatch.policies.linear_bandit import BanditError
from llmdispatch.policies.router import Router
from llmdispatch.query import Query

if TYPE_CHECKING:
    from llmdispatch.gateway.requestlog import RequestLog

PREFIX = "llmdispatch/"
#: Output tokens assumed when a request sets no ``max_tokens`` (budget reservations).
DEFAULT_MAX_TOKENS = 512
#: Policies that call exactly one model (their answers can be streamed as they come).
SINGLE_SHOT: tuple[type[Policy], ...] = (Router, BanditRouter)
#: Served requests remembered for preference feedback to online learners.
RECENT_LIMIT = 50_000

Flow = Generator[Attempt, AttemptResult, str]


@dataclass
class Trace:
    """What happened to one request (headers, log row, metrics)."""

    request_id: str
    policy: str
    key: KeyInfo | None
    started: float = field(default_factory=time.perf_counter)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    cost: float = 0.0
    fallbacks: int = 0
    first_model: str | None = None
    est_quality: float | None = None
    est_cost: float | None = None
    ttft_ms: float | None = None
    pinned: str | None = None

    @property
    def rungs(self) -> int:
        """Models whose answer came back (a cascade may call several)."""
        return sum(1 for a in self.attempts if a.get("purpose") == "answer" and "error" not in a)


def decision_headers(trace: Trace, model: str) -> dict[str, str]:
    """The ``x-llmdispatch-*`` response headers."""
    h = {
        "x-llmdispatch-request-id": trace.request_id,
        "x-llmdispatch-model": model,
        "x-llmdispatch-policy": trace.policy,
        "x-llmdispatch-cost": f"{trace.cost:.8f}",
        "x-llmdispatch-rungs": str(trace.rungs),
        "x-llmdispatch-fallbacks": str(trace.fallbacks),
    }
    if trace.est_quality is not None:
        h["x-llmdispatch-estimated-quality"] = f"{trace.est_quality:.4f}"
    if trace.est_cost is not None:
        h["x-llmdispatch-estimated-cost"] = f"{trace.est_cost:.8f}"
    if trace.pinned is not None:
        h["x-llmdispatch-affinity"] = trace.pinned
    return h


def pass_through(model: str) -> Flow:
    """The flow of a request that names a real model: that model, unrouted."""
    result = yield Attempt(model=model, reason="pass-through")
    return result.model


def with_affinity(pinned: str, policy: Policy, query: Query, options: frozenset[str]) -> Flow:
    """Call the pinned model; if it fails, let the policy choose among the others."""
    try:
        result = yield Attempt(model=pinned, reason="session affinity")
    except (UpstreamError, BudgetExceeded):
        rest = options - {pinned}
        if not rest:
            raise
        return (yield from policy.start(query, rest))
    return result.model


class Gateway:
    """The service's state: configuration, providers, policies, shared state, log, metrics."""

    def __init__(self, cfg: GatewayConfig) -> None:
        from threadpoolctl import threadpool_limits

        # One BLAS thread per worker: a router's per-request matrix-vector products are tiny,
        # and OpenBLAS spinning up threads for them costs 100× the product on a busy machine.
        # Concurrency comes from the event loop and from workers, not from BLAS.
        threadpool_limits(1)
        self.cfg = cfg
        self.cards: dict[str, ModelCard] = {n: ep.card(n) for n, ep in cfg.models.items()}
        self.transport = make_transport(cfg.upstream_transport)
        self.providers = {
            name: Provider(name, ep, self.transport, cfg.retry_backoff_s, cfg.max_retry_wait_s)
            for name, ep in cfg.models.items()
        }
        self.artifact_signatures = {  # before loading: a save from now on is a change
            name: signature(ref) for name, ref in cfg.policies.items() if ref.artifact is not None
        }
        self.policies = load_policies(cfg)
        self.state: GatewayState = make_state(cfg.state, cfg.state_prefix)
        if cfg.state != "memory":
            from llmdispatch.gateway.learner_state import learner_store

            store = learner_store(cfg.state)
            for name, policy in self.policies.items():
                if isinstance(policy, BanditRouter):
                    policy.attach_store(store, f"{cfg.state_prefix}:{name}")
        self.log: RequestLog | None = None
        if cfg.database:
            from llmdispatch.gateway.requestlog import RequestLog  # SQLAlchemy only when used

            self.log = RequestLog(cfg.database)
        self.metrics = GatewayMetrics()
        self.batcher = DecisionBatcher(cfg.max_decision_batch, self.metrics.decision_batch.observe)
        self.keys = KeyRing(cfg.keys)
        self.recent: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.created = int(time.time())

    async def close(self) -> None:
        """Release connections and flush the log."""
        await self.transport.aclose()
        await self.state.close()
        if self.log is not None:
            self.log.close()

    # ---- admission -------------------------------------------------------------------------
    def resolve(self, body: dict[str, Any], key: KeyInfo | None) -> tuple[Policy | None, str, str]:
        """``(policy, policy name, model)``: a policy for virtual models, else pass-through."""
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise GatewayError(400, "'model' is required")
        if name in self.providers:
            check_rights(key, None, name)
            return None, "pass-through", name
        if name.startswith(PREFIX):
            pname = name[len(PREFIX) :]
            if pname == "auto":
                if self.cfg.default_policy is None:
                    raise GatewayError(404, "no default policy is configured", "not_found_error")
                pname = self.cfg.default_policy
            policy = self.policies.get(pname)
            if policy is not None:
                check_rights(key, pname, None)
                return policy, pname, ""
        known = ", ".join(sorted([*self.providers, *(PREFIX + p for p in self.policies)]))
        raise GatewayError(
            404, f"model {name!r} does not exist; available: {known}", "not_found_error"
        )

    async def admit(self, key: KeyInfo | None) -> None:
        """Check the key's and the global requests- and tokens-per-minute limits (429)."""
        limits = (
            (f"key:{key.id}" if key else None, key.requests_per_minute if key else None),
            ("global", self.cfg.budgets.requests_per_minute),
        )
        for scope, limit in limits:
            if scope and limit:
                wait = await self.state.allow_rate(scope, limit)
                if wait is not None:
                    self.metrics.rate_limited.labels("rate").inc()
                    raise GatewayError(
                        429,
                        f"rate limit of {limit} requests/minute reached for {scope}",
                        "rate_limit_exceeded",
                        **{"retry-after": str(int(wait) + 1)},
                    )
        if (reason := await self.over_limit(key)) is not None:
            self.metrics.rate_limited.labels("tokens").inc()
            raise GatewayError(429, reason, "rate_limit_exceeded", **{"retry-after": "60"})

    async def over_limit(self, key: KeyInfo | None) -> str | None:
        """Which tokens-per-minute limit this request's key or the gateway has reached."""
        checks = [("global", self.cfg.budgets.tokens_per_minute)]
        if key is not None:
            checks.append((f"key:{key.id}", key.tokens_per_minute))
        for scope, limit in checks:
            if limit and await self.state.window_used(f"tok:{scope}") >= limit:
                return f"token limit of {limit} tokens/minute reached for {scope}"
        return None

    async def saturated_models(self, models: list[str]) -> set[str]:
        """Models at their own requests- or tokens-per-minute limit (routed around)."""
        out = set()
        for m in models:
            ep = self.cfg.models[m]
            if (
                ep.requests_per_minute
                and await self.state.window_used(f"req:model:{m}") >= ep.requests_per_minute
            ) or (
                ep.tokens_per_minute
                and await self.state.window_used(f"tok:model:{m}") >= ep.tokens_per_minute
            ):
                out.add(m)
        return out

    async def count_usage(self, key: KeyInfo | None, model: str, tokens: int) -> None:
        """Per-minute request and token counters behind the configured rate limits."""
        ep = self.cfg.models[model]
        if ep.requests_per_minute:
            await self.state.window_add(f"req:model:{model}", 1)
        if ep.tokens_per_minute:
            await self.state.window_add(f"tok:model:{model}", tokens)
        if self.cfg.budgets.tokens_per_minute:
            await self.state.window_add("tok:global", tokens)
        if key is not None and key.tokens_per_minute:
            await self.state.window_add(f"tok:key:{key.id}", tokens)

    async def allowed_models(
        self, key: KeyInfo | None, query: Query, body: dict[str, Any]
    ) -> tuple[set[str], dict[str, tuple[int, str]]]:
        """Models that may answer, and why each other one may not (HTTP status, reason)."""
        models = list(self.providers)
        reasons: dict[str, tuple[int, str]] = {}
        for m in models:
            if key is not None and key.models is not None and m not in key.models:
                reasons[m] = (403, f"key {key.id!r} may not use it")
            elif (why := card_fits(self.cards[m], query)) is not None:
                reasons[m] = (400, why)
        for m in await self.state.open_circuits([m for m in models if m not in reasons]):
            reasons[m] = (503, "circuit open after repeated failures")
        for m in await self.saturated_models([m for m in models if m not in reasons]):
            reasons[m] = (503, "at its requests- or tokens-per-minute limit")
        if self.cfg.budgets.on_exhausted == "cheaper":
            spent: dict[str, float] = {}
            for m in models:
                if m in reasons:
                    continue
                estimate = self.estimate(m, query, body)
                for s in self.scopes(key, m):
                    if s.name not in spent:
                        spent[s.name] = await self.state.spent(s)
                    if spent[s.name] + estimate > s.limit:
                        reasons[m] = (429, f"budget {s.name!r} cannot cover ~${estimate:.6f}")
                        break
        return {m for m in models if m not in reasons}, reasons

    @staticmethod
    def refuse(reasons: dict[str, tuple[int, str]], target: str | None) -> GatewayError:
        """The error for a request no allowed model can take (or whose model is refused)."""
        if target:
            status, why = reasons[target]
            kind = {429: "budget_exceeded", 503: "service_unavailable"}.get(status)
            return GatewayError(
                status, f"model {target!r} is unavailable: {why}", kind or "invalid_request_error"
            )
        statuses = {s for s, _ in reasons.values()}
        status = next((s for s in (503, 429, 400, 403) if s in statuses), 400)
        detail = "; ".join(f"{m}: {why}" for m, (_, why) in reasons.items())
        kind = {429: "budget_exceeded", 503: "service_unavailable"}.get(status)
        return GatewayError(
            status, f"no model can take this request ({detail})", kind or "invalid_request_error"
        )

    # ---- budgets ---------------------------------------------------------------------------
    def scopes(self, key: KeyInfo | None, model: str) -> list[Scope]:
        """Every budget a call to ``model`` spends from."""
        b = self.cfg.budgets
        out = []
        if b.global_usd is not None:
            out.append(Scope("global", b.global_usd, b.window))
        if key is not None and key.budget_usd is not None:
            out.append(Scope(f"key:{key.id}", key.budget_usd, key.budget_window))
        if model in b.per_model_usd:
            out.append(Scope(f"model:{model}", b.per_model_usd[model], b.window))
        return out

    def all_scopes(self) -> list[Scope]:
        """Every configured budget (the remaining-budget gauges)."""
        b = self.cfg.budgets
        out = [Scope("global", b.global_usd, b.window)] if b.global_usd is not None else []
        out += [
            Scope(f"key:{k.id}", k.budget_usd, k.budget_window)
            for k in self.cfg.keys
            if k.budget_usd is not None
        ]
        out += [Scope(f"model:{m}", limit, b.window) for m, limit in b.per_model_usd.items()]
        return out

    def estimate(self, model: str, query: Query, body: dict[str, Any]) -> float:
        """A call's cost before it is made (prompt tokens and ``max_tokens``)."""
        out = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        cost = self.cards[model].cost(query.estimated_tokens_in, int(out))
        return 0.0 if cost != cost else cost

    # ---- one call --------------------------------------------------------------------------
    async def call(
        self, attempt: Attempt, body: dict[str, Any], query: Query, trace: Trace
    ) -> tuple[AttemptResult, dict[str, Any]]:
        """Reserve, call with retries, settle, record; raises UpstreamError/BudgetExceeded.

        Returns the policy's view of the answer and the upstream's response body.
        """
        model = attempt.model
        provider = self.providers.get(model)
        if provider is None:
            raise UpstreamError(model, "model is not configured in this gateway", None, True)
        request = {**body, **attempt.options}
        if attempt.messages is not None:
            request["messages"] = list(attempt.messages)
        scopes = self.scopes(trace.key, model)
        estimate = self.estimate(model, query, request) if scopes else 0.0
        reservation = await self.state.reserve(scopes, estimate)
        try:
            call = await provider.complete(request)
        except UpstreamError as exc:
            await self.state.settle(reservation, 0.0)
            await self.record(model, False)
            trace.attempts.append({"model": model, "purpose": attempt.purpose, "error": str(exc)})
            raise
        result = attempt_result(model, call.body, self.cards[model], call.latency_ms)
        await self.state.settle(reservation, result.cost)
        await self.count_usage(trace.key, model, result.tokens_in + result.tokens_out)
        await self.record(model, True)
        trace.cost += result.cost
        self.metrics.child(self.metrics.cost, model).inc(result.cost)
        trace.attempts.append(
            {
                "model": model,
                "purpose": attempt.purpose,
                "cost": result.cost,
                "latency_ms": round(call.latency_ms, 3),
                "retries": call.retries,
            }
        )
        return result, call.body

    async def record(self, model: str, ok: bool) -> None:
        """Feed the model's circuit breaker."""
        b = self.cfg.breaker
        await self.state.record_result(model, ok, b.failures, b.cooldown_s)

    # ---- the policy's flow -----------------------------------------------------------------
    def flow(
        self,
        policy: Policy | None,
        query: Query,
        options: frozenset[str],
        target: str,
        trace: Trace,
    ) -> Flow:
        """The live flow: pass-through, the policy, or the policy held to a pinned model."""
        if policy is None:
            if target not in options:
                raise RuntimeError(f"model {target!r} is no longer available")
            return pass_through(target)
        pinned = trace.pinned
        if pinned is not None and pinned in options:
            if isinstance(policy, SINGLE_SHOT):
                return with_affinity(pinned, policy, query, options)
            try:
                plan = policy.explain(query, options)
            except (NotImplementedError, ValueError, RuntimeError):
                return policy.start(query, options)
            order = [c.model for c in plan.candidates if c.excluded is None]
            if pinned in order:  # start the ladder at the pinned rung
                options = options - frozenset(order[: order.index(pinned)])
        return policy.start(query, options)

    def note_first(self, trace: Trace, attempt: Attempt) -> None:
        """The policy's first choice and its estimates (headers, decision metrics)."""
        if trace.first_model is None:
            trace.first_model = attempt.model
            trace.est_quality = attempt.quality
            trace.est_cost = attempt.cost

    def fallback(self, exc: Exception, model: str) -> None:
        """Count a failure answered by another model (or a 429 when budgets reject)."""
        if isinstance(exc, BudgetExceeded) and self.cfg.budgets.on_exhausted != "cheaper":
            raise GatewayError(429, str(exc), "budget_exceeded") from exc
        reason = exc.reason if isinstance(exc, UpstreamError) else "budget"
        self.metrics.fallbacks.labels(model, reason).inc()

    async def run_policy(
        self,
        policy: Policy | None,
        query: Query,
        allowed: set[str],
        body: dict[str, Any],
        trace: Trace,
        target: str,
    ) -> tuple[str, dict[str, Any]]:
        """Run a policy (or a pass-through to ``target``) to its reply; returns (model, body)."""
        if policy is not None:
            await self.batcher.prefetch(policy, query)
        excluded: set[str] = set()  # models that failed: the next round decides without them
        answers: dict[str, dict[str, Any]] = {}
        last_error: Exception | None = None
        for _round in range(self.cfg.max_fallbacks + 1):
            options = frozenset(allowed - excluded)
            if not options:
                break
            try:
                flow = self.flow(policy, query, options, target, trace)
                attempt = next(flow)
            except (ValueError, RuntimeError) as exc:  # no allowed model for this request
                if last_error is not None:
                    break  # what is left cannot answer: report the upstream failure
                raise GatewayError(503, str(exc), "service_unavailable") from exc
            self.note_first(trace, attempt)
            while True:
                try:
                    result, answer = await self.call(attempt, body, query, trace)
                except (UpstreamError, BudgetExceeded) as exc:
                    last_error = exc
                    self.fallback(exc, attempt.model)
                    excluded.add(attempt.model)
                    try:
                        attempt = flow.throw(exc)  # a cascade escalates past the failed rung
                        continue
                    except StopIteration as stop:
                        model = str(stop.value)
                        return model, answers[model]
                    except (UpstreamError, BudgetExceeded, ValueError, RuntimeError) as gave_up:
                        # The policy did not recover (every rung failed, or it re-raised).
                        if not isinstance(gave_up, UpstreamError | BudgetExceeded):
                            last_error = gave_up
                        trace.fallbacks += 1
                        break
                answers[attempt.model] = answer
                try:
                    attempt = flow.send(result)
                except StopIteration as stop:
                    model = str(stop.value)
                    return model, answers[model]
        if isinstance(last_error, BudgetExceeded):
            raise GatewayError(429, str(last_error), "budget_exceeded")
        raise GatewayError(
            502,
            f"no model could answer: {last_error or 'every allowed model failed'}",
            "upstream_error",
        )

    async def remember(
        self, trace: Trace, session: str | None, policy: Policy | None, model: str, query: Query
    ) -> None:
        """After a routed answer: pin the session, keep the query for preference feedback."""
        if policy is None:
            return
        if session:
            await self.state.pin(session, model, self.cfg.affinity_ttl_s)
        if isinstance(policy, BanditRouter):
            self.recent[trace.request_id] = (trace.policy, query.text)
            while len(self.recent) > RECENT_LIMIT:
                self.recent.popitem(last=False)

    # ---- accounting ------------------------------------------------------------------------
    def finish(
        self,
        trace: Trace,
        model: str,
        answer: dict[str, Any] | None,
        query: Query,
        status: int,
        error: str | None,
    ) -> None:
        """Metrics and the request-log row of a finished request."""
        seconds = time.perf_counter() - trace.started
        self.metrics.observe_request(
            trace.policy, model, status, seconds, trace.first_model, trace.rungs - 1
        )
        if self.log is None:
            return
        usage = (answer or {}).get("usage") or {}
        choices = (answer or {}).get("choices") or [{}]
        text = (choices[0].get("message") or {}).get("content") if choices else None
        system, prompt = None, None
        if self.cfg.log_prompts and query.messages:
            system, prompt, _ = split_prompt(list(query.messages))
        self.log.log_request(
            {
                "id": trace.request_id,
                "created": time.time(),
                "key_id": trace.key.id if trace.key else None,
                "policy": trace.policy,
                "model": model or None,
                "attempts": trace.attempts,
                "system": system,
                "prompt": prompt,
                "response": text if self.cfg.log_prompts else None,
                "tokens_in": usage.get("prompt_tokens"),
                "tokens_out": usage.get("completion_tokens"),
                "cost_usd": trace.cost,
                "latency_ms": seconds * 1000,
                "ttft_ms": trace.ttft_ms,
                "status": status,
                "error": error,
                "est_quality": trace.est_quality,
                "est_cost": trace.est_cost,
            }
        )

    async def refresh_gauges(self) -> None:
        """Set the gauges read at scrape time: budgets left, open breakers, dropped log rows."""
        m = self.metrics
        for scope in self.all_scopes():
            m.budget_remaining.labels(scope.name).set(await self.state.remaining(scope))
        for model in self.providers:
            status = await self.state.breaker_status(model)
            m.circuit_open.labels(model).set(1.0 if status == "open" else 0.0)
        if self.log is not None:
            m.log_dropped.set(self.log.dropped)

    # ---- feedback --------------------------------------------------------------------------
    async def feedback(self, body: Any) -> dict[str, Any]:
        """Store a reward or preference; teach online learners. 404 for unknown ids."""
        if not isinstance(body, dict):
            raise GatewayError(400, "request body must be a JSON object")
        rid = body.get("request_id")
        if not isinstance(rid, str) or not rid:
            raise GatewayError(400, "'request_id' is required")
        reward = body.get("reward")
        preference = body.get("preference")
        if reward is None and preference is None:
            raise GatewayError(400, "send a 'reward' in [0, 1] or a 'preference'")
        if reward is not None and (
            isinstance(reward, bool)
            or not isinstance(reward, int | float)
            or not 0.0 <= float(reward) <= 1.0
        ):
            raise GatewayError(400, "'reward' must be a number in [0, 1]")
        if preference is not None and not (
            isinstance(preference, dict)
            and isinstance(preference.get("chosen"), str)
            and isinstance(preference.get("rejected"), str)
        ):
            raise GatewayError(400, "'preference' must be {'chosen': ..., 'rejected': ...}")
        known = learned = False
        if reward is not None:
            for policy in self.policies.values():
                if isinstance(policy, BanditRouter):
                    try:
                        policy.feedback(rid, float(reward))
                    except UnknownRequestError:
                        continue
                    known = learned = True
                    break
        if preference is not None and rid in self.recent:
            known = True
            pname, text = self.recent[rid]
            learner = self.policies.get(pname)
            chosen, rejected = preference["chosen"], preference["rejected"]
            models = set(getattr(learner, "models_", ()))
            if isinstance(learner, BanditRouter) and {chosen, rejected} <= models:
                try:
                    learner.feedback_preference(Query(text=text), chosen, rejected)
                except BanditError as exc:
                    raise GatewayError(400, str(exc)) from exc
                learned = True
        log = self.log
        if log is not None and (known or await asyncio.to_thread(log.has_request, rid)):
            known = True
            log.log_feedback(rid, None if reward is None else float(reward), preference)
        if not known:
            raise GatewayError(404, f"unknown request id {rid!r}", "not_found_error")
        return {"request_id": rid, "stored": log is not None, "learned": learned}
