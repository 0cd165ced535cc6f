"""Dynamic batching of live decisions: the batcher, a router's prefetch, and the gateway."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from _gateway import gateway_config, serve_in_thread, shared_table, trained
from llmdispatch.data.table import OutcomeTable
from llmdispatch.gateway.app import create_app
from llmdispatch.gateway.batching import DecisionBatcher
from llmdispatch.gateway.config import load_config
from llmdispatch.gateway.replay_server import build_replay_app
from llmdispatch.policies.base import Decisions, Policy
from llmdispatch.policies.router import PREFETCH_MIN_QUERIES, Router
from llmdispatch.query import Query
from llmdispatch.types import BoolMatrix


class Recording(Policy):
    """A policy that records the batches it is asked to prefetch (and can fail them)."""

    def __init__(self, fail: bool = False, batches: bool = True) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail
        self.batches_wanted = batches

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        raise NotImplementedError

    def prefetches(self) -> bool:
        return self.batches_wanted

    def prefetch(self, queries: Sequence[Query]) -> None:
        self.batches.append([q.text for q in queries])
        if self.fail:
            raise RuntimeError("estimator broke")
        for q in queries:
            q.estimates[id(self)] = len(queries)


class Holder(Policy):
    """A composition: holds a policy that prefetches."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        raise NotImplementedError


def _gather(batcher: DecisionBatcher, policy: Policy, queries: list[Query]) -> None:
    async def run() -> None:
        await asyncio.gather(*(batcher.prefetch(policy, q) for q in queries))

    asyncio.run(run())


def test_requests_ready_together_are_prefetched_in_one_batch() -> None:
    sizes: list[int] = []
    policy = Recording()
    queries = [Query(text=f"q{i}") for i in range(10)]
    _gather(DecisionBatcher(on_batch=sizes.append), policy, queries)
    assert policy.batches == [[f"q{i}" for i in range(10)]]
    assert sizes == [10]
    assert all(q.estimates[id(policy)] == 10 for q in queries)


def test_large_gatherings_are_sliced_and_policies_batched_apart() -> None:
    sizes: list[int] = []
    a, b = Recording(), Recording()
    batcher = DecisionBatcher(max_batch=4, on_batch=sizes.append)

    async def run() -> None:
        await asyncio.gather(
            *(batcher.prefetch(a, Query(text=f"a{i}")) for i in range(10)),
            *(batcher.prefetch(b, Query(text=f"b{i}")) for i in range(3)),
        )

    asyncio.run(run())
    assert [len(x) for x in a.batches] == [4, 4, 2] and [len(x) for x in b.batches] == [3]
    assert sorted(sizes) == [2, 3, 4, 4]


def test_later_arrivals_form_their_own_batch() -> None:
    policy = Recording()
    batcher = DecisionBatcher()

    async def run() -> None:
        await asyncio.gather(*(batcher.prefetch(policy, Query(text=str(i))) for i in range(3)))
        await asyncio.gather(*(batcher.prefetch(policy, Query(text=str(i))) for i in range(5)))

    asyncio.run(run())
    assert [len(x) for x in policy.batches] == [3, 5]


def test_a_failing_batch_lets_every_request_decide_alone(caplog: pytest.LogCaptureFixture) -> None:
    policy = Recording(fail=True)
    queries = [Query(text=str(i)) for i in range(6)]
    with caplog.at_level(logging.WARNING, logger="llmdispatch.gateway.batching"):
        _gather(DecisionBatcher(), policy, queries)
    assert len(policy.batches) == 1 and "one query at a time" in caplog.text
    assert all(not q.estimates for q in queries)


def test_policies_without_estimates_are_not_held_back() -> None:
    policy = Recording(batches=False)
    _gather(DecisionBatcher(), policy, [Query(text="x"), Query(text="y")])
    assert policy.batches == []


def test_a_composition_prefetches_through_the_policy_it_holds() -> None:
    inner = Recording()
    outer = Holder(inner)
    queries = [Query(text=str(i)) for i in range(5)]
    _gather(DecisionBatcher(), outer, queries)
    assert outer.prefetches() and len(inner.batches) == 1
    assert all(q.estimates[id(inner)] == 5 for q in queries)


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        DecisionBatcher(max_batch=0)


# ---- a real router -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table(shared_data: Callable[[str], Path]) -> OutcomeTable:
    return shared_table(shared_data("cascades9"))


