"""Shared gateway state: budgets, rate limits, circuit breakers, session affinity.

One async interface, :class:`GatewayState`, and two backends: :class:`MemoryState` for one
process and :class:`~llmdispatch.gateway.redis_state.RedisState` for replicas behind a load
balancer (every check-and-update there is one Lua script, so it is atomic across replicas).
:func:`make_state` picks the backend from the ``state:`` setting.

**Budgets** work by reservation. Before a call the gateway reserves the request's estimated
cost on every scope it spends from (global, API key, model), each over its window (``total``,
or the current UTC ``hour``, ``day`` or ``month``); the reservation succeeds only if
``spent + reserved + estimate ≤ limit`` holds on all scopes at once. After the call
:meth:`GatewayState.settle` replaces the reservation by the actual cost (once: settling a
reservation twice changes nothing). Concurrent requests on any number of replicas therefore
never spend more than the limit plus what their estimates fell short by — at most one
request's cost when estimates cover ``max_tokens``. A replica that dies between reserve and
settle leaves its reservation counted (the safe side).

**Rate limits** count requests or tokens per key with a sliding-window counter (the
Cloudflare estimator: the previous fixed window's count weighted by how much of it still
overlaps the sliding window, plus the current window's count), which smooths the 2× burst a
fixed window allows at its boundary. A refused call learns how many seconds to wait.

**Circuit breakers** open after ``threshold`` failures in a row, stay open for ``cooldown``
seconds, then let exactly one probe through (half-open, the probe holds a lease as long as
the cooldown); its success closes the breaker, its failure opens it for another cooldown.

**Session affinity** pins a conversation to a model for a time-to-live.
"""

from __future__ import annotations

import math
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, overload

Window = Literal["total", "hour", "day", "month"]
BreakerStatus = Literal["closed", "open", "half-open"]

#: How long the record of an unsettled reservation is kept (settling later changes nothing).
RESERVATION_TTL_S = 24 * 3600
#: Floating-point slack when comparing spending with a limit.
_EPS = 1e-12
#: Period keys outlive their period by this much (late settlements still land on them).
_PERIOD_TTL_S: dict[str, int] = {"hour": 2 * 3600, "day": 2 * 86400, "month": 62 * 86400}


def budget_period(window: Window, now: float) -> str | None:
    """The UTC period a budget window is in at ``now`` (``None`` for ``total``)."""
    if window == "total":
        return None
    t = datetime.fromtimestamp(now, UTC)
    if window == "hour":
        return t.strftime("%Y-%m-%dT%H")
    if window == "day":
        return t.strftime("%Y-%m-%d")
    if window == "month":
        return t.strftime("%Y-%m")
    raise ValueError(f"unknown budget window {window!r} (total, hour, day or month)")


@dataclass(frozen=True)
class Scope:
    """A spending scope (e.g. ``global``, ``key:team-a``, ``model:gpt-4o``), its USD limit
    and the window the limit applies to."""

    name: str
    limit: float
    window: Window = "total"

    def key(self, now: float) -> str:
        """Where this scope's spending in the period containing ``now`` is counted."""
        period = budget_period(self.window, now)
        return self.name if period is None else f"{self.name}@{period}"

    @property
    def ttl(self) -> int:
        """Seconds a period's counter is kept (0: forever)."""
        return _PERIOD_TTL_S.get(self.window, 0)


@dataclass(frozen=True)
class Reservation:
    """Money held on some scopes until :meth:`GatewayState.settle` (returned by reserve)."""

    id: str
    scopes: tuple[Scope, ...]
    keys: tuple[str, ...]
    amount: float


class BudgetExceeded(Exception):
    """A reservation that would pass a limit; says which scope and what is left."""

    def __init__(
        self,
        scope: str,
        limit: float,
        remaining: float,
        window: Window = "total",
        requested: float | None = None,
    ) -> None:
        period = "" if window == "total" else f" per {window}"
        need = "" if requested is None else f"; this request needs ~${requested:.6f}"
        super().__init__(
            f"budget {scope!r} exhausted: ${max(remaining, 0):.6f} left of ${limit:.2f}"
            f"{period}{need}"
        )
        self.scope = scope
        self.limit = limit
        self.remaining = remaining
        self.window = window
        self.requested = requested


def sliding_estimate(prev: float, cur: float, frac: float) -> float:
    """Units counted in the last window: ``prev·(1 − frac) + cur`` (``frac`` of the current
    fixed window has elapsed)."""
    return prev * (1.0 - frac) + cur


