"""API keys: stored hashed, compared in constant time, with per-key rights.

Keys are stored as ``sha256:<hex>`` of the secret. A fast unsalted hash is the standard for
API tokens (GitHub's and Stripe's tokens are stored this way): the secrets are random with at
least 128 bits of entropy (:func:`generate_api_key` makes 256), so no dictionary or brute
force attack applies, and the gateway finds a key with one hash per request. Salted slow
hashes (scrypt, PBKDF2) protect low-entropy passwords and would cost every request tens of
milliseconds. The presented key's digest is compared with every stored digest by
:func:`hmac.compare_digest`, without stopping at a match, so timing reveals nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmdispatch.gateway.state import Window

if TYPE_CHECKING:
    from llmdispatch.gateway.config import KeyConfig

HASH_PREFIX = "sha256:"
KEY_PREFIX = "sk-llmd-"


class AuthError(Exception):
    """A request without a valid key (``status`` 401) or beyond its key's rights (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Unauthenticated(AuthError):
    """No key, a malformed header or an unknown key: HTTP 401."""

    def __init__(self, message: str) -> None:
        super().__init__(401, message)


class Forbidden(AuthError):
    """A valid key asking for a policy or model it may not use: HTTP 403."""

    def __init__(self, message: str) -> None:
        super().__init__(403, message)


def hash_api_key(secret: str) -> str:
    """The form keys are stored in: ``sha256:<64 hex>`` (the secret itself is never stored)."""
    return HASH_PREFIX + hashlib.sha256(secret.encode("utf-8")).hexdigest()


def generate_api_key() -> str:
    """A new random secret (256 bits, URL-safe) to hand to a client; store its hash."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyInfo:
    """An authenticated key: its id and rights. It never holds the secret, so its repr and
    any log line made from it cannot leak one."""

    id: str
    policies: frozenset[str] | None
    models: frozenset[str] | None
    budget_usd: float | None
    requests_per_minute: int | None
    tokens_per_minute: int | None = None
    budget_window: Window = "total"


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("malformed Authorization header: expected 'Bearer <key>'")
    return token


class KeyRing:
    """The configured keys, looked up by hash; an empty ring means the gateway is open."""

    def __init__(self, keys: list[KeyConfig]) -> None:
        self._keys = [(k.hash.lower(), k) for k in keys]

    @property
    def open(self) -> bool:
        """Whether no key is required."""
        return not self._keys

    def authenticate(self, authorization: str | None) -> KeyInfo | None:
        """The key behind an ``Authorization: Bearer …`` header (``None`` when the gateway
        is open); raises :class:`Unauthenticated` when it is missing, malformed or unknown."""
        if self.open:
            return None
        digest = hash_api_key(_bearer(authorization))
        match = None
        for stored, key in self._keys:  # no early exit: the time does not depend on the match
            if hmac.compare_digest(stored, digest):
                match = key
        if match is None:
            raise Unauthenticated("invalid API key")
        return KeyInfo(
            id=match.id,
            policies=frozenset(match.policies) if match.policies is not None else None,
            models=frozenset(match.models) if match.models is not None else None,
            budget_usd=match.budget_usd,
            requests_per_minute=match.requests_per_minute,
            tokens_per_minute=match.tokens_per_minute,
            # Optional in the config schema; older configs have no per-key budget window.
            budget_window=getattr(match, "budget_window", "total"),
        )


def check_rights(key: KeyInfo | None, policy: str | None, model: str | None) -> None:
    """Raise :class:`Forbidden` when a key may not use this policy or model."""
    if key is None:
        return
    if policy is not None and key.policies is not None and policy not in key.policies:
        raise Forbidden(f"key {key.id!r} may not use policy {policy!r}")
    if model is not None and key.models is not None and model not in key.models:
        raise Forbidden(f"key {key.id!r} may not use model {model!r}")
    if policy is None and model is not None and key.models is None and key.policies is not None:
        allowed = ", ".join(sorted(key.policies))
        raise Forbidden(f"key {key.id!r} may only use the policies {allowed}")
