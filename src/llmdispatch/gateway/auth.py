"""API keys: stored as SHA-256 hashes, compared in constant time; per-key rights."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from llmdispatch.gateway.config import KeyConfig


class AuthError(Exception):
    """A request without a valid key (401) or beyond its key's rights (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def hash_api_key(secret: str) -> str:
    """The form keys are stored in: ``sha256:<hex>`` (the secret itself is never stored)."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    """An authenticated key: its id and rights (never the secret)."""

    id: str
    policies: frozenset[str] | None
    models: frozenset[str] | None
    budget_usd: float | None
    requests_per_minute: int | None
    tokens_per_minute: int | None = None


class KeyRing:
    """Looks keys up by hash; an empty ring means the gateway is open."""

    def __init__(self, keys: list[KeyConfig]) -> None:
        self._keys = {k.hash: k for k in keys}

    @property
    def open(self) -> bool:
        """Whether no key is required."""
        return not self._keys

    def authenticate(self, authorization: str | None) -> KeyInfo | None:
        """The key behind an ``Authorization: Bearer …`` header (401 when missing or wrong)."""
        if self.open:
            return None
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError(401, "missing API key: send 'Authorization: Bearer <key>'")
        digest = hash_api_key(authorization[7:].strip())
        match = None
        for stored, key in self._keys.items():
            if hmac.compare_digest(stored, digest):
                match = key
        if match is None:
            raise AuthError(401, "invalid API key")
        return KeyInfo(
            id=match.id,
            policies=frozenset(match.policies) if match.policies is not None else None,
            models=frozenset(match.models) if match.models is not None else None,
            budget_usd=match.budget_usd,
            requests_per_minute=match.requests_per_minute,
            tokens_per_minute=match.tokens_per_minute,
        )


def check_rights(key: KeyInfo | None, policy: str | None, model: str | None) -> None:
    """403 when a key may not use this policy or model."""
    if key is None:
        return
    if policy is not None and key.policies is not None and policy not in key.policies:
        raise AuthError(403, f"key {key.id!r} may not use policy {policy!r}")
    if model is not None and key.models is not None and model not in key.models:
        raise AuthError(403, f"key {key.id!r} may not use model {model!r}")
    if policy is None and model is not None and key.models is None and key.policies is not None:
        allowed = ", ".join(sorted(key.policies))
        raise AuthError(403, f"key {key.id!r} may only use the policies {allowed}")
