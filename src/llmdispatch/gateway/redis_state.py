"""Gateway state in Redis, shared by every replica (``state: redis://…``).

Each check-and-update is one Lua script run with ``EVALSHA`` (redis-py's registered scripts),
so it is atomic across replicas; scripts read the server's clock (``TIME``), so replicas whose
clocks drift still agree on windows, cooldowns and leases. The semantics are those of
:class:`~llmdispatch.gateway.state.MemoryState` (see :mod:`llmdispatch.gateway.state`).

Keys, all under the configurable prefix: ``{prefix}:budget:{scope}[@period]`` (USD, a float
string), ``{prefix}:res:{id}`` (an unsettled reservation), ``{prefix}:rl:{window}:{key}``
(hash: fixed-window index, previous and current counts), ``{prefix}:cb:{model}`` (hash:
failures, open-until, cooldown, probe lease), ``{prefix}:pin:{session}`` (model, with TTL).
Multi-key scripts assume one Redis server (or primary), not Redis Cluster; scripts that read
``TIME`` and then write need Redis 5 or newer (effects replication).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmdispatch.gateway.state import RESERVATION_TTL_S, BreakerStatus, GatewayState

# KEYS: budget keys…, reservation key. ARGV: amount, reservation ttl, limits…, key ttls…
_RESERVE = """
local n = #KEYS - 1
local amount = tonumber(ARGV[1])
for i = 1, n do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used + amount > tonumber(ARGV[2 + i]) + 1e-12 then
    return {i, tostring(used)}
  end
end
for i = 1, n do
  redis.call('INCRBYFLOAT', KEYS[i], ARGV[1])
  local ttl = tonumber(ARGV[2 + n + i])
  if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
