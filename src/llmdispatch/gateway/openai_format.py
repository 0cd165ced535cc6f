"""Translations between the OpenAI chat format and what policies read and write.

A chat request becomes a :class:`~llmdispatch.query.Query` (the text routers encode: the
system prompt and the user turns joined, as the outcome tables hold prompts; modalities from
the content parts; a token estimate over every message); an upstream answer becomes an
:class:`~llmdispatch.policies.base.AttemptResult`; a finished answer can be replayed as a
server-sent event stream in the OpenAI chunk format.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from llmdispatch.catalog import ModelCard
from llmdispatch.gateway.errors import GatewayError
from llmdispatch.policies.base import AttemptResult
from llmdispatch.query import Query

_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
_AUDIO_PARTS = frozenset({"input_audio", "audio"})
#: Prompt tokens an image part is assumed to cost in the context-window estimate.
IMAGE_TOKENS = 765
DONE = b"data: [DONE]\n\n"


def split_prompt(messages: Any) -> tuple[str | None, str, dict[str, int]]:
    """The system prompt, the user turns joined, and counts (characters, images, turns).

    Raises a 400 :class:`GatewayError` for messages that are not OpenAI chat messages.
    """
    if not isinstance(messages, list) or not messages:
        raise GatewayError(400, "'messages' must be a non-empty list")
    users: list[str] = []
    system: str | None = None
    counts = {"chars": 0, "images": 0, "audio": 0}
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
                elif kind in _IMAGE_PARTS:
                    counts["images"] += 1
                elif kind in _AUDIO_PARTS:
                    counts["audio"] += 1
            content = "".join(texts)
        elif content is not None and not isinstance(content, str):
            raise GatewayError(400, "message 'content' must be a string or a list of parts")
        text = content or ""
        counts["chars"] += len(text)
        if msg["role"] in ("system", "developer"):
            system = text
        elif msg["role"] == "user":
            users.append(text)
    counts["turns"] = len(users)
    return system, "\n\n".join(users), counts


def build_query(body: dict[str, Any], session: str | None, task: str | None = None) -> Query:
    """The routing view of a chat request: text, modalities, turns, token estimate, user.

    ``task`` (header ``x-llmdispatch-task``) names the request's benchmark or task label, so
    signals calibrated per label (e.g. per data set in ``cascades9``) use that calibrator.
    """
    messages = body.get("messages")
    system, prompt, counts = split_prompt(messages)
    modalities = {"text"}
    if counts["images"]:
        modalities.add("image")
    if counts["audio"]:
        modalities.add("audio")
    assert isinstance(messages, list)
    return Query(
        text=f"{system}\n\n{prompt}" if system else prompt,
        messages=tuple(messages),
        modalities=frozenset(modalities),
        tokens_in=max(1, counts["chars"] // 4) + IMAGE_TOKENS * counts["images"],
        turns=max(counts["turns"], 1),
        user=session,
        metadata={"dataset": task} if task else {},
    )


def attempt_result(
    model: str, body: dict[str, Any], card: ModelCard, latency_ms: float
) -> AttemptResult:
    """An upstream's answer as policies read it (text, usage, cost, log-probs, samples)."""
    choices = body.get("choices") or [{}]
    first = choices[0] or {}
    text = str((first.get("message") or {}).get("content") or "")
    usage = body.get("usage") or {}
    tin, tout = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    lp = (first.get("logprobs") or {}).get("content") or []
    token_logprobs = tuple(float(t.get("logprob", 0.0)) for t in lp) or None
    top = tuple(
        tuple(float(x.get("logprob", 0.0)) for x in t.get("top_logprobs") or []) for t in lp
    )
    samples = tuple(str((c.get("message") or {}).get("content") or "") for c in choices[1:])
    conf = first.get("confidence")  # the replay provider's recorded confidence
    return AttemptResult(
        model=model,
        text=text,
        tokens_in=tin,
        tokens_out=tout,
        cost=cost_of(card, tin, tout),
        latency_ms=latency_ms,
        token_logprobs=token_logprobs,
        top_logprobs=top or None,
        samples=samples,
        confidence=float(conf) if isinstance(conf, int | float) else None,
    )


def cost_of(card: ModelCard, tokens_in: int, tokens_out: int) -> float:
    """Usage × the card's prices (0 for a model without prices)."""
    cost = card.cost(tokens_in, tokens_out)
    return 0.0 if cost != cost else float(cost)


def sse(doc: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def chunk(rid: str, created: int, model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``chat.completion.chunk`` document."""
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }


async def replay_as_stream(
    rid: str, model: str, answer: dict[str, Any], include_usage: bool, size: int = 64
) -> AsyncIterator[bytes]:
    """A finished answer (a cascade's, judged whole) sent as an OpenAI event stream."""
    created = int(time.time())
    text = str(((answer.get("choices") or [{}])[0].get("message") or {}).get("content") or "")
    role = {"role": "assistant", "content": ""}
    yield sse(chunk(rid, created, model, [{"index": 0, "delta": role, "finish_reason": None}]))
    for k in range(0, len(text), size):
        delta = {"content": text[k : k + size]}
        yield sse(chunk(rid, created, model, [{"index": 0, "delta": delta, "finish_reason": None}]))
    yield sse(chunk(rid, created, model, [{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if include_usage and answer.get("usage"):
        yield sse({**chunk(rid, created, model, []), "usage": answer["usage"]})
    yield DONE
