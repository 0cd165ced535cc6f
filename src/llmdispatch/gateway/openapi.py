"""The gateway's OpenAPI document (written out: the handlers parse JSON themselves)."""

from __future__ import annotations

from typing import Any

from llmdispatch import __version__

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": "integer"},
            },
            "required": ["message", "type"],
        }
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed request",
        401: "Missing or invalid API key",
        403: "Beyond the key's rights",
        404: "Unknown model or request id",
        429: "Budget or rate limit exhausted",
        502: "No upstream model could answer",
        503: "No model is allowed for this request",
    }
    return {str(c): _json(_ERROR, text[c]) for c in codes}


_DECISION_HEADERS = {
    f"x-llmdispatch-{name}": {"description": desc, "schema": {"type": "string"}}
    for name, desc in (
        ("request-id", "The request id (also the response id); use it for feedback"),
        ("model", "The model that answered"),
        ("policy", "The policy that decided (or pass-through)"),
        ("estimated-quality", "The policy's quality estimate for its first choice"),
        ("estimated-cost", "The policy's expected cost (USD) for its first choice"),
        (
            "cost",
            "The actual cost in USD of every call made (for a relayed stream: the calls "
            "finished before it started; its own cost goes to the metrics and the log)",
        ),
        ("rungs", "Models that answered (cascades may call several)"),
        ("fallbacks", "Models skipped after provider failures"),
        ("affinity", "The model the session is pinned to, when session affinity applied"),
    )
}


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 description of every route."""
    message = {
        "type": "object",
        "properties": {
            "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
            "content": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "object"}},
                ]
            },
        },
        "required": ["role"],
    }
    chat_request = {
        "type": "object",
        "properties": {
            "model": {
                "type": "string",
                "description": "A configured model (passed through) or llmdispatch/<policy> "
                "(llmdispatch/auto: the default policy)",
            },
            "messages": {"type": "array", "items": message, "minItems": 1},
            "stream": {"type": "boolean"},
            "stream_options": {
                "type": "object",
                "properties": {"include_usage": {"type": "boolean"}},
            },
            "max_tokens": {"type": "integer"},
            "user": {"type": "string", "description": "Session key for affinity"},
        },
        "required": ["model", "messages"],
        "additionalProperties": True,
    }
    completion = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": "object"},
        },
    }
    feedback = {
        "type": "object",
        "properties": {
            "request_id": {"type": "string"},
            "reward": {"type": "number", "minimum": 0, "maximum": 1},
            "preference": {
                "type": "object",
                "properties": {"chosen": {"type": "string"}, "rejected": {"type": "string"}},
            },
        },
        "required": ["request_id"],
    }
    feedback_reply = {
        "type": "object",
        "properties": {
            "request_id": {"type": "string"},
            "stored": {"type": "boolean", "description": "written to the request log"},
            "learned": {"type": "boolean", "description": "an online policy learned from it"},
        },
        "required": ["request_id", "stored", "learned"],
    }
    models = {
        "type": "object",
        "properties": {
            "object": {"type": "string"},
            "data": {"type": "array", "items": {"type": "object"}},
        },
    }
    status = {"type": "object", "properties": {"status": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "llmdispatch gateway", "version": __version__},
        "paths": {
            "/v1/chat/completions": {
                "post": {
                    "summary": "Chat completion, routed by a policy or passed through",
                    "parameters": [
                        {
                            "name": "x-llmdispatch-task",
                            "in": "header",
                            "required": False,
                            "description": "Task label for per-task signal calibration",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "x-session-id",
                            "in": "header",
                            "required": False,
                            "description": "Conversation key for session affinity",
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": chat_request}},
                    },
                    "responses": {
                        "200": {
                            "description": "The completion (JSON) or a server-sent event stream",
                            "headers": _DECISION_HEADERS,
                            "content": {
                                "application/json": {"schema": completion},
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors(400, 401, 403, 404, 429, 502, 503),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "Real models and policies as virtual models",
                    "responses": {"200": _json(models, "Model list")},
                }
            },
            "/v1/feedback": {
                "post": {
                    "summary": "Reward or preference for a served request",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": feedback}},
                    },
                    "responses": {
                        "200": _json(feedback_reply, "Stored (and learned by online policies)"),
                        **_errors(400, 401, 404),
                    },
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": _json(status, "Alive")}}
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness (state backend reachable)",
                    "responses": {"200": _json(status, "Ready"), **_errors(503)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Exposition text",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI")},
                }
            },
        },
    }
