"""Two gateway processes sharing one Redis (budgets, bandit learner) and one log database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from _gateway import free_port, gateway_config, serve_in_thread, shared_table, trained
from llmdispatch.data.table import OutcomeTable
from llmdispatch.gateway.replay_server import build_replay_app
from llmdispatch.gateway.requestlog import REQUESTS, export_table

pytestmark = pytest.mark.services


@contextmanager
def gateway_process(config: Path) -> Iterator[str]:
    """``llmdispatch serve CONFIG`` in its own process; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmdispatch.cli", "serve", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"gateway did not start: {err[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def fresh_postgres(postgres_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test (dropped afterwards)."""
    name = f"llmd_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = postgres_url.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def table(shared_data: Callable[[str], Path]) -> OutcomeTable:
    return shared_table(shared_data("cascades9"))


@pytest.fixture(scope="module")
def upstream(table: OutcomeTable) -> Iterator[str]:
    with serve_in_thread(build_replay_app(table)) as url:
        yield url + "/v1"


async def _load(urls: list[str], prompts: list[str], model: str) -> list[httpx.Response]:
    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(i: int, prompt: str) -> httpx.Response:
            async with sem:
                body = {
                    "model": model,
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": prompt}],
                }
                return await client.post(urls[i % len(urls)] + "/v1/chat/completions", json=body)

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_shared_budget_and_log_across_replicas(
    database: str,
    table: OutcomeTable,
    upstream: str,
    redis_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    db = str(tmp_path / "log.sqlite")
    if database == "postgres":
        db = request.getfixturevalue("fresh_postgres")
    budget = 0.02
    cfg = gateway_config(
        tmp_path / "gw.yaml",
        table,
        {m: upstream for m in table.models},
        state=redis_url,
        state_prefix=f"test-{uuid.uuid4().hex[:8]}",
        database=db,
        budgets={"global_usd": budget},
    )
    prompts = [str(p) for p in table.split("test").prompts[:120]]
    with gateway_process(cfg) as a, gateway_process(cfg) as b:
        responses = asyncio.run(_load([a, b], prompts, "gpt-4o"))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429} and 200 in codes and 429 in codes
        costs = [float(r.headers["x-llmdispatch-cost"]) for r in responses if r.status_code == 200]
        # Never more than the budget plus one request's cost, across both replicas.
        assert sum(costs) <= budget + max(costs)
        refused = next(r for r in responses if r.status_code == 429)
        assert "budget 'global' exhausted" in refused.json()["error"]["message"]
    # Both processes flushed their logs on shutdown: every request is there.
    engine = sa.create_engine(db if "://" in db else f"sqlite:///{db}")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(REQUESTS.c.status, REQUESTS.c.cost_usd)).all()
    engine.dispose()
    assert len(rows) == len(prompts)
    assert sorted(r.status for r in rows) == sorted(codes)
    assert sum(r.cost_usd for r in rows if r.status == 200) == pytest.approx(sum(costs))
    exported = export_table(db)
    assert exported.n_prompts == codes.count(200) and exported.models == ("gpt-4o",)


def test_feedback_through_either_replica_trains_one_shared_bandit(
    table: OutcomeTable,
    upstream: str,
    redis_url: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    bandit = trained("bandit", table, tmp_path_factory.getbasetemp())
    cfg = gateway_config(
        tmp_path / "gw.yaml",
        table,
        {m: upstream for m in table.models},
        {"bandit": bandit},
        state=redis_url,
        state_prefix=f"test-{uuid.uuid4().hex[:8]}",
        database=str(tmp_path / "log.sqlite"),
    )
    prompt = str(table.split("test").prompts[0])
    body = {"model": "llmdispatch/auto", "messages": [{"role": "user", "content": prompt}]}
    with gateway_process(cfg) as a, gateway_process(cfg) as b:
        first = httpx.post(a + "/v1/chat/completions", json=body).json()["model"]
        unknown = httpx.post(b + "/v1/feedback", json={"request_id": "nope", "reward": 0.0})
        assert unknown.status_code == 404
        chosen = first
        for step in range(40):
            served = httpx.post((a, b)[step % 2] + "/v1/chat/completions", json=body).json()
            reward = 0.0 if served["model"] == first else 1.0
            # Feedback goes to the *other* replica: the learner lives in Redis.
            fb = httpx.post(
                (b, a)[step % 2] + "/v1/feedback",
                json={"request_id": served["id"], "reward": reward},
            )
            assert fb.status_code == 200 and fb.json()["learned"] is True
            chosen = served["model"]
            if chosen != first:
                break
        assert chosen != first, "negative feedback through the gateway never moved traffic"
        # Feedback for an id already rewarded is refused and changes nothing.
        again = httpx.post(a + "/v1/feedback", json={"request_id": served["id"], "reward": 1.0})
        assert again.status_code in (200, 404)