end
redis.call('SET', KEYS[n + 1], ARGV[1], 'EX', ARGV[2])
return {0, '0'}
"""

# KEYS: budget keys… [, reservation key]. ARGV: delta, guarded ('1'/'0'), key ttls…
_ADJUST = """
local n = #KEYS
if ARGV[2] == '1' then
  n = n - 1
  if redis.call('DEL', KEYS[#KEYS]) == 0 then return 0 end
end
for i = 1, n do
  redis.call('INCRBYFLOAT', KEYS[i], ARGV[1])
  local ttl = tonumber(ARGV[2 + i])
  if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
end
return 1
"""

# Sliding-window counter. KEYS: the counter hash. ARGV: limit, amount, window (s), mode
# (acquire: check and count; check: check only; consume: count; usage: read).
# Returns {1, used} when allowed (or for consume/usage), {0, seconds to wait} when not.
_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit, amount, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local mode = ARGV[4]
local idx = math.floor(now / window)
local h = redis.call('HMGET', KEYS[1], 'i', 'p', 'c')
local i, p, c = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0
if i == nil then
  p, c = 0, 0
elseif i ~= idx then
  if i == idx - 1 then p = c else p = 0 end
  c = 0
end
local frac = now / window - idx
local used = p * (1 - frac) + c
if mode == 'usage' then return {1, tostring(used)} end
if mode ~= 'consume' and used + amount > limit + 1e-12 and used > 0 then
  local wait
  local room = limit - amount - c
  if room >= 0 then
    if p <= 0 then wait = 0 else wait = math.max(0, 1 - room / p - frac) * window end
  else
    local room_next = limit - amount
    if room_next < 0 or c <= 0 then
      wait = (2 - frac) * window
    else
      wait = (1 - frac) * window + (1 - room_next / c) * window
    end
  end
  return {0, tostring(math.max(wait, 0.001))}
end
if mode == 'check' then return {1, tostring(used)} end
c = c + amount
redis.call('HSET', KEYS[1], 'i', idx, 'p', p, 'c', c)
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 2000) + 1000)
return {1, tostring(used)}
"""

# KEYS: breaker hash. ARGV: threshold, cooldown (ms).
_FAILURE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cooldown = tonumber(ARGV[2])
local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
local open_until = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if fails >= tonumber(ARGV[1]) and now >= open_until then
  redis.call('HSET', KEYS[1], 'until', now + cooldown, 'cooldown', cooldown, 'probe', 0)
end
redis.call('PEXPIRE', KEYS[1], math.max(cooldown * 10, 3600000))
return fails
"""

# KEYS: breaker hashes. ARGV: '1' to take half-open probe leases, '0' to only read.
# Returns per key: 0 closed, 1 open, 2 half-open (a probe may go; with '1' this caller has it).
_OPEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local h = redis.call('HMGET', key, 'until', 'cooldown', 'probe')
  local open_until = tonumber(h[1] or '0')
  if open_until == 0 then
    out[i] = 0
  elseif now < open_until or now < tonumber(h[3] or '0') then
    out[i] = 1
  else
    if ARGV[1] == '1' then redis.call('HSET', key, 'probe', now + tonumber(h[2] or '0')) end
    out[i] = 2
  end
end
return out
"""

_STATUS: dict[int, BreakerStatus] = {0: "closed", 1: "open", 2: "half-open"}


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class RedisState(GatewayState):
    """State in Redis, shared by every replica; keys under ``prefix`` (see module docs)."""

    def __init__(self, url: str, prefix: str = "llmdispatch", max_connections: int = 64) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise RuntimeError("state: redis:// needs the 'redis' extra") from exc
        # No I/O here: connections open on first use, inside the serving event loop. A
        # blocking pool makes a burst of requests wait for a free connection; the default
        # pool raises "Too many connections" beyond its size instead.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=20
        )
        self._redis: Any = aioredis.Redis.from_pool(pool)
        self.prefix = prefix
        self._reserve_script = self._redis.register_script(_RESERVE)
        self._adjust_script = self._redis.register_script(_ADJUST)
        self._rate_script = self._redis.register_script(_RATE)
        self._failure_script = self._redis.register_script(_FAILURE)
        self._open_script = self._redis.register_script(_OPEN)

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # ---- budgets ---------------------------------------------------------------------------
    async def _reserve(
        self,
        rid: str,
        keys: Sequence[str],
        limits: Sequence[float],
        ttls: Sequence[int],
        amount: float,
    ) -> tuple[int | None, float]:
        redis_keys = [self._k("budget", k) for k in keys] + [self._k("res", rid)]
        args: list[str | int] = [repr(amount), RESERVATION_TTL_S]
        args += [repr(float(x)) for x in limits] + list(ttls)
        failed, used = await self._reserve_script(keys=redis_keys, args=args)
        if int(failed):
            return int(failed) - 1, float(used)
        return None, 0.0

    async def _adjust(
        self, rid: str | None, keys: Sequence[str], ttls: Sequence[int], delta: float
    ) -> bool:
        redis_keys = [self._k("budget", k) for k in keys]
        if rid is not None:
            redis_keys.append(self._k("res", rid))
        args: list[str | int] = [repr(delta), "1" if rid is not None else "0", *ttls]
        return bool(int(await self._adjust_script(keys=redis_keys, args=args)))

    async def _get_spent(self, keys: Sequence[str]) -> list[float]:
        values = await self._redis.mget([self._k("budget", k) for k in keys])
        return [float(v) if v is not None else 0.0 for v in values]

    # ---- rate limits -----------------------------------------------------------------------
    async def _rate(
        self, key: str, limit: float, amount: float, window: float, mode: str
    ) -> tuple[bool, float]:
        name = self._k("rl", repr(window), key)
        ok, value = await self._rate_script(
            keys=[name], args=[repr(limit), repr(amount), repr(window), mode]
        )
        return bool(int(ok)), float(value)

    async def _acquire(
        self, key: str, limit: float, amount: float, window: float, count: bool
    ) -> float | None:
        ok, value = await self._rate(key, limit, amount, window, "acquire" if count else "check")
        return None if ok else value

    async def _usage(self, key: str, window: float) -> float:
        return (await self._rate(key, 0.0, 0.0, window, "usage"))[1]

    async def _consume(self, key: str, amount: float, window: float) -> None:
        await self._rate(key, 0.0, amount, window, "consume")

    # ---- circuit breakers ------------------------------------------------------------------
    async def _breaker_success(self, model: str) -> None:
        await self._redis.delete(self._k("cb", model))

    async def _breaker_failure(self, model: str, threshold: int, cooldown: float) -> None:
        args = [int(threshold), max(1, round(cooldown * 1000))]
        await self._failure_script(keys=[self._k("cb", model)], args=args)

    async def _open_circuits(self, models: list[str]) -> set[str]:
        codes = await self._open_script(keys=[self._k("cb", m) for m in models], args=["1"])
        return {m for m, code in zip(models, codes, strict=True) if int(code) == 1}

    async def breaker_status(self, model: str) -> BreakerStatus:
        """See :meth:`GatewayState.breaker_status`."""
        (code,) = await self._open_script(keys=[self._k("cb", model)], args=["0"])
        return _STATUS[int(code)]

    # ---- affinity --------------------------------------------------------------------------
    async def affinity(self, session: str) -> str | None:
        """See :meth:`GatewayState.affinity`."""
        value = await self._redis.get(self._k("pin", session))
        return value.decode() if value is not None else None

    async def pin(self, session: str, model: str, ttl: float) -> None:
        """See :meth:`GatewayState.pin`."""
        await self._redis.set(self._k("pin", session), model, px=max(1, round(ttl * 1000)))

    async def unpin(self, session: str) -> None:
        """See :meth:`GatewayState.unpin`."""
        await self._redis.delete(self._k("pin", session))

    # ---- housekeeping ----------------------------------------------------------------------
    async def ping(self) -> None:
        """Raise if Redis cannot be reached."""
        await self._redis.ping()

    async def clear(self) -> None:
        """Delete every key under the prefix (``SCAN``, not ``KEYS``: no long block)."""
        batch: list[bytes] = []
        async for key in self._redis.scan_iter(match=_glob_escape(self.prefix) + ":*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                await self._redis.delete(*batch)
                batch.clear()
        if batch:
            await self._redis.delete(*batch)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
