"""Two OS processes hammering one Redis budget never overspend it.

Each process runs many concurrent requests (reserve → a short "call" → settle with the actual
cost); the reservation script checks and charges the global and a per-key scope atomically,
so across processes the total stays within the budget whenever estimates cover the actual
cost. When they do not, the total exceeds the budget by at most the overruns of the calls in
flight at the last reservation (bounded here by the sum of all overruns).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import uuid

import pytest

from llmdispatch.gateway.state import BudgetExceeded, Scope, make_state

pytestmark = pytest.mark.services

BUDGET = 2.0
KEY_BUDGET = 1.5


def hammer(url: str, prefix: str, seed: int, overrun: float) -> list[tuple[float, float]]:
    """One process: 24 concurrent clients until the budget refuses them; (estimate, actual)
    of every call made."""
    return asyncio.run(_hammer(url, prefix, seed, overrun))


async def _hammer(url: str, prefix: str, seed: int, overrun: float) -> list[tuple[float, float]]:
    state = make_state(url, prefix)
    scopes = [Scope("global", BUDGET), Scope(f"key:{seed % 2}", KEY_BUDGET)]
    rng = random.Random(seed)
    calls: list[tuple[float, float]] = []

    async def client() -> None:
        refusals = 0
        while refusals < 5:
            estimate = rng.uniform(0.002, 0.02)
            try:
                res = await state.reserve(scopes, estimate)
            except BudgetExceeded:
                refusals += 1
                await asyncio.sleep(0.002)
                continue
            await asyncio.sleep(rng.random() * 0.003)
            actual = estimate * rng.uniform(0.3, 1.0 + overrun)
            await state.settle(res, actual)
            calls.append((estimate, actual))

    try:
        await asyncio.gather(*(client() for _ in range(24)))
    finally:
        await state.close()
    return calls


@pytest.mark.parametrize("overrun", [0.0, 0.5])
def test_two_processes_share_one_budget(redis_url: str, overrun: float) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(hammer, [(redis_url, prefix, s, overrun) for s in (0, 1)])

    async def read() -> tuple[float, float, float]:
        state = make_state(redis_url, prefix)
        try:
            values = (
                await state.spent("global"),
                await state.spent("key:0"),
                await state.spent("key:1"),
            )
            await state.clear()
            return values
        finally:
            await state.close()

    spent, key0, key1 = asyncio.run(read())
    assert all(results), "both processes served requests"
    costs = [a for calls in results for _, a in calls]
    # Every settlement landed exactly once: Redis holds the sum of the actual costs.
    assert spent == pytest.approx(sum(costs), abs=1e-9)
    assert key0 == pytest.approx(sum(a for _, a in results[0]), abs=1e-9)
    assert key1 == pytest.approx(sum(a for _, a in results[1]), abs=1e-9)
    overruns = sum(max(0.0, a - e) for calls in results for e, a in calls)
    if overrun == 0.0:
        assert sum(costs) <= BUDGET + 1e-9
        assert key0 <= KEY_BUDGET + 1e-9 and key1 <= KEY_BUDGET + 1e-9
    else:
        assert overruns > 0
        assert sum(costs) <= BUDGET + overruns + 1e-9
    assert sum(costs) > 0.5 * BUDGET  # the budget was actually used, not refused early
