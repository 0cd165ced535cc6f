"""Where an online learner's statistics live while the gateway serves: memory or Redis.

One learner is shared by every replica: each decision reads the current statistics (a
version number tells a replica whether its cached copy is stale, so a decision costs one
small read), each reward is applied as an atomic read-modify-write (Redis ``WATCH``/``MULTI``
optimistic transaction, retried on conflict), and the context of every served request is
kept under its request id (with a time-to-live) so that feedback may reach any replica.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from llmdispatch.policies.bandit import PendingDecision, UnknownRequestError
from llmdispatch.policies.linear_bandit import LinearBandit

_ARRAY_KEYS = ("A", "b", "pulls", "cost_sum", "cost_weight", "prior_ridge")


def _pack(state: dict[str, Any]) -> bytes:
    """A learner state as bytes: JSON header + one ``.npz`` (no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(state[k]) for k in _ARRAY_KEYS})  # type: ignore[arg-type]
    header = json.dumps({"arms": state["arms"], "params": state["params"]}).encode()
    return len(header).to_bytes(4, "big") + header + buf.getvalue()


def _unpack(blob: bytes) -> dict[str, Any]:
    size = int.from_bytes(blob[:4], "big")
    header = json.loads(blob[4 : 4 + size])
    with np.load(io.BytesIO(blob[4 + size :]), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return {**header, **arrays}


class MemoryLearnerStore:
    """The learner in this process only (the default)."""

    def __init__(self, pending_limit: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._learners: dict[str, tuple[int, dict[str, Any]]] = {}
        self._pending: OrderedDict[str, PendingDecision] = OrderedDict()
        self._limit = pending_limit

    def init(self, name: str, learner: LinearBandit) -> None:
        """Store ``learner`` under ``name`` unless a learner is already there."""
        with self._lock:
            self._learners.setdefault(name, (1, learner.get_state()))

    def version(self, name: str) -> int:
        """A number that changes whenever the learner changes."""
        with self._lock:
            return self._learners[name][0]

    def load(self, name: str) -> tuple[int, LinearBandit]:
        """The current learner and its version."""
        with self._lock:
            version, state = self._learners[name]
        return version, LinearBandit.from_state(state)

    def update(self, name: str, arm: int, x: np.ndarray, reward: float, cost: float | None) -> None:
        """Apply one reward atomically."""
        with self._lock:
            version, state = self._learners[name]
            learner = LinearBandit.from_state(state)
            learner.update(arm, x, reward, cost)
            self._learners[name] = (version + 1, learner.get_state())

    def put_pending(self, request_id: str, decision: PendingDecision) -> None:
        """Remember a served request's context until its feedback arrives."""
        with self._lock:
            self._pending[request_id] = decision
            while len(self._pending) > self._limit:
                self._pending.popitem(last=False)

    def pop_pending(self, request_id: str) -> PendingDecision:
        """Take a served request's context; unknown ids raise :class:`UnknownRequestError`."""
        with self._lock:
            try:
                return self._pending.pop(request_id)
            except KeyError:
                raise UnknownRequestError(
                    f"no pending bandit decision for request {request_id!r}"
                ) from None


class RedisLearnerStore:
    """The learner in Redis, shared by every gateway replica.

    Keys: ``{prefix}:{name}:state`` (bytes), ``{prefix}:{name}:version`` (int) and
    ``{prefix}:pending:{request id}`` (JSON, expires after ``pending_ttl`` seconds).
    """

    def __init__(
        self, url: str, prefix: str = "llmdispatch:bandit", pending_ttl: int = 7 * 24 * 3600
    ) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)
        self._prefix = prefix
        self._ttl = pending_ttl

    def _key(self, name: str, part: str) -> str:
        return f"{self._prefix}:{name}:{part}"

    def init(self, name: str, learner: LinearBandit) -> None:
        """Store ``learner`` under ``name`` unless one is already shared there."""
        if self._redis.set(self._key(name, "state"), _pack(learner.get_state()), nx=True):
            self._redis.set(self._key(name, "version"), 1)

    def version(self, name: str) -> int:
        """A number that changes whenever the learner changes."""
        raw = self._redis.get(self._key(name, "version"))
        return int(raw) if raw is not None else 0

    def load(self, name: str) -> tuple[int, LinearBandit]:
        """The current learner and its version, read together."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(self._key(name, "version"))
        pipe.get(self._key(name, "state"))
        version, blob = pipe.execute()
        if blob is None:
            raise KeyError(f"no shared learner {name!r} in Redis")
        return int(version or 0), LinearBandit.from_state(_unpack(blob))

    def update(self, name: str, arm: int, x: np.ndarray, reward: float, cost: float | None) -> None:
        """Apply one reward as an optimistic transaction (retried if another replica won)."""
        import redis

        state_key, version_key = self._key(name, "state"), self._key(name, "version")
        for attempt in range(100):
            with self._redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(state_key, version_key)  # type: ignore[no-untyped-call]
                    blob = pipe.get(state_key)
                    if blob is None:
                        raise KeyError(f"no shared learner {name!r} in Redis")
                    learner = LinearBandit.from_state(_unpack(bytes(blob)))  # type: ignore[arg-type]
                    learner.update(arm, x, reward, cost)
                    pipe.multi()
                    pipe.set(state_key, _pack(learner.get_state()))
                    pipe.incr(version_key)
                    pipe.execute()
                    return
                except redis.WatchError:
                    time.sleep(0.001 * (attempt % 10))
        raise RuntimeError(f"could not update shared learner {name!r}: too much contention")

    def put_pending(self, request_id: str, decision: PendingDecision) -> None:
        """Remember a served request's context (any replica may receive its feedback)."""
        payload = {
            "arm": decision.arm,
            "x": decision.context.tolist(),
            "prior": decision.prior,
            "model": decision.model,
        }
        key = f"{self._prefix}:pending:{request_id}"
        self._redis.set(key, json.dumps(payload), ex=self._ttl)

    def pop_pending(self, request_id: str) -> PendingDecision:
        """Take a served request's context atomically (feedback counts once)."""
        raw = self._redis.getdel(f"{self._prefix}:pending:{request_id}")
        if raw is None:
            raise UnknownRequestError(f"no pending bandit decision for request {request_id!r}")
        data = json.loads(raw)
        return PendingDecision(
            arm=int(data["arm"]),
            context=np.asarray(data["x"], dtype=np.float64),
            prior=float(data["prior"]),
            model=str(data["model"]),
        )


def learner_store(url: str | None) -> MemoryLearnerStore | RedisLearnerStore:
    """The store for a gateway's ``state:`` setting (``None`` or ``memory`` → this process)."""
    if url is None or url == "memory":
        return MemoryLearnerStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisLearnerStore(url)
    raise ValueError(f"unknown state store {url!r}: use 'memory' or a redis:// URL")
