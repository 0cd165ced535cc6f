"""A learner shared by replicas: in memory and in a real Redis server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from llmdispatch.data.locate import load_table
from llmdispatch.data.table import OutcomeTable
from llmdispatch.gateway.learner_state import MemoryLearnerStore, RedisLearnerStore, learner_store
from llmdispatch.policies.bandit import BanditRouter, UnknownRequestError
from llmdispatch.policies.linear_bandit import LinearBandit
from llmdispatch.query import Query


@pytest.fixture(scope="module")
def train(shared_data: Callable[[str], Path]) -> OutcomeTable:
    shared_data("cascades9")
    table = load_table("cascades9")
    return table.take(np.arange(0, table.n_prompts, 12))


def _replicas(train: OutcomeTable, store_factory: Callable[[], object]) -> list[BanditRouter]:
    name = f"test-{uuid.uuid4().hex}"
    out = []
    for _ in range(2):
        policy = BanditRouter(algorithm="epsilon-greedy", epsilon=0.0, dim=6).fit(train)
        policy.attach_store(store_factory(), name)  # type: ignore[arg-type]
        out.append(policy)
    return out


def _feedback_moves_decisions(replicas: list[BanditRouter]) -> None:
    one, two = replicas
    allowed = frozenset(one.models_)
    q = Query.from_text("Which planet is known as the red planet?")
    first = two.choose(q, allowed)
    # Replica one serves the query and hears, again and again, that the answer was wrong.
    for i in range(30):
        rid = f"req-{uuid.uuid4().hex}-{i}"
        model = one.choose(q, allowed, request_id=rid)
        assert one.feedback(rid, 0.0) == model
    assert two.choose(q, allowed) != first  # replica two sees what one learned
    with pytest.raises(UnknownRequestError):
        two.feedback(rid, 1.0)  # each reward counts once, whichever replica receives it
    before = two.learner_.get_state()["A"].copy()
    with pytest.raises(UnknownRequestError, match="no pending"):
        two.feedback("never-served", 1.0)
    two._sync()
    np.testing.assert_array_equal(before, two.learner_.A)


def test_memory_store_shares_one_learner(train: OutcomeTable) -> None:
    store = MemoryLearnerStore()
    _feedback_moves_decisions(_replicas(train, lambda: store))


@pytest.mark.services
def test_redis_store_shares_one_learner_between_replicas(
    train: OutcomeTable, redis_url: str
) -> None:
    _feedback_moves_decisions(_replicas(train, lambda: RedisLearnerStore(redis_url)))


@pytest.mark.services
def test_redis_updates_are_atomic_under_contention(redis_url: str) -> None:
    name = f"test-{uuid.uuid4().hex}"
    RedisLearnerStore(redis_url).init(name, LinearBandit(["a", "b"], dim=2))
    x = np.array([1.0, 0.5])

    def worker(arm: int) -> None:
        store = RedisLearnerStore(redis_url)  # its own connection, like another replica
        for _ in range(40):
            store.update(name, arm, x, 0.5, 0.01)

    threads = [threading.Thread(target=worker, args=(i % 2,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    version, learner = RedisLearnerStore(redis_url).load(name)
    assert learner.pulls.tolist() == [80.0, 80.0]  # no update lost
    assert version == 1 + 160


@pytest.mark.services
def test_store_from_setting(redis_url: str) -> None:
    assert isinstance(learner_store(None), MemoryLearnerStore)
    assert isinstance(learner_store(redis_url), RedisLearnerStore)
    with pytest.raises(ValueError, match="unknown state store"):
        learner_store("mongodb://x")
