"""Errors the gateway answers with, in the OpenAI API's shape."""

from __future__ import annotations

import orjson
from starlette.responses import Response


class GatewayError(Exception):
    """An error answered with an OpenAI-style body, this HTTP status and these headers."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", **headers: str
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headers = headers


def error_body(status: int, message: str, kind: str) -> bytes:
    """``{"error": {"message", "type", "code"}}`` as the OpenAI API sends it."""
    return orjson.dumps({"error": {"message": message, "type": kind, "code": status}})


def error_response(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> Response:
    """An error as a JSON response."""
    return Response(
        error_body(status, message, kind),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