@pytest.fixture(scope="module")
def router_path(table: OutcomeTable, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained("router", table, tmp_path_factory.getbasetemp())


def _queries(table: OutcomeTable, n: int) -> list[Query]:
    return [Query.from_text(str(p)) for p in table.split("test").prompts[:n]]


def test_router_prefetch_gives_the_one_query_estimates_and_decisions(
    table: OutcomeTable, router_path: Path
) -> None:
    from llmdispatch.artifacts import load_artifact

    router, _ = load_artifact(router_path)
    assert isinstance(router, Router) and router.prefetches()
    alone, ahead = _queries(table, 64), _queries(table, 64)
    for i in range(0, 64, 16):
        router.prefetch(ahead[i : i + 16])
    assert all(id(router) in q.estimates for q in ahead)
    q_alone = np.vstack([router.quality([q]) for q in alone])
    q_ahead = np.vstack([router.quality([q]) for q in ahead])
    np.testing.assert_allclose(q_ahead, q_alone, atol=1e-5)
    assert [router.explain(q).choice for q in ahead] == [router.explain(q).choice for q in alone]

    few = _queries(table, PREFETCH_MIN_QUERIES - 1)
    router.prefetch(few)  # too few to be worth a batch: left to the one-row path
    assert all(not q.estimates for q in few)


@pytest.fixture(scope="module")
def upstream(table: OutcomeTable) -> Iterator[str]:
    with serve_in_thread(build_replay_app(table)) as url:
        yield url + "/v1"


async def _concurrently(url: str, model: str, prompts: list[str]) -> list[str]:
    """Send every prompt at once through the official async client; who answered each."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
    replies = await asyncio.gather(
        *(
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": p}])
            for p in prompts
        )
    )
    await client.close()
    return [r.model for r in replies]


def _served_as_decided(
    table: OutcomeTable,
    upstream: str,
    folder: Path,
    artifact: Path,
    n_prompts: int,
    **config: Any,
) -> tuple[float, float]:
    """Serve ``artifact``, send ``n_prompts`` test prompts at once, check each is answered by
    the model the artifact's router picks offline; the batch-size histogram (count, sum)."""
    from llmdispatch.artifacts import load_artifact

    router, _ = load_artifact(artifact)
    prompts = [str(p) for p in table.split("test").prompts[:n_prompts]]
    expected = [router.explain(Query.from_text(p)).choice for p in prompts]
    upstreams = {m: upstream for m in table.models}
    cfg = gateway_config(folder / "gw.yaml", table, upstreams, {"r": artifact}, **config)
    with serve_in_thread(create_app(load_config(cfg))) as url:
        assert asyncio.run(_concurrently(url, "llmdispatch/r", prompts)) == expected
        return _batch_histogram(url)


def _batch_histogram(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics").text
    count = re.search(r"^llmdispatch_decision_batch_size_count (\S+)$", text, re.M)
    total = re.search(r"^llmdispatch_decision_batch_size_sum (\S+)$", text, re.M)
    assert count and total
    return float(count.group(1)), float(total.group(1))


@pytest.mark.parametrize("max_batch", [256, 1])
def test_concurrent_requests_through_the_gateway_get_the_router_s_own_decisions(
    table: OutcomeTable,
    router_path: Path,
    upstream: str,
    tmp_path: Path,
    max_batch: int,
) -> None:
    gatherings, requests = _served_as_decided(
        table, upstream, tmp_path, router_path, 40, max_decision_batch=max_batch
    )
    if max_batch > 1:  # every routed request was counted in exactly one gathering
        assert requests == 40 and 1 <= gatherings <= 40
    else:
        assert (gatherings, requests) == (0, 0)


def test_an_encoder_ensemble_is_served_with_its_own_decisions(
    table: OutcomeTable, upstream: str, tmp_path: Path
) -> None:
    from llmdispatch.artifacts import save_artifact

    train = table.split("train").take(np.arange(600))
    router = Router(encoder="ensemble", encoder_candidates=("tfidf", "scalar"), lam=0.1)
    router.fit(train)
    assert len(router.members_) == 2  # both views kept (weights fitted on validation)
    save_artifact(tmp_path / "ensemble", router)
    _served_as_decided(table, upstream, tmp_path, tmp_path / "ensemble", 24)


def test_compiled_kernels_serve_the_router_s_own_decisions(
    table: OutcomeTable,
    router_path: Path,
    upstream: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("numba")
    from llmdispatch import kernels

    assert kernels.kernels() is None
    # One request at a time: every decision takes the one-query path the kernels run.
    _served_as_decided(
        table, upstream, tmp_path, router_path, 30, max_decision_batch=1, compiled_kernels=True
    )
    assert kernels.kernels() is not None  # the gateway switched them on when it loaded
    kernels.deactivate()
    monkeypatch.setenv("LLMDISPATCH_KERNELS", "numpy")
    cfg = gateway_config(
        tmp_path / "off.yaml",
        table,
        {m: upstream for m in table.models},
        {"r": router_path},
        compiled_kernels=True,
    )
    with pytest.raises(ValueError, match="compiled_kernels: true needs numba"):
        create_app(load_config(cfg))
