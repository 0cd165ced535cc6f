"""Shared gateway state: budgets, rate limits, circuit breakers, session affinity.

One async interface, two backends: :class:`MemoryState` for one process and
:class:`RedisState` for replicas behind a load balancer (every check-and-update is one Lua
script, so it is atomic across replicas).

Budgets work by reservation: before a call the gateway reserves the request's estimated cost
on every scope it spends from (global, API key, model); the reservation succeeds only if
``spent + reserved + estimate ≤ limit`` holds on all scopes at once, and after the call
:meth:`settle` replaces the reservation by the actual cost. Concurrent requests therefore
never overspend by more than their estimates were short.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scope:
    """A spending scope and its limit in USD."""

    name: str
    limit: float


class BudgetExceeded(Exception):
    """A reservation that would pass a limit; says which scope and what is left."""

    def __init__(self, scope: str, limit: float, remaining: float) -> None:
        super().__init__(
            f"budget {scope!r} exhausted: ${max(remaining, 0):.6f} left of ${limit:.2f}"
        )
        self.scope = scope
        self.limit = limit
        self.remaining = remaining


class GatewayState(ABC):
    """What the gateway keeps between requests (see the module docstring)."""

    @abstractmethod
    async def reserve(self, scopes: list[Scope], amount: float) -> None:
        """Reserve ``amount`` on every scope or raise :class:`BudgetExceeded` (atomic)."""

    @abstractmethod
    async def settle(self, scopes: list[Scope], reserved: float, actual: float) -> None:
        """Replace a reservation by the actual cost."""

    @abstractmethod
    async def spent(self, scope: str) -> float:
        """Spent plus reserved USD on a scope."""

    @abstractmethod
    async def allow_rate(self, key: str, per_minute: int) -> float | None:
        """Count one request; ``None`` if allowed, else seconds until one is (fixed window)."""

    @abstractmethod
    async def window_used(self, key: str) -> int:
        """Units (requests or tokens) counted on ``key`` in the current minute."""

    @abstractmethod
    async def window_add(self, key: str, amount: int) -> None:
        """Count ``amount`` units on ``key`` in the current minute."""

    @abstractmethod
    async def record_result(self, model: str, ok: bool, threshold: int, cooldown: float) -> None:
        """Feed the circuit breaker: failures in a row open it for ``cooldown`` seconds."""

    @abstractmethod
    async def open_circuits(self, models: list[str]) -> set[str]:
        """Models whose breaker is open now (a half-open probe is let through after cooldown)."""

    @abstractmethod
    async def affinity(self, session: str) -> str | None:
        """The model a conversation is pinned to."""

    @abstractmethod
    async def pin(self, session: str, model: str, ttl: float) -> None:
        """Pin a conversation to a model for ``ttl`` seconds."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""


