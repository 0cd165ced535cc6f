"""Streamed chat completions: relay the upstream's events, fall back, never end in silence.

Single-shot policies (routers, bandits) and pass-through stream the chosen model's events as
they come, renamed to the gateway's request id and answering model. A stream that breaks
before its first event falls back to the next model like any failed call; one that breaks
later ends with an error event and ``[DONE]``. Cascades judge each answer whole, so their
reply is computed first and then sent as a stream.

The upstream is always asked for usage (``stream_options.include_usage``) so the cost is
exact; the usage event reaches the client only when it asked for it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator
from typing import Any

import anyio
import orjson
from starlette.responses import Response, StreamingResponse

from llmdispatch.gateway.errors import GatewayError
from llmdispatch.gateway.openai_format import DONE, cost_of, replay_as_stream, sse
from llmdispatch.gateway.pipeline import SINGLE_SHOT, Gateway, Trace, decision_headers
from llmdispatch.gateway.providers import UpstreamError
from llmdispatch.gateway.state import BudgetExceeded, Reservation
from llmdispatch.policies.base import Attempt, AttemptResult, Policy
from llmdispatch.query import Query

_EVENT_STREAM = "text/event-stream"


async def stream_completion(
    gw: Gateway,
    body: dict[str, Any],
    policy: Policy | None,
    target: str,
    query: Query,
    allowed: set[str],
    trace: Trace,
    session: str | None,
) -> Response:
    """Open the stream of the first model that answers; see the module docstring."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    if policy is not None and not isinstance(policy, SINGLE_SHOT):
        model, answer = await gw.run_policy(policy, query, allowed, body, trace, target)
        await gw.remember(trace, session, policy, model, query)
        gw.finish(trace, model, answer, query, 200, None)
        return StreamingResponse(
            replay_as_stream(trace.request_id, model, answer, include_usage),
            media_type=_EVENT_STREAM,
            headers=decision_headers(trace, model),
        )
    excluded: set[str] = set()
    last: Exception | None = None
    for _round in range(gw.cfg.max_fallbacks + 1):
        options = frozenset(allowed - excluded)
        if not options:
            break
        try:
            flow = gw.flow(policy, query, options, target, trace)
            attempt = next(flow)
        except (ValueError, RuntimeError) as exc:
            if last is not None:
                break
            raise GatewayError(503, str(exc), "service_unavailable") from exc
        gw.note_first(trace, attempt)
        model = attempt.model
        provider = gw.providers.get(model)
        if provider is None:  # a policy naming a model this gateway does not serve
            excluded.add(model)
            flow.close()
            continue
        scopes = gw.scopes(trace.key, model)
        estimate = gw.estimate(model, query, body) if scopes else 0.0
        request = {**body, **attempt.options, "stream_options": {"include_usage": True}}
        try:
            reservation = await gw.state.reserve(scopes, estimate)
            try:
                handle = await provider.open_stream(request)
            except UpstreamError:
                await gw.state.settle(reservation, 0.0)
                await gw.record(model, False)
                raise
        except (UpstreamError, BudgetExceeded) as exc:
            gw.fallback(exc, model)
            trace.attempts.append({"model": model, "purpose": "answer", "error": str(exc)})
            excluded.add(model)
            trace.fallbacks += 1
            last = exc
            flow.close()
            continue
        trace.ttft_ms = (time.perf_counter() - trace.started) * 1000
        gw.metrics.ttft.labels(model).observe(trace.ttft_ms / 1000)
        relay = Relay(gw, model, flow, reservation, trace, query, session, policy)
        return StreamingResponse(
            relay.run(handle.chunks, provider.upstream_name != model, include_usage),
            media_type=_EVENT_STREAM,
            headers=decision_headers(trace, model),
        )
    if isinstance(last, BudgetExceeded):
        raise GatewayError(429, str(last), "budget_exceeded")
    raise GatewayError(502, f"no model could answer: {last}", "upstream_error")


class Relay:
    """One open upstream stream on its way to the client, and its accounting at the end."""

    def __init__(
        self,
        gw: Gateway,
        model: str,
        flow: Generator[Attempt, AttemptResult, str],
        reservation: Reservation,
        trace: Trace,
        query: Query,
        session: str | None,
        policy: Policy | None,
    ) -> None:
        self.gw, self.model, self.flow = gw, model, flow
        self.reservation = reservation
        self.trace, self.query, self.session, self.policy = trace, query, session, policy
        self.usage: dict[str, Any] = {}
        self.text: list[str] = []

    async def run(
        self, chunks: AsyncGenerator[bytes, None], rename: bool, include_usage: bool
    ) -> AsyncIterator[bytes]:
        """Relay every event (with the gateway's id and model); settle when the stream ends.

        A client that goes away closes this generator: the upstream stream is closed and the
        partial answer is still billed, logged and counted.
        """
        error: str | None = None
        status = 499  # unless the stream ends, the client went away (nginx's "closed request")
        rid = self.trace.request_id
        try:
            async for data in chunks:
                doc = orjson.loads(data)
                if doc.get("usage"):
                    self.usage = doc["usage"]
                    if not include_usage:
                        if not doc.get("choices"):
                            continue  # the usage-only event the client did not ask for
                        doc["usage"] = None
                for c in doc.get("choices") or ():
                    piece = (c.get("delta") or {}).get("content")
                    if piece:
                        self.text.append(piece)
                doc["id"] = rid
                if rename:
                    doc["model"] = self.model
                yield sse(doc)
            status = 200
            yield DONE
        except UpstreamError as exc:
            status, error = 502, str(exc)
            self.gw.metrics.fallbacks.labels(self.model, "stream_broken").inc()
            err = {"message": f"upstream stream broke: {exc}", "type": "upstream_error"}
            yield sse({"error": {**err, "code": 502}})
            yield DONE
        finally:
            # Settle even when the client went away (the task is being cancelled).
            with anyio.CancelScope(shield=True):
                await chunks.aclose()
                await self.settle(
                    status, error or ("client disconnected" if status == 499 else None)
                )

    async def settle(self, status: int, error: str | None) -> None:
        """Budgets, breaker, the policy's flow, affinity, metrics and the log row."""
        gw, trace, model = self.gw, self.trace, self.model
        text = "".join(self.text)
        tin = int(self.usage.get("prompt_tokens") or self.query.estimated_tokens_in)
        tout = int(self.usage.get("completion_tokens") or max(1, len(text) // 4))
        cost = cost_of(gw.cards[model], tin, tout)
        trace.cost += cost
        gw.metrics.cost.labels(model).inc(cost)
        await gw.state.settle(self.reservation, cost)
        await gw.count_usage(trace.key, model, tin + tout)
        await gw.record(model, status != 502)  # a client that left is no upstream failure
        attempt: dict[str, Any] = {"model": model, "purpose": "answer", "cost": cost}
        if error:
            attempt["error"] = error
        trace.attempts.append(attempt)
        result = AttemptResult(model=model, text=text, tokens_in=tin, tokens_out=tout, cost=cost)
        with contextlib.suppress(StopIteration, RuntimeError, ValueError):
            self.flow.send(result)  # the policy's flow ends here (it returns the model)
        if status == 200:
            await gw.remember(trace, self.session, self.policy, model, self.query)
        answer = {
            "choices": [{"message": {"content": text}}],
            "usage": {"prompt_tokens": tin, "completion_tokens": tout},
        }
        gw.finish(trace, model, answer, self.query, status, error)