def sliding_wait(
    prev: float, cur: float, frac: float, limit: float, amount: float, window: float
) -> float:
    """Seconds until ``amount`` more units fit under ``limit`` if nothing else is counted.

    Inside the current window the estimate decays as the previous window slides out; if even
    an empty previous window is not enough, the wait runs into the next window, where the
    current count decays in turn. An amount above the limit fits once the window is empty.
    """
    room = limit - amount - cur
    if room >= 0:
        if prev <= 0:
            return 0.0
        return max(0.0, 1.0 - room / prev - frac) * window
    room_next = limit - amount
    if room_next < 0 or cur <= 0:
        return (2.0 - frac) * window
    return (1.0 - frac) * window + (1.0 - room_next / cur) * window


class GatewayState(ABC):
    """What the gateway keeps between requests (see the module docstring).

    The public methods translate scopes and windows to storage keys; a backend implements
    the ``_``-prefixed primitives, each of which must be atomic.
    """

    def _now(self) -> float:
        """The time budget periods are taken from (UNIX seconds)."""
        return time.time()

    # ---- budgets ---------------------------------------------------------------------------
    async def reserve(self, scopes: Sequence[Scope], amount: float) -> Reservation:
        """Reserve ``amount`` USD on every scope at once, or raise :class:`BudgetExceeded`
        naming the first scope that cannot cover it (then nothing is reserved)."""
        if not scopes:  # nothing to hold (no budget applies): no id, no storage round trip
            return Reservation("", (), (), float(amount))
        now = self._now()
        keys = tuple(s.key(now) for s in scopes)
        res = Reservation(uuid.uuid4().hex, tuple(scopes), keys, float(amount))
        failed, used = await self._reserve(
            res.id, keys, [s.limit for s in scopes], [s.ttl for s in scopes], res.amount
        )
        if failed is not None:
            s = scopes[failed]
            raise BudgetExceeded(s.name, s.limit, s.limit - used, s.window, res.amount)
        return res

    @overload
    async def settle(self, reservation: Reservation, actual: float) -> bool: ...

    @overload
    async def settle(self, reservation: Sequence[Scope], actual: float, cost: float) -> bool: ...

    async def settle(
        self, reservation: Reservation | Sequence[Scope], actual: float, cost: float | None = None
    ) -> bool:
        """Replace a reservation by the actual cost; ``False`` if it was already settled.

        ``settle(reservation, actual_cost)``; the older form ``settle(scopes, reserved,
        actual_cost)`` adjusts the scopes' current periods by ``actual − reserved`` without
        the settle-once guard.
        """
        if isinstance(reservation, Reservation):
            if not reservation.scopes:
                return True
            return await self._adjust(
                reservation.id,
                reservation.keys,
                [s.ttl for s in reservation.scopes],
                float(actual) - reservation.amount,
            )
        if cost is None:
            raise TypeError("settle(scopes, reserved, actual) needs the actual cost")
        if not reservation:
            return True
        now = self._now()
        keys = tuple(s.key(now) for s in reservation)
        return await self._adjust(None, keys, [s.ttl for s in reservation], cost - actual)

    async def spent(self, scope: str | Scope) -> float:
        """USD spent plus reserved on a scope (its current period); a bare name is ``total``."""
        key = scope if isinstance(scope, str) else scope.key(self._now())
        return (await self._get_spent([key]))[0]

    async def remaining(self, scope: Scope) -> float:
        """USD left on a scope in its current period (may be negative after an overrun)."""
        return scope.limit - await self.spent(scope)

    # ---- rate limits -----------------------------------------------------------------------
    async def acquire(
        self, key: str, limit: float, amount: float = 1.0, window: float = 60.0
    ) -> float | None:
        """Count ``amount`` units on ``key`` if they fit under ``limit`` per ``window``
        seconds: ``None`` when counted, else the seconds to wait (nothing counted)."""
        return await self._acquire(key, float(limit), float(amount), float(window), True)

    async def limit_wait(
        self, key: str, limit: float, amount: float = 1.0, window: float = 60.0
    ) -> float | None:
        """Like :meth:`acquire` but counts nothing: ``None`` if ``amount`` fits now."""
        return await self._acquire(key, float(limit), float(amount), float(window), False)

    async def usage(self, key: str, window: float = 60.0) -> float:
        """Units counted on ``key`` in the sliding window."""
        return await self._usage(key, float(window))

    async def consume(self, key: str, amount: float, window: float = 60.0) -> None:
        """Count ``amount`` units on ``key`` unconditionally (e.g. tokens after a call)."""
        await self._consume(key, float(amount), float(window))

    async def allow_rate(self, key: str, per_minute: int) -> float | None:
        """Count one request against ``per_minute``; ``None`` if allowed, else seconds to wait."""
        return await self.acquire(key, per_minute, 1.0, 60.0)

    async def window_used(self, key: str) -> float:
        """Units counted on ``key`` in the last minute (sliding)."""
        return await self.usage(key, 60.0)

    async def window_add(self, key: str, amount: int) -> None:
        """Count ``amount`` units on ``key`` in the current minute."""
        await self.consume(key, float(amount), 60.0)

    # ---- circuit breakers ------------------------------------------------------------------
    async def record_result(self, model: str, ok: bool, threshold: int, cooldown: float) -> None:
        """Feed a model's breaker: a success closes it; ``threshold`` failures in a row (or a
        failed half-open probe) open it for ``cooldown`` seconds."""
        if ok:
            await self._breaker_success(model)
        else:
            await self._breaker_failure(model, threshold, cooldown)

    async def open_circuits(self, models: Sequence[str]) -> set[str]:
        """Models a request may not call now. A breaker past its cooldown is left out for
        one caller at a time (it takes the half-open probe lease)."""
        if not models:
            return set()
        return await self._open_circuits(list(models))

    @abstractmethod
    async def breaker_status(self, model: str) -> BreakerStatus:
        """``closed``, ``open`` (cooling down or a probe is out) or ``half-open`` (a probe
        may go); reading does not take the probe lease."""

    # ---- session affinity ------------------------------------------------------------------
    @abstractmethod
    async def affinity(self, session: str) -> str | None:
        """The model a conversation is pinned to, if the pin has not expired."""

    @abstractmethod
    async def pin(self, session: str, model: str, ttl: float) -> None:
        """Pin a conversation to a model for ``ttl`` seconds (a new pin replaces the old)."""

    @abstractmethod
    async def unpin(self, session: str) -> None:
        """Forget a conversation's pin."""

    # ---- housekeeping ----------------------------------------------------------------------
    async def ping(self) -> None:  # noqa: B027 - optional hook, memory is always ready
        """Raise if the backend cannot be reached (readiness checks)."""

    @abstractmethod
    async def clear(self) -> None:
        """Forget everything under this state's namespace (tests, resets)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""

    # ---- backend primitives (each atomic) --------------------------------------------------
    @abstractmethod
    async def _reserve(
        self,
        rid: str,
        keys: Sequence[str],
        limits: Sequence[float],
        ttls: Sequence[int],
        amount: float,
    ) -> tuple[int | None, float]:
        """Add ``amount`` to every key if all stay within their limits and record ``rid``;
        else ``(index of the first key that cannot, its current value)``."""

    @abstractmethod
    async def _adjust(
        self, rid: str | None, keys: Sequence[str], ttls: Sequence[int], delta: float
    ) -> bool:
        """Add ``delta`` to every key, once per reservation id (``None``: unguarded)."""

    @abstractmethod
    async def _get_spent(self, keys: Sequence[str]) -> list[float]:
        """Current values of budget keys (0 when absent)."""

    @abstractmethod
    async def _acquire(
        self, key: str, limit: float, amount: float, window: float, count: bool
    ) -> float | None:
        """Sliding-window check (and count, if ``count``) of ``amount`` units."""

    @abstractmethod
    async def _usage(self, key: str, window: float) -> float:
        """Sliding-window estimate."""

    @abstractmethod
    async def _consume(self, key: str, amount: float, window: float) -> None:
        """Add to the current fixed window."""

    @abstractmethod
    async def _breaker_success(self, model: str) -> None:
        """Close and reset a breaker."""

    @abstractmethod
    async def _breaker_failure(self, model: str, threshold: int, cooldown: float) -> None:
        """Count a failure; trip or re-open."""

    @abstractmethod
    async def _open_circuits(self, models: list[str]) -> set[str]:
        """Open breakers, granting half-open probe leases."""


@dataclass
class _Breaker:
    fails: int = 0
    open_until: float = 0.0  # 0: never tripped since the last success
    cooldown: float = 0.0
    probe_until: float = 0.0


@dataclass
class _Counter:
    index: int
    prev: float = 0.0
    cur: float = 0.0


class MemoryState(GatewayState):
    """In-process state (one worker). No method awaits between its check and its update, so
    each is atomic on the event loop. ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._spent: dict[str, float] = {}
        self._open_reservations: dict[str, float] = {}
        self._counters: dict[tuple[str, float], _Counter] = {}
        self._breakers: dict[str, _Breaker] = {}
        self._pins: dict[str, tuple[str, float]] = {}
        self._ops = 0

    def _now(self) -> float:
        return self._clock()

    async def _reserve(
        self,
        rid: str,
        keys: Sequence[str],
        limits: Sequence[float],
        ttls: Sequence[int],
        amount: float,
    ) -> tuple[int | None, float]:
        for i, (key, limit) in enumerate(zip(keys, limits, strict=True)):
            used = self._spent.get(key, 0.0)
            if used + amount > limit + _EPS:
                return i, used
        for key in keys:
            self._spent[key] = self._spent.get(key, 0.0) + amount
        self._open_reservations[rid] = self._clock() + RESERVATION_TTL_S
        self._housekeep()
        return None, 0.0

    async def _adjust(
        self, rid: str | None, keys: Sequence[str], ttls: Sequence[int], delta: float
    ) -> bool:
        if rid is not None:
            expiry = self._open_reservations.pop(rid, None)
            if expiry is None or expiry < self._clock():
                return False
        for key in keys:
            self._spent[key] = self._spent.get(key, 0.0) + delta
        return True

    async def _get_spent(self, keys: Sequence[str]) -> list[float]:
        return [self._spent.get(k, 0.0) for k in keys]

    def _counter(self, key: str, window: float, now: float) -> _Counter:
        index = math.floor(now / window)
        c = self._counters.get((key, window))
        if c is None:
            c = self._counters[(key, window)] = _Counter(index)
        elif c.index != index:  # roll forward: the old current becomes the previous window
            c.prev = c.cur if index == c.index + 1 else 0.0
            c.cur = 0.0
            c.index = index
        return c

    async def _acquire(
        self, key: str, limit: float, amount: float, window: float, count: bool
    ) -> float | None:
        now = self._clock()
        c = self._counter(key, window, now)
        frac = now / window - c.index
        used = sliding_estimate(c.prev, c.cur, frac)
        if used + amount > limit + _EPS and used > 0:
            return max(sliding_wait(c.prev, c.cur, frac, limit, amount, window), 1e-3)
        if count:
            c.cur += amount
            self._housekeep()
        return None

    async def _usage(self, key: str, window: float) -> float:
        now = self._clock()
        c = self._counter(key, window, now)
        return sliding_estimate(c.prev, c.cur, now / window - c.index)

    async def _consume(self, key: str, amount: float, window: float) -> None:
        self._counter(key, window, self._clock()).cur += amount
        self._housekeep()

    async def _breaker_success(self, model: str) -> None:
        self._breakers.pop(model, None)

    async def _breaker_failure(self, model: str, threshold: int, cooldown: float) -> None:
        now = self._clock()
        b = self._breakers.setdefault(model, _Breaker())
        b.fails += 1
        # Trip when closed, or re-open after a failed half-open probe; failures of calls
        # that were already in flight while open do not extend the cooldown.
        if b.fails >= threshold and now >= b.open_until:
            b.open_until, b.cooldown, b.probe_until = now + cooldown, cooldown, 0.0

    async def _open_circuits(self, models: list[str]) -> set[str]:
        now = self._clock()
        out = set()
        for m in models:
            b = self._breakers.get(m)
            if b is None or not b.open_until:
                continue
            if now < b.open_until or now < b.probe_until:
                out.add(m)
            else:
                b.probe_until = now + b.cooldown  # this caller may probe
        return out

    async def breaker_status(self, model: str) -> BreakerStatus:
        """See :meth:`GatewayState.breaker_status`."""
        b = self._breakers.get(model)
        now = self._clock()
        if b is None or not b.open_until:
            return "closed"
        return "open" if now < b.open_until or now < b.probe_until else "half-open"

    async def affinity(self, session: str) -> str | None:
        """See :meth:`GatewayState.affinity`."""
        pin = self._pins.get(session)
        if pin is None or pin[1] <= self._clock():
            return None
        return pin[0]

    async def pin(self, session: str, model: str, ttl: float) -> None:
        """See :meth:`GatewayState.pin`."""
        self._pins[session] = (model, self._clock() + ttl)
        self._housekeep()

    async def unpin(self, session: str) -> None:
        """See :meth:`GatewayState.unpin`."""
        self._pins.pop(session, None)

    async def clear(self) -> None:
        """See :meth:`GatewayState.clear`."""
        self._spent.clear()
        self._open_reservations.clear()
        self._counters.clear()
        self._breakers.clear()
        self._pins.clear()

    def _housekeep(self, every: int = 4096) -> None:
        """Now and then drop expired pins, reservations and idle rate counters."""
        self._ops += 1
        if self._ops % every:
            return
        now = self._clock()
        self._pins = {s: p for s, p in self._pins.items() if p[1] > now}
        self._open_reservations = {r: t for r, t in self._open_reservations.items() if t > now}
        self._counters = {
            k: c for k, c in self._counters.items() if math.floor(now / k[1]) <= c.index + 1
        }


def make_state(url: str | None, prefix: str = "llmdispatch") -> GatewayState:
    """``memory`` (or ``None``) → :class:`MemoryState`; ``redis://…`` / ``rediss://…`` /
    ``unix://…`` → :class:`~llmdispatch.gateway.redis_state.RedisState` with keys under
    ``prefix``."""
    if url in (None, "", "memory"):
        return MemoryState()
    assert url is not None
    if url.startswith(("redis://", "rediss://", "unix://")):
        from llmdispatch.gateway.redis_state import RedisState

        return RedisState(url, prefix)
    raise ValueError(f"unknown state backend {url!r} (use 'memory' or redis://...)")
