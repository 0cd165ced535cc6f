"""The OpenAI-compatible gateway: authenticate, decide, call, escalate, fall back, account.

A request's path: key → parse → policy (or pass-through for a real model name) → the policy's
live flow (``Policy.start``) yields calls, each reserved against the budgets, sent to its
provider (retries inside), fed back to the policy → the reply, with the decision in headers →
settle the budgets, metrics, request log. A call that still fails is thrown into the policy
(a cascade escalates past it); if the policy does not handle it, the failed model is excluded
and the policy decides again (fallback to the next-best model by the same utility).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from llmdispatch.artifacts import load_artifact
from llmdispatch.catalog import ModelCard
from llmdispatch.gateway.auth import AuthError, KeyInfo, KeyRing, check_rights
from llmdispatch.gateway.config import GatewayConfig
from llmdispatch.gateway.metrics import GatewayMetrics
from llmdispatch.gateway.openapi import openapi_document
from llmdispatch.gateway.providers import CallResult, Provider, UpstreamError, make_client
from llmdispatch.gateway.state import BudgetExceeded, GatewayState, Scope, make_state
from llmdispatch.policies.bandit import BanditRouter, UnknownRequestError
from llmdispatch.policies.base import Attempt, AttemptResult, Policy
from llmdispatch.policies.router import Router
from llmdispatch.query import Query

if TYPE_CHECKING:
    from llmdispatch.gateway.requestlog import RequestLog

PREFIX = "llmdispatch/"
AFFINITY_TTL_S = 3600.0
#: Output tokens assumed when a request sets no ``max_tokens`` (budget reservations).
DEFAULT_MAX_TOKENS = 512


class GatewayError(Exception):
    """An error answered with an OpenAI-style body and this HTTP status."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", **headers: str
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headers = headers


