"""API keys: hashing, constant-time lookup, 401/403 errors, no secret in any repr."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from llmdispatch.gateway.auth import (
    AuthError,
    Forbidden,
    KeyRing,
    Unauthenticated,
    check_rights,
    generate_api_key,
    hash_api_key,
)
from llmdispatch.gateway.config import KeyConfig


def _ring() -> KeyRing:
    return KeyRing(
        [
            KeyConfig(id="team-a", hash=hash_api_key("secret-a"), policies=["auto"]),
            KeyConfig(
                id="team-b",
                hash=hash_api_key("secret-b").upper().replace("SHA256:", "sha256:"),
                models=["small"],
                budget_usd=5.0,
                requests_per_minute=10,
            ),
            KeyConfig(id="admin", hash=hash_api_key("secret-c")),
        ]
    )


def test_hash_is_sha256_of_the_secret() -> None:
    digest = hash_api_key("s3cret")
    assert digest == "sha256:" + hashlib.sha256(b"s3cret").hexdigest()
    assert hash_api_key("s3cret") == digest != hash_api_key("s3cret ")
    KeyConfig(id="x", hash=digest)  # the config accepts what the function makes


def test_generated_keys_are_random_and_long() -> None:
    keys = {generate_api_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("sk-llmd-") and len(k) >= 8 + 43 for k in keys)


def test_authenticate_returns_the_key_and_its_rights() -> None:
    ring = _ring()
    a = ring.authenticate("Bearer secret-a")
    assert a is not None and a.id == "team-a" and a.policies == frozenset({"auto"})
    b = ring.authenticate("bearer   secret-b ")  # scheme case and spaces do not matter
    assert b is not None and b.id == "team-b" and b.models == frozenset({"small"})
    assert b.budget_usd == 5.0 and b.requests_per_minute == 10 and b.budget_window == "total"
    assert "secret" not in repr(a) + repr(b) + str(a)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing API key"),
        ("", "missing API key"),
        ("Basic secret-a", "malformed"),
        ("Bearer", "malformed"),
        ("Bearer secret-x", "invalid API key"),
        ("secret-a", "malformed"),
    ],
)
def test_missing_or_wrong_keys_are_401(header: str | None, message: str) -> None:
    with pytest.raises(Unauthenticated, match=message) as info:
        _ring().authenticate(header)
    assert info.value.status == 401 and isinstance(info.value, AuthError)
    assert "secret-x" not in str(info.value)


def test_an_open_gateway_needs_no_key() -> None:
    ring = KeyRing([])
    assert ring.open and ring.authenticate(None) is None


def test_every_stored_key_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append(a)
        return real(a, b)

    monkeypatch.setattr("llmdispatch.gateway.auth.hmac.compare_digest", spy)
    ring = _ring()
    ring.authenticate("Bearer secret-a")  # the first key matches; the others are compared too
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(Unauthenticated):
        ring.authenticate("Bearer nope")
    assert len(calls) == 3


def test_rights_beyond_the_key_are_403() -> None:
    ring = _ring()
    a, b, admin = (ring.authenticate(f"Bearer secret-{c}") for c in "abc")
    check_rights(a, "auto", None)
    check_rights(b, None, "small")
    check_rights(admin, "anything", None)
    check_rights(admin, None, "any-model")
    check_rights(None, "auto", "large")  # an open gateway
    for key, policy, model, text in (
        (a, "other", None, "may not use policy 'other'"),
        (b, None, "large", "may not use model 'large'"),
        (a, None, "small", "may only use the policies auto"),
    ):
        with pytest.raises(Forbidden, match=text) as info:
            check_rights(key, policy, model)
        assert info.value.status == 403
