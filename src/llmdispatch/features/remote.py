"""``remote``: embeddings from any OpenAI-compatible ``POST /v1/embeddings`` endpoint.

Texts go in batches of ``batch_size``; a batch is retried on HTTP 429 and 5xx, connection
errors and timeouts, up to ``max_retries`` times. The wait before retry ``k`` (from 0) is the
server's ``Retry-After`` (seconds or an HTTP date; or OpenAI's ``retry-after-ms``) when
given, else ``backoff · 2^k``, both capped at ``max_wait``. Other 4xx errors fail at once with
the server's message. The API key is read from the environment variable *named* in the
config (``api_key_env``) at request time, so no secret is ever stored in an artifact.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from llmdispatch.features._util import check_texts, l2_normalize_dense
from llmdispatch.features.base import Encoder
from llmdispatch.registry import register

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_PARAMS = (
    "base_url",
    "model",
    "api_key_env",
    "batch_size",
    "max_retries",
    "backoff",
    "max_wait",
    "timeout",
    "dimensions",
    "normalize",
)


class RemoteEncoderError(RuntimeError):
    """The endpoint refused or kept failing; the message has the status and its reason."""


def retry_after_seconds(headers: Any, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@register("encoder", "remote")
class RemoteEncoder(Encoder):
    """Embeddings from an OpenAI-compatible endpoint; float32 rows (unit norm by default).

    Parameters
    ----------
    base_url : the API root including ``/v1``, e.g. ``http://127.0.0.1:8000/v1``.
    model : the embedding model name sent in each request.
    api_key_env : name of the environment variable holding the key (``None``: no auth).
    batch_size, max_retries, backoff, max_wait, timeout : batching and retry policy (seconds).
    dimensions : requested output size for models that support it (``None``: the model's).
    normalize : L2-normalise rows (most endpoints already do; this makes sure).

    Examples
    --------
    >>> enc = RemoteEncoder("http://127.0.0.1:8000/v1", "text-embedding-3-small",
    ...                     api_key_env="OPENAI_API_KEY")  # doctest: +SKIP
    >>> enc.encode(["What is 2 + 2?"]).shape  # doctest: +SKIP
    (1, 1536)
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        batch_size: int = 128,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_wait: float = 60.0,
        timeout: float = 30.0,
        dimensions: int | None = None,
        normalize: bool = True,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.timeout = timeout
        self.dimensions = dimensions
        self.normalize = normalize

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """``(n, d)`` float32 rows, requested ``batch_size`` texts at a time, in order."""
        texts = check_texts(texts)
        if self.batch_size < 1 or self.max_retries < 0:
            raise ValueError("batch_size must be >= 1 and max_retries >= 0")
        if not texts:
            return np.zeros((0, self.dimensions or 0), dtype=np.float32)
        blocks = [
            self._embed_batch(texts[i : i + self.batch_size])
            for i in range(0, len(texts), self.batch_size)
        ]
        widths = {b.shape[1] for b in blocks}
        if len(widths) > 1:
            raise RemoteEncoderError(f"endpoint returned embeddings of sizes {sorted(widths)}")
        X = np.concatenate(blocks).astype(np.float32, copy=False)
        return l2_normalize_dense(X) if self.normalize else X

    def _embed_batch(self, batch: list[str]) -> npt.NDArray[np.float32]:
        import httpx

        body: dict[str, Any] = {"model": self.model, "input": batch, "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        url = self.base_url.rstrip("/") + "/embeddings"
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._client().post(url, json=body, headers=self._headers())
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if last:
                    raise RemoteEncoderError(f"{url}: {type(exc).__name__}: {exc}") from exc
                self._sleep(attempt, None)
                continue
            if response.status_code == 200:
                return _parse(response.json(), len(batch), url)
            if response.status_code not in RETRY_STATUS or last:
                raise RemoteEncoderError(
                    f"{url}: HTTP {response.status_code} after {attempt + 1} attempt(s): "
                    f"{response.text[:300]}"
                )
            self._sleep(attempt, retry_after_seconds(response.headers))
        raise AssertionError("unreachable")  # pragma: no cover

    def _sleep(self, attempt: int, retry_after: float | None) -> None:
        wait = retry_after if retry_after is not None else self.backoff * 2.0**attempt
        time.sleep(min(wait, self.max_wait))

    def _headers(self) -> dict[str, str]:
        if self.api_key_env is None:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise RemoteEncoderError(
                f"environment variable {self.api_key_env} (api_key_env) is not set"
            )
        return {"Authorization": f"Bearer {key}"}

    client_: Any = None

    def _client(self) -> Any:
        if self.client_ is None:
            import httpx

            self.client_ = httpx.Client(timeout=self.timeout)
        return self.client_

    def close(self) -> None:
        """Close the HTTP connection pool (a later ``encode`` opens a new one)."""
        client = getattr(self, "client_", None)
        if client is not None:
            client.close()
            self.client_ = None

    @property
    def key(self) -> str:
        """``remote:<base_url>:<model>:<dimensions>``."""
        return f"remote:{self.base_url.rstrip('/')}:{self.model}:{self.dimensions}"

    def get_state(self) -> dict[str, Any]:
        """Parameters only (the key's variable name, never its value)."""
        return {name: getattr(self, name) for name in _PARAMS}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from parameters."""
        return cls(**{name: state[name] for name in _PARAMS if name in state})


def _parse(payload: Any, n: int, url: str) -> npt.NDArray[np.float32]:
    """Rows of an OpenAI embeddings response, in input order (by each item's ``index``)."""
    try:
        items = sorted(payload["data"], key=lambda item: item["index"])
        rows = [item["embedding"] for item in items]
        X = np.asarray(rows, dtype=np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise RemoteEncoderError(f"{url}: not an embeddings response ({exc!r})") from None
    if X.ndim != 2 or len(X) != n:
        raise RemoteEncoderError(f"{url}: expected {n} embeddings, got shape {X.shape}")
    return X