def error_response(status: int, message: str, kind: str, headers: dict[str, str]) -> Response:
    """``{"error": {"message", "type", "code"}}`` as the OpenAI API sends it."""
    body = orjson.dumps({"error": {"message": message, "type": kind, "code": status}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def build_query(body: dict[str, Any], session: str | None, task: str | None = None) -> Query:
    """The routing view of a chat request: text, modalities, turns, user.

    ``task`` (header ``x-llmdispatch-task``) names the request's benchmark or task label, so
    signals calibrated per label (e.g. per data set in ``cascades9``) use that calibrator.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise GatewayError(400, "'messages' must be a non-empty list")
    parts: list[str] = []
    modalities = {"text"}
    turns = 0
    system: str | None = None
    for msg in messages:
        if not isinstance(msg, dict) or "role" not in msg:
            raise GatewayError(400, "every message needs a 'role'")
        content = msg.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    texts.append(str(part.get("text", "")))
                elif kind in ("image_url", "input_image", "image"):
                    modalities.add("image")
                elif kind in ("input_audio", "audio"):
                    modalities.add("audio")
            content = "".join(texts)
        if msg["role"] == "system":
            system = str(content or "")
        elif msg["role"] == "user":
            turns += 1
            parts.append(str(content or ""))
        elif content:
            parts.append(str(content))
    text = "\n\n".join(parts)
    if system:
        text = f"{system}\n\n{text}"
    return Query(
        text=text,
        messages=tuple(messages),
        modalities=frozenset(modalities),
        turns=max(turns, 1),
        user=session,
        metadata={"dataset": task} if task else {},
    )


def attempt_result(model: str, call: CallResult, card: ModelCard) -> AttemptResult:
    """A provider's answer in the form policies read (text, usage, cost, log-probs)."""
    choices = call.body.get("choices") or [{}]
    first = choices[0]
    text = str((first.get("message") or {}).get("content") or "")
    usage = call.body.get("usage") or {}
    tin, tout = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cost = card.cost(tin, tout)
    lp = (first.get("logprobs") or {}).get("content") or []
    token_logprobs = tuple(float(t.get("logprob", 0.0)) for t in lp) or None
    top = tuple(
        tuple(float(x.get("logprob", 0.0)) for x in t.get("top_logprobs") or []) for t in lp
    )
    samples = tuple(str((c.get("message") or {}).get("content") or "") for c in choices[1:])
    return AttemptResult(
        model=model,
        text=text,
        tokens_in=tin,
        tokens_out=tout,
        cost=0.0 if cost != cost else cost,
        latency_ms=call.latency_ms,
        token_logprobs=token_logprobs,
        top_logprobs=top or None,
        samples=samples,
    )


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


class Gateway:
    """The service: configuration, providers, policies, state, log and metrics."""

    def __init__(self, cfg: GatewayConfig) -> None:
        from threadpoolctl import threadpool_limits

        # One BLAS thread per worker: a router's per-request matrix-vector products are tiny,
        # and OpenBLAS spinning up threads for them costs 100× the product on a busy machine.
        # Concurrency comes from the event loop and from workers, not from BLAS.
        threadpool_limits(1)
        self.cfg = cfg
        self.cards = {name: ep.card(name) for name, ep in cfg.models.items()}
        self.client = make_client()
        self.providers = {
            name: Provider(name, ep, self.client, cfg.retry_backoff_s)
            for name, ep in cfg.models.items()
        }
        self.policies: dict[str, Policy] = {}
        for name, ref in cfg.policies.items():
            policy, _meta = load_artifact(ref.artifact)
            policy.label = name
            known = set(getattr(policy, "models_", ()) or ())
            if known and not known & set(cfg.models):
                raise ValueError(
                    f"policy {name!r} routes among {sorted(known)}, none of which is configured"
                )
            self.policies[name] = policy
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
        self.keys = KeyRing(cfg.keys)

    async def close(self) -> None:
        """Release connections and flush the log."""
        await self.client.aclose()
        await self.state.close()
        if self.log is not None:
            self.log.close()

    # ---- budgets -------------------------------------------------------------------------
    def scopes(self, key: KeyInfo | None, model: str) -> list[Scope]:
        """Every budget a call to ``model`` spends from."""
        b = self.cfg.budgets
        out = []
        if b.global_usd is not None:
            out.append(Scope("global", b.global_usd))
        if key is not None and key.budget_usd is not None:
            out.append(Scope(f"key:{key.id}", key.budget_usd))
        if model in b.per_model_usd:
            out.append(Scope(f"model:{model}", b.per_model_usd[model]))
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
                and (await self.state.window_used(f"req:model:{m}") >= ep.requests_per_minute)
            ) or (
                ep.tokens_per_minute
                and (await self.state.window_used(f"tok:model:{m}") >= ep.tokens_per_minute)
            ):
                out.add(m)
        return out

    def estimate(self, model: str, query: Query, body: dict[str, Any]) -> float:
        """A call's cost before it is made (prompt tokens and ``max_tokens``)."""
        out = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        cost = self.cards[model].cost(query.estimated_tokens_in, int(out))
        return 0.0 if cost != cost else cost

    # ---- one call ------------------------------------------------------------------------
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
        reserved = self.estimate(model, query, request) if scopes else 0.0
        if scopes:
            await self.state.reserve(scopes, reserved)
        try:
            call = await provider.complete(request)
        except UpstreamError as exc:
            if scopes:
                await self.state.settle(scopes, reserved, 0.0)
            await self.state.record_result(
                model, False, self.cfg.breaker.failures, self.cfg.breaker.cooldown_s
            )
            trace.attempts.append({"model": model, "purpose": attempt.purpose, "error": str(exc)})
            raise
        result = attempt_result(model, call, self.cards[model])
        if scopes:
            await self.state.settle(scopes, reserved, result.cost)
        await self.count_usage(trace.key, model, result.tokens_in + result.tokens_out)
        await self.state.record_result(
            model, True, self.cfg.breaker.failures, self.cfg.breaker.cooldown_s
        )
        trace.cost += result.cost
        self.metrics.cost.labels(model).inc(result.cost)
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

    # ---- the policy's flow ---------------------------------------------------------------
    async def run_policy(
        self,
        policy: Policy | None,
        query: Query,
        allowed: set[str],
        body: dict[str, Any],
        trace: Trace,
        target: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Run a policy (or a pass-through to ``target``) to its reply; returns (model, body)."""
        excluded: set[str] = set()
        answers: dict[str, dict[str, Any]] = {}
        last_error: Exception | None = None
        for _round in range(self.cfg.max_fallbacks + 1):
            options = frozenset(allowed - excluded)
            if not options:
                break
            flow = self._flow(policy, query, options, target)
            try:
                attempt = next(flow)
            except (ValueError, RuntimeError) as exc:  # no allowed model for this request
                if last_error is not None:
                    break  # what is left cannot answer: report the upstream failure
                raise GatewayError(503, str(exc), "service_unavailable") from exc
            self._note_first(trace, attempt)
            while True:
                try:
                    result, answer = await self.call(attempt, body, query, trace)
                except (UpstreamError, BudgetExceeded) as exc:
                    last_error = exc
                    if (
                        isinstance(exc, BudgetExceeded)
                        and self.cfg.budgets.on_exhausted != "cheaper"
                    ):
                        raise GatewayError(429, str(exc), "budget_exceeded") from exc
                    reason = exc.reason if isinstance(exc, UpstreamError) else "budget"
                    self.metrics.fallbacks.labels(attempt.model, reason).inc()
                    try:
                        attempt = flow.throw(exc)
                        continue
                    except StopIteration as stop:
                        model = str(stop.value)
                        return model, answers[model]
                    except (UpstreamError, BudgetExceeded):
                        excluded.add(attempt.model)
                        trace.fallbacks += 1
                        break
                    except RuntimeError as exc2:  # the policy gave up (every rung failed)
                        last_error = exc2
                        excluded.add(attempt.model)
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

    def _flow(
        self, policy: Policy | None, query: Query, options: frozenset[str], target: str | None
    ) -> Generator[Attempt, AttemptResult, str]:
        if policy is None:
            return _pass_through(target or "", options)
        return policy.start(query, options)

    @staticmethod
    def _note_first(trace: Trace, attempt: Attempt) -> None:
        if trace.first_model is None:
            trace.first_model = attempt.model
            trace.est_quality = attempt.quality
            trace.est_cost = attempt.cost


def _pass_through(model: str, allowed: frozenset[str]) -> Generator[Attempt, AttemptResult, str]:
    if model not in allowed:
        raise RuntimeError(f"model {model!r} is not available (circuit open or not allowed)")
    result = yield Attempt(model=model, reason="pass-through")
    return result.model


def _headers(trace: Trace, model: str, rungs: int) -> dict[str, str]:
    h = {
        "x-llmdispatch-request-id": trace.request_id,
        "x-llmdispatch-model": model,
        "x-llmdispatch-policy": trace.policy,
        "x-llmdispatch-cost": f"{trace.cost:.8f}",
        "x-llmdispatch-rungs": str(rungs),
        "x-llmdispatch-fallbacks": str(trace.fallbacks),
    }
    if trace.est_quality is not None:
        h["x-llmdispatch-estimated-quality"] = f"{trace.est_quality:.4f}"
    if trace.est_cost is not None:
        h["x-llmdispatch-estimated-cost"] = f"{trace.est_cost:.8f}"
    return h


def create_app(cfg: GatewayConfig) -> Starlette:
    """The ASGI application for a configuration."""
    gw = Gateway(cfg)
    created = int(time.time())

    def oops(exc: GatewayError) -> Response:
        return error_response(exc.status, str(exc), exc.kind, exc.headers)

    async def resolve(
        body: dict[str, Any], key: KeyInfo | None
    ) -> tuple[Policy | None, str, str | None]:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise GatewayError(400, "'model' is required")
        if name in gw.providers:
            check_rights(key, None, name)
            return None, "pass-through", name
        if name.startswith(PREFIX):
            pname = name[len(PREFIX) :]
            if pname == "auto":
                if cfg.default_policy is None:
                    raise GatewayError(404, "no default policy is configured", "not_found_error")
                pname = cfg.default_policy
            policy = gw.policies.get(pname)
            if policy is not None:
                check_rights(key, pname, None)
                return policy, pname, None
        known = sorted([*gw.providers, *(PREFIX + p for p in gw.policies)])
        raise GatewayError(
            404, f"model {name!r} does not exist; available: {', '.join(known)}", "not_found_error"
        )

    async def allowed_models(key: KeyInfo | None) -> set[str]:
        models = list(gw.providers)
        blocked = await gw.state.open_circuits(models)
        blocked |= await gw.saturated_models(models)
        allowed = {m for m in models if m not in blocked}
        if key is not None and key.models is not None:
            allowed &= key.models
        return allowed

    async def chat(request: Request) -> Response:
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        trace = Trace(rid, "", None)
        query = Query(text="")
        try:
            key = gw.keys.authenticate(request.headers.get("authorization"))
            try:
                body = orjson.loads(await request.body())
            except orjson.JSONDecodeError:
                raise GatewayError(400, "request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise GatewayError(400, "request body must be a JSON object")
            trace.key = key
            policy, pname, target = await resolve(body, key)
            trace.policy = pname
            for scope_key, limit in (
                (f"key:{key.id}" if key else None, key.requests_per_minute if key else None),
                ("global", cfg.budgets.requests_per_minute),
            ):
                if scope_key and limit:
                    wait = await gw.state.allow_rate(scope_key, limit)
                    if wait is not None:
                        gw.metrics.rate_limited.labels("rate").inc()
                        raise GatewayError(
                            429,
                            f"rate limit of {limit} requests/minute reached for {scope_key}",
                            "rate_limit_exceeded",
                            **{"retry-after": str(int(wait) + 1)},
                        )
            if (reason := await gw.over_limit(key)) is not None:
                gw.metrics.rate_limited.labels("tokens").inc()
                raise GatewayError(429, reason, "rate_limit_exceeded", **{"retry-after": "60"})
            session = request.headers.get("x-session-id") or body.get("user")
            query = build_query(body, session, request.headers.get("x-llmdispatch-task"))
            query.metadata["request_id"] = rid  # online learners key feedback by it
            allowed = await allowed_models(key)
            if policy is not None and session:
                pinned = await gw.state.affinity(str(session))
                if pinned in allowed:
                    policy, target, trace.policy = None, pinned, f"{pname}+affinity"
            if body.get("stream"):
                return await stream(body, policy, target, query, allowed, trace, session)
            model, answer = await gw.run_policy(policy, query, allowed, body, trace, target)
        except AuthError as exc:
            finish(trace, "", None, query, exc.status, str(exc), 0)
            return error_response(exc.status, str(exc), "authentication_error", {})
        except GatewayError as exc:
            if exc.status == 429:
                gw.metrics.rate_limited.labels("budget").inc()
            finish(trace, "", None, query, exc.status, str(exc), 0)
            return oops(exc)
        if session and policy is not None:
            await gw.state.pin(str(session), model, AFFINITY_TTL_S)
        answer = {**answer, "id": rid, "model": model}
        rungs = sum(1 for a in trace.attempts if a.get("purpose") == "answer" and "error" not in a)
        finish(trace, model, answer, query, 200, None, rungs)
        return Response(
            orjson.dumps(answer),
            media_type="application/json",
            headers=_headers(trace, model, rungs),
        )

    def finish(
        trace: Trace,
        model: str,
        answer: dict[str, Any] | None,
        query: Query,
        status: int,
        error: str | None,
        rungs: int,
    ) -> None:
        seconds = time.perf_counter() - trace.started
        gw.metrics.requests.labels(trace.policy, model, str(status)).inc()
        if model:
            gw.metrics.latency.labels(model).observe(seconds)
        if trace.first_model:
            gw.metrics.decisions.labels(trace.policy, trace.first_model).inc()
        if rungs > 1:
            gw.metrics.escalations.labels(trace.policy).inc(rungs - 1)
        if gw.log is None:
            return
        usage = (answer or {}).get("usage") or {}
        choices = (answer or {}).get("choices") or [{}]
        text = (choices[0].get("message") or {}).get("content") if choices else None
        system = next((m.get("content") for m in query.messages if m.get("role") == "system"), None)
        prompt = "\n\n".join(
            str(m.get("content")) for m in query.messages if m.get("role") == "user"
        )
        gw.log.log_request(
            {
                "id": trace.request_id,
                "created": time.time(),
                "key_id": trace.key.id if trace.key else None,
                "policy": trace.policy,
                "model": model or None,
                "attempts": trace.attempts,
                "system": system if cfg.log_prompts and isinstance(system, str) else None,
                "prompt": prompt if cfg.log_prompts else None,
                "response": text if cfg.log_prompts else None,
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

    async def stream(
        body: dict[str, Any],
        policy: Policy | None,
        target: str | None,
        query: Query,
        allowed: set[str],
        trace: Trace,
        session: Any,
    ) -> Response:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if policy is not None and not isinstance(policy, Router | BanditRouter):
            # A cascade needs each answer whole to judge it: run it, then stream the reply.
            model, answer = await gw.run_policy(policy, query, allowed, body, trace, target)
            rungs = sum(
                1 for a in trace.attempts if a.get("purpose") == "answer" and "error" not in a
            )
            finish(trace, model, answer, query, 200, None, rungs)
            return StreamingResponse(
                _replay_as_stream(trace.request_id, model, answer, include_usage),
                media_type="text/event-stream",
                headers=_headers(trace, model, rungs),
            )
        excluded: set[str] = set()
        last: Exception | None = None
        for _round in range(cfg.max_fallbacks + 1):
            options = frozenset(allowed - excluded)
            if not options:
                break
            try:
                flow = gw._flow(policy, query, options, target)
                attempt = next(flow)
            except (ValueError, RuntimeError) as exc:
                raise GatewayError(503, str(exc), "service_unavailable") from exc
            gw._note_first(trace, attempt)
            model = attempt.model
            provider = gw.providers.get(model)
            if provider is None:
                excluded.add(model)
                continue
            scopes = gw.scopes(trace.key, model)
            reserved = gw.estimate(model, query, body) if scopes else 0.0
            if scopes:
                try:
                    await gw.state.reserve(scopes, reserved)
                except BudgetExceeded as exc:
                    if cfg.budgets.on_exhausted != "cheaper":
                        raise GatewayError(429, str(exc), "budget_exceeded") from exc
                    excluded.add(model)
                    last = exc
                    continue
            request = {**body, **attempt.options}
            if include_usage:
                request["stream_options"] = {"include_usage": True}
            try:
                handle = await provider.open_stream(request)
            except UpstreamError as exc:
                if scopes:
                    await gw.state.settle(scopes, reserved, 0.0)
                await gw.state.record_result(
                    model, False, cfg.breaker.failures, cfg.breaker.cooldown_s
                )
                gw.metrics.fallbacks.labels(model, exc.reason).inc()
                trace.attempts.append({"model": model, "purpose": "answer", "error": str(exc)})
                excluded.add(model)
                trace.fallbacks += 1
                last = exc
                flow.close()
                continue
            trace.ttft_ms = (time.perf_counter() - trace.started) * 1000
            gw.metrics.ttft.labels(model).observe(trace.ttft_ms / 1000)
            headers = _headers(trace, model, 1)
            return StreamingResponse(
                relay(
                    handle.chunks,
                    model,
                    provider.upstream_name,
                    flow,
                    scopes,
                    reserved,
                    trace,
                    query,
                    session,
                    policy,
                ),
                media_type="text/event-stream",
                headers=headers,
            )
        if isinstance(last, BudgetExceeded):
            raise GatewayError(429, str(last), "budget_exceeded")
        raise GatewayError(502, f"no model could answer: {last}", "upstream_error")

    async def relay(
        chunks: AsyncIterator[bytes],
        model: str,
        upstream: str,
        flow: Generator[Attempt, AttemptResult, str],
        scopes: list[Scope],
        reserved: float,
        trace: Trace,
        query: Query,
        session: Any,
        policy: Policy | None,
    ) -> AsyncIterator[bytes]:
        usage: dict[str, Any] = {}
        text: list[str] = []
        error: str | None = None
        rename = upstream != model
        try:
            async for data in chunks:
                if b'"usage"' in data or rename or b'"content"' in data:
                    doc = orjson.loads(data)
                    if doc.get("usage"):
                        usage = doc["usage"]
                    for c in doc.get("choices") or []:
                        piece = (c.get("delta") or {}).get("content")
                        if piece:
                            text.append(piece)
                    doc["id"] = trace.request_id
                    doc["model"] = model
                    data = orjson.dumps(doc)
                yield b"data: " + data + b"\n\n"
            yield b"data: [DONE]\n\n"
        except UpstreamError as exc:
            error = str(exc)
            gw.metrics.fallbacks.labels(model, "stream_broken").inc()
            err = {
                "error": {
                    "message": f"upstream stream broke: {exc}",
                    "type": "upstream_error",
                    "code": 502,
                }
            }
            yield b"data: " + orjson.dumps(err) + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            tin = int(usage.get("prompt_tokens") or query.estimated_tokens_in)
            tout = int(usage.get("completion_tokens") or max(1, len("".join(text)) // 4))
            cost = gw.cards[model].cost(tin, tout)
            cost = 0.0 if cost != cost else cost
            trace.cost += cost
            gw.metrics.cost.labels(model).inc(cost)
            if scopes:
                await gw.state.settle(scopes, reserved, cost)
            await gw.count_usage(trace.key, model, tin + tout)
            await gw.state.record_result(
                model, error is None, cfg.breaker.failures, cfg.breaker.cooldown_s
            )
            trace.attempts.append(
                {
                    "model": model,
                    "purpose": "answer",
                    "cost": cost,
                    **({"error": error} if error else {}),
                }
            )
            with contextlib.suppress(StopIteration, RuntimeError):
                flow.send(
                    AttemptResult(
                        model=model, text="".join(text), tokens_in=tin, tokens_out=tout, cost=cost
                    )
                )
            if session and policy is not None and error is None:
                await gw.state.pin(str(session), model, AFFINITY_TTL_S)
            answer = {
                "choices": [{"message": {"content": "".join(text)}}],
                "usage": {"prompt_tokens": tin, "completion_tokens": tout},
            }
            finish(trace, model, answer, query, 200 if error is None else 502, error, 1)

    async def models(_: Request) -> Response:
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "upstream"}
            for m in gw.providers
        ]
        data += [
            {"id": PREFIX + p, "object": "model", "created": created, "owned_by": "llmdispatch"}
            for p in gw.policies
        ]
        if cfg.default_policy:
            data.append(
                {
                    "id": PREFIX + "auto",
                    "object": "model",
                    "created": created,
                    "owned_by": "llmdispatch",
                }
            )
        return Response(
            orjson.dumps({"object": "list", "data": data}), media_type="application/json"
        )

    async def feedback(request: Request) -> Response:
        try:
            gw.keys.authenticate(request.headers.get("authorization"))
            try:
                body = orjson.loads(await request.body())
            except orjson.JSONDecodeError:
                raise GatewayError(400, "request body is not valid JSON") from None
            rid = body.get("request_id") if isinstance(body, dict) else None
            if not isinstance(rid, str) or not rid:
                raise GatewayError(400, "'request_id' is required")
            reward = body.get("reward")
            preference = body.get("preference")
            if reward is None and preference is None:
                raise GatewayError(400, "send a 'reward' in [0, 1] or a 'preference'")
            if reward is not None and (
                not isinstance(reward, int | float) or not 0.0 <= float(reward) <= 1.0
            ):
                raise GatewayError(400, "'reward' must be a number in [0, 1]")
            known = False
            learned = False
            for policy in gw.policies.values():
                if isinstance(policy, BanditRouter) and reward is not None:
                    try:
                        policy.feedback(rid, float(reward))
                        known = learned = True
                        break
                    except UnknownRequestError:
                        continue
            if gw.log is not None and (known or gw.log.has_request(rid)):
                known = True
                gw.log.log_feedback(rid, None if reward is None else float(reward), preference)
            if not known:
                raise GatewayError(404, f"unknown request id {rid!r}", "not_found_error")
        except AuthError as exc:
            return error_response(exc.status, str(exc), "authentication_error", {})
        except GatewayError as exc:
            return oops(exc)
        doc = {"request_id": rid, "stored": gw.log is not None, "learned": learned}
        return Response(orjson.dumps(doc), media_type="application/json")

    async def healthz(_: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(_: Request) -> Response:
        try:
            await gw.state.spent("global")
        except Exception as exc:  # the state backend is down: not ready
            return error_response(503, f"state backend unavailable: {exc}", "not_ready", {})
        return Response(b'{"status":"ready"}', media_type="application/json")

    async def metrics(_: Request) -> Response:
        b = cfg.budgets
        if b.global_usd is not None:
            gw.metrics.budget_remaining.labels("global").set(
                b.global_usd - await gw.state.spent("global")
            )
        for m, limit in b.per_model_usd.items():
            gw.metrics.budget_remaining.labels(f"model:{m}").set(
                limit - await gw.state.spent(f"model:{m}")
            )
        return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(_: Request) -> Response:
        return Response(orjson.dumps(openapi_document()), media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await gw.close()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gw
    return app


async def _replay_as_stream(
    rid: str, model: str, answer: dict[str, Any], include_usage: bool
) -> AsyncIterator[bytes]:
    created = int(time.time())
    text = str(((answer.get("choices") or [{}])[0].get("message") or {}).get("content") or "")

    def frame(delta: dict[str, Any], finish: str | None) -> bytes:
        doc = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    yield frame({"role": "assistant", "content": ""}, None)
    for k in range(0, len(text), 64):
        yield frame({"content": text[k : k + 64]}, None)
    yield frame({}, "stop")
    if include_usage and answer.get("usage"):
        doc = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": answer["usage"],
        }
        yield b"data: " + orjson.dumps(doc) + b"\n\n"
    yield b"data: [DONE]\n\n"


CONFIG_ENV = "LLMDISPATCH_GATEWAY_CONFIG"


def app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory`` (each worker process builds its own app)."""
    import os

    from llmdispatch.gateway.config import load_config

    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"set {CONFIG_ENV} to the gateway config file")
    return create_app(load_config(path))
