"""Shared gateway state: one suite for the memory and the Redis backend.

Budgets (atomic multi-scope reservations, settle-once, windows), sliding-window rate limits,
circuit breakers with a half-open probe, session affinity and key namespacing. Redis runs
against the real server, each test under a random prefix (deleted afterwards).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from llmdispatch.gateway.state import (
    BudgetExceeded,
    GatewayState,
    MemoryState,
    Reservation,
    Scope,
    budget_period,
    make_state,
    sliding_estimate,
    sliding_wait,
)

Body = Callable[[GatewayState], Awaitable[None]]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.services)])
def run(request: pytest.FixtureRequest) -> Callable[[Body], None]:
    """Run an async test body against a fresh state of the parametrised backend."""
    url = None if request.param == "memory" else request.getfixturevalue("redis_url")

    def go(body: Body) -> None:
        async def main() -> None:
            state = make_state(url, prefix=f"test-{uuid.uuid4().hex}")
            try:
                await body(state)
            finally:
                await state.clear()
                await state.close()

        asyncio.run(main())

    return go


# ---- budgets ---------------------------------------------------------------------------------


def test_reserve_settle_and_remaining(run: Callable[[Body], None]) -> None:
    async def body(s: GatewayState) -> None:
        glob, key = Scope("global", 1.0), Scope("key:a", 0.5)
        res = await s.reserve([glob, key], 0.3)
        assert isinstance(res, Reservation) and res.amount == 0.3
        assert await s.spent(glob) == pytest.approx(0.3)
        assert await s.remaining(key) == pytest.approx(0.2)
        assert await s.settle(res, 0.1) is True
        assert await s.settle(res, 0.1) is False  # settles once
        assert await s.spent("global") == pytest.approx(0.1)
        assert await s.remaining(key) == pytest.approx(0.4)

    run(body)


def test_exhausted_budget_names_the_scope_and_reserves_nothing(
    run: Callable[[Body], None],
) -> None:
    async def body(s: GatewayState) -> None:
        glob, key = Scope("global", 10.0), Scope("key:a", 0.5)
        await s.reserve([glob, key], 0.4)
        with pytest.raises(BudgetExceeded) as info:
            await s.reserve([glob, key], 0.2)
        exc = info.value
        assert exc.scope == "key:a" and exc.remaining == pytest.approx(0.1)
        assert "budget 'key:a' exhausted: $0.100000 left of $0.50" in str(exc)
        assert "needs ~$0.200000" in str(exc)
        # All or nothing: the global scope was not charged for the refused reservation.
        assert await s.spent(glob) == pytest.approx(0.4)
        # Exactly the rest still fits.
        await s.reserve([glob, key], 0.1)
        assert await s.remaining(key) == pytest.approx(0.0, abs=1e-12)

    run(body)


def test_older_settle_form_adjusts_by_the_difference(run: Callable[[Body], None]) -> None:
    async def body(s: GatewayState) -> None:
        scopes = [Scope("global", 1.0)]
        await s.reserve(scopes, 0.5)
        await s.settle(scopes, 0.5, 0.2)
        assert await s.spent("global") == pytest.approx(0.2)
        with pytest.raises(TypeError):
            await s.settle(scopes, 0.5)  # type: ignore[call-overload]

    run(body)


def test_empty_scopes_reserve_nothing(run: Callable[[Body], None]) -> None:
    async def body(s: GatewayState) -> None:
        res = await s.reserve([], 5.0)
        assert res.keys == () and await s.settle(res, 7.0) is True

    run(body)


def test_windowed_scopes_count_separately(run: Callable[[Body], None]) -> None:
    async def body(s: GatewayState) -> None:
        total, day = Scope("key:a", 1.0), Scope("key:a", 0.3, "day")
        res = await s.reserve([total, day], 0.25)
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        assert res.keys == ("key:a", f"key:a@{today}")
        with pytest.raises(BudgetExceeded, match="per day"):
            await s.reserve([total, day], 0.1)
        assert await s.spent(total) == pytest.approx(0.25)
        assert await s.remaining(day) == pytest.approx(0.05)

    run(body)


def test_concurrent_reservations_never_overspend(run: Callable[[Body], None]) -> None:
    async def body(s: GatewayState) -> None:
        budget, estimate = Scope("global", 1.0), 0.03
        spent: list[float] = []
        rng = random.Random(0)

        async def request() -> None:
            try:
                res = await s.reserve([budget], estimate)
            except BudgetExceeded:
                return
            await asyncio.sleep(rng.random() * 0.002)  # the upstream call
            actual = estimate * rng.uniform(0.5, 1.0)
            await s.settle(res, actual)
            spent.append(actual)

        await asyncio.gather(*(request() for _ in range(120)))
        assert sum(spent) <= budget.limit + 1e-9
        assert await s.spent(budget) == pytest.approx(sum(spent))
        assert len(spent) >= math.floor(budget.limit / estimate)

    run(body)


def test_budget_period_labels() -> None:
    t = datetime(2026, 11, 22, 19, 5, tzinfo=UTC).timestamp()
    assert budget_period("total", t) is None
    assert budget_period("hour", t) == "2026-11-22T19"
    assert budget_period("day", t) == "2026-11-22"
    assert budget_period("month", t) == "2026-11"
    with pytest.raises(ValueError, match="unknown budget window"):
        budget_period("week", t)  # type: ignore[arg-type]


def test_a_daily_budget_refills_the_next_day() -> None:
    now = [datetime(2026, 11, 22, 23, 59, tzinfo=UTC).timestamp()]
    state = MemoryState(clock=lambda: now[0])
    day = Scope("global", 0.1, "day")

    async def body() -> None:
        await state.reserve([day], 0.1)
        with pytest.raises(BudgetExceeded):
            await state.reserve([day], 0.01)
        now[0] += 120  # past midnight UTC
        assert await state.remaining(day) == pytest.approx(0.1)
        res = await state.reserve([day], 0.05)
        assert res.keys == ("global@2026-11-23",)

    asyncio.run(body())


# ---- rate limits -----------------------------------------------------------------------------


def test_rate_limit_refuses_with_a_wait_that_is_enough(run: Callable[[Body], None]) -> None:
    async def body(s: GatewayState) -> None:
        window = 0.5
        while time.time() % window > 0.1:  # start early in a fixed window (same host clock)
            await asyncio.sleep(0.01)
        for _ in range(5):
            assert await s.acquire("key:a", 5, 1, window) is None
        wait = await s.acquire("key:a", 5, 1, window)
        assert wait is not None and 0 < wait <= 2 * window
        assert await s.usage("key:a", window) == pytest.approx(5, abs=1e-6)
        assert await s.acquire("key:b", 5, 1, window) is None  # keys are separate
        await asyncio.sleep(wait + 0.02)
        assert await s.acquire("key:a", 5, 1, window) is None

    run(body)


def test_token_limits_check_then_consume(run: Callable[[Body], None]) -> None:
    async def body(s: GatewayState) -> None:
        assert await s.limit_wait("tok:k", 100, 60) is None
        await s.consume("tok:k", 90)
        assert await s.usage("tok:k") == pytest.approx(90, abs=0.01)
        wait = await s.limit_wait("tok:k", 100, 20)
        assert wait is not None and wait > 0
        assert await s.limit_wait("tok:k", 100, 5) is None
        assert await s.usage("tok:k") == pytest.approx(90, abs=0.01)  # checks count nothing
        # The older per-minute names map to the same counters.
        await s.window_add("tok:k", 10)
        assert await s.window_used("tok:k") == pytest.approx(100, abs=0.01)
        assert await s.allow_rate("req:k", 1) is None
        assert await s.allow_rate("req:k", 1) is not None

    run(body)


def test_a_single_request_above_the_limit_passes_only_alone(run: Callable[[Body], None]) -> None:
    async def body(s: GatewayState) -> None:
        assert await s.acquire("tok:big", 100, 150, 0.3) is None  # nothing else counted
        wait = await s.acquire("tok:big", 100, 150, 0.3)
        assert wait is not None and wait <= 0.6 + 1e-6

    run(body)


def test_sliding_window_keeps_the_rate(run: Callable[[Body], None]) -> None:
    async def body(s: GatewayState) -> None:
        window, limit = 0.2, 10
        granted: list[float] = []
        start = time.monotonic()
        while time.monotonic() - start < 4 * window:
            if await s.acquire("burst", limit, 1, window) is None:
                granted.append(time.monotonic())
            await asyncio.sleep(0.002)
        # About `limit` per window over 4 windows (a fixed window would allow bursts of 2×
        # at its boundaries; the estimator's worst case is below that).
        assert 2 * limit <= len(granted) <= 5 * limit
        for t in granted:
            in_window = sum(1 for u in granted if t - window < u <= t)
            assert in_window <= 2 * limit

    run(body)


def _estimate_after(prev: float, cur: float, frac: float, window: float, t: float) -> float:
    """The sliding estimate ``t`` seconds later if nothing more is counted."""
    pos = frac + t / window  # windows elapsed since the current one began
    if pos < 1:
        return sliding_estimate(prev, cur, pos)
    if pos < 2:
        return sliding_estimate(cur, 0.0, pos - 1)
    return 0.0


def test_sliding_wait_is_the_first_instant_that_fits() -> None:
    rng = random.Random(1)
    checked = 0
    for _ in range(500):
        limit = rng.uniform(5, 100)
        amount = rng.uniform(0.5, limit)
        prev, cur = rng.uniform(0, limit), rng.uniform(0, limit)
        frac, window = rng.random(), 60.0
        if sliding_estimate(prev, cur, frac) + amount <= limit:
            continue
        wait = sliding_wait(prev, cur, frac, limit, amount, window)
        assert _estimate_after(prev, cur, frac, window, wait + 1e-6) + amount <= limit + 1e-6
        before = max(wait - 1e-3, 0.0)
        assert _estimate_after(prev, cur, frac, window, before) + amount > limit - 1e-6
        checked += 1
    assert checked > 100


# ---- circuit breakers ------------------------------------------------------------------------


def test_breaker_opens_probes_once_and_closes(run: Callable[[Body], None]) -> None:
    async def body(s: GatewayState) -> None:
        cooldown = 0.5
        for _ in range(2):
            await s.record_result("m", False, 3, cooldown)
        assert await s.breaker_status("m") == "closed"
        assert await s.open_circuits(["m", "n"]) == set()
        await s.record_result("m", False, 3, cooldown)
        assert await s.breaker_status("m") == "open"
        assert await s.open_circuits(["m", "n"]) == {"m"}
        await asyncio.sleep(cooldown + 0.05)
        assert await s.breaker_status("m") == "half-open"
        assert await s.open_circuits(["m"]) == set()  # this caller takes the probe
        assert await s.open_circuits(["m"]) == {"m"}  # everyone else waits
        await s.record_result("m", False, 3, cooldown)  # the probe failed: open again
        assert await s.breaker_status("m") == "open"
        await asyncio.sleep(cooldown + 0.05)
        assert await s.open_circuits(["m"]) == set()
        await s.record_result("m", True, 3, cooldown)  # the probe succeeded: closed
        assert await s.breaker_status("m") == "closed"
        assert await s.open_circuits(["m"]) == set() == await s.open_circuits(["m"])

    run(body)


def test_a_success_resets_the_failure_count(run: Callable[[Body], None]) -> None:
    async def body(s: GatewayState) -> None:
        for ok in (False, False, True, False, False):
            await s.record_result("m", ok, 3, 10.0)
        assert await s.breaker_status("m") == "closed"
        await s.record_result("m", False, 3, 10.0)
        assert await s.open_circuits(["m"]) == {"m"}

    run(body)


# ---- affinity and namespacing ----------------------------------------------------------------


def test_affinity_expires_and_can_be_replaced(run: Callable[[Body], None]) -> None:
    async def body(s: GatewayState) -> None:
        assert await s.affinity("conv-1") is None
        await s.pin("conv-1", "small", 0.4)
        await s.pin("conv-2", "large", 30)
        assert await s.affinity("conv-1") == "small"
        await s.pin("conv-1", "medium", 0.4)
        assert await s.affinity("conv-1") == "medium"
        await asyncio.sleep(0.45)
        assert await s.affinity("conv-1") is None
        assert await s.affinity("conv-2") == "large"
        await s.unpin("conv-2")
        assert await s.affinity("conv-2") is None

    run(body)


@pytest.mark.services
def test_prefixes_isolate_redis_states(redis_url: str) -> None:
    async def main() -> None:
        a = make_state(redis_url, f"test-{uuid.uuid4().hex}")
        b = make_state(redis_url, f"test-{uuid.uuid4().hex}")
        try:
            await a.reserve([Scope("global", 1.0)], 0.7)
            await a.pin("s", "m", 30)
            assert await b.spent("global") == 0.0 and await b.affinity("s") is None
            await b.reserve([Scope("global", 1.0)], 0.9)  # its own budget
            await b.clear()
            assert await a.spent("global") == pytest.approx(0.7)
        finally:
            for s in (a, b):
                await s.clear()
                await s.close()

    asyncio.run(main())


def test_make_state_backends() -> None:
    assert isinstance(make_state(None), MemoryState)
    assert isinstance(make_state("memory"), MemoryState)
    from llmdispatch.gateway.redis_state import RedisState

    state = make_state("redis://127.0.0.1:1/0", "p")  # no I/O until used
    assert isinstance(state, RedisState) and state.prefix == "p"
    asyncio.run(state.close())
    with pytest.raises(ValueError, match="unknown state backend"):
        make_state("mongodb://x")