class MemoryState(GatewayState):
    """In-process state (one worker). Methods do not await between check and update."""

    def __init__(self) -> None:
        self._spent: dict[str, float] = {}
        self._rates: dict[str, tuple[int, int]] = {}
        self._fails: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._pins: dict[str, tuple[str, float]] = {}

    async def reserve(self, scopes: list[Scope], amount: float) -> None:
        """Atomic: the event loop does not switch inside this method."""
        for s in scopes:
            used = self._spent.get(s.name, 0.0)
            if used + amount > s.limit:
                raise BudgetExceeded(s.name, s.limit, s.limit - used)
        for s in scopes:
            self._spent[s.name] = self._spent.get(s.name, 0.0) + amount

    async def settle(self, scopes: list[Scope], reserved: float, actual: float) -> None:
        """Adjust every scope by ``actual − reserved``."""
        for s in scopes:
            self._spent[s.name] = self._spent.get(s.name, 0.0) + actual - reserved

    async def spent(self, scope: str) -> float:
        """Spent plus reserved."""
        return self._spent.get(scope, 0.0)

    async def allow_rate(self, key: str, per_minute: int) -> float | None:
        """Fixed one-minute windows."""
        now = time.time()
        window = int(now // 60)
        w, count = self._rates.get(key, (window, 0))
        if w != window:
            count = 0
        if count >= per_minute:
            return 60.0 - (now % 60)
        self._rates[key] = (window, count + 1)
        return None

    async def window_used(self, key: str) -> int:
        """This minute's count."""
        w, count = self._rates.get(key, (int(time.time() // 60), 0))
        return count if w == int(time.time() // 60) else 0

    async def window_add(self, key: str, amount: int) -> None:
        """Add to this minute's count."""
        window = int(time.time() // 60)
        w, count = self._rates.get(key, (window, 0))
        self._rates[key] = (window, (count if w == window else 0) + amount)

    async def record_result(self, model: str, ok: bool, threshold: int, cooldown: float) -> None:
        """Consecutive failures open the breaker; a success closes it."""
        if ok:
            self._fails.pop(model, None)
            self._open_until.pop(model, None)
            return
        n = self._fails.get(model, 0) + 1
        self._fails[model] = n
        if n >= threshold:
            self._open_until[model] = time.time() + cooldown

    async def open_circuits(self, models: list[str]) -> set[str]:
        """Open now; after the cooldown one probe passes (half-open) and its result decides."""
        now = time.time()
        return {m for m in models if self._open_until.get(m, 0.0) > now}

    async def affinity(self, session: str) -> str | None:
        """Pinned model if the pin has not expired."""
        pin = self._pins.get(session)
        if pin is None or pin[1] < time.time():
            return None
        return pin[0]

    async def pin(self, session: str, model: str, ttl: float) -> None:
        """Pin with expiry."""
        self._pins[session] = (model, time.time() + ttl)


# KEYS = scope keys; ARGV = [amount, limit_1, ..., limit_n]. Reserve on all or none.
_RESERVE = """
local amount = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local used = tonumber(redis.call('GET', key) or '0')
  local limit = tonumber(ARGV[i + 1])
  if used + amount > limit then
    return {i, tostring(used)}
  end
end
for i, key in ipairs(KEYS) do
  redis.call('INCRBYFLOAT', key, amount)
end
return {0, '0'}
"""

_RATE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], 61) end
if n > tonumber(ARGV[1]) then return 0 end
return 1
"""

_FAIL = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 3600)
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', math.floor(tonumber(ARGV[2]) * 1000))
end
return n
"""


class RedisState(GatewayState):
    """State in Redis, shared by every replica (``state: redis://...``)."""

    def __init__(self, url: str, prefix: str = "llmdispatch") -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise RuntimeError("state: redis:// needs the 'redis' extra") from exc
        self._redis: Any = aioredis.from_url(url)
        self.prefix = prefix
        self._reserve = self._redis.register_script(_RESERVE)
        self._rate = self._redis.register_script(_RATE)
        self._fail = self._redis.register_script(_FAIL)

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def reserve(self, scopes: list[Scope], amount: float) -> None:
        """One Lua script checks and reserves every scope."""
        if not scopes:
            return
        keys = [self._k("spent", s.name) for s in scopes]
        args = [repr(float(amount))] + [repr(float(s.limit)) for s in scopes]
        failed, used = await self._reserve(keys=keys, args=args)
        if int(failed):
            s = scopes[int(failed) - 1]
            raise BudgetExceeded(s.name, s.limit, s.limit - float(used))

    async def settle(self, scopes: list[Scope], reserved: float, actual: float) -> None:
        """Adjust by ``actual − reserved`` in one round trip."""
        if not scopes:
            return
        pipe = self._redis.pipeline(transaction=True)
        for s in scopes:
            pipe.incrbyfloat(self._k("spent", s.name), float(actual - reserved))
        await pipe.execute()

    async def spent(self, scope: str) -> float:
        """Spent plus reserved."""
        value = await self._redis.get(self._k("spent", scope))
        return float(value) if value is not None else 0.0

    async def allow_rate(self, key: str, per_minute: int) -> float | None:
        """Fixed one-minute windows keyed by the minute."""
        now = time.time()
        ok = await self._rate(keys=[self._k("rate", key, str(int(now // 60)))], args=[per_minute])
        return None if int(ok) else 60.0 - (now % 60)

    def _window_key(self, key: str) -> str:
        return self._k("rate", key, str(int(time.time() // 60)))

    async def window_used(self, key: str) -> int:
        """This minute's count (shared by every replica)."""
        value = await self._redis.get(self._window_key(key))
        return int(value) if value is not None else 0

    async def window_add(self, key: str, amount: int) -> None:
        """Add to this minute's count."""
        name = self._window_key(key)
        pipe = self._redis.pipeline(transaction=True)
        pipe.incrby(name, int(amount))
        pipe.expire(name, 61)
        await pipe.execute()

    async def record_result(self, model: str, ok: bool, threshold: int, cooldown: float) -> None:
        """Failures in a row open the breaker for every replica."""
        if ok:
            await self._redis.delete(self._k("fails", model), self._k("open", model))
            return
        await self._fail(
            keys=[self._k("fails", model), self._k("open", model)], args=[threshold, cooldown]
        )

    async def open_circuits(self, models: list[str]) -> set[str]:
        """Models with an unexpired open flag."""
        if not models:
            return set()
        flags = await self._redis.mget([self._k("open", m) for m in models])
        return {m for m, f in zip(models, flags, strict=True) if f is not None}

    async def affinity(self, session: str) -> str | None:
        """Pinned model."""
        value = await self._redis.get(self._k("pin", session))
        return value.decode() if value is not None else None

    async def pin(self, session: str, model: str, ttl: float) -> None:
        """Pin with expiry."""
        await self._redis.set(self._k("pin", session), model, px=int(ttl * 1000))

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def make_state(url: str | None, prefix: str = "llmdispatch") -> GatewayState:
    """``memory`` (or None) → :class:`MemoryState`; ``redis://…`` → :class:`RedisState`."""
    if url in (None, "", "memory"):
        return MemoryState()
    assert url is not None
    if url.startswith(("redis://", "rediss://")):
        return RedisState(url, prefix)
    raise ValueError(f"unknown state backend {url!r} (use 'memory' or redis://...)")
