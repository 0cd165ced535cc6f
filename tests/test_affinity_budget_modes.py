"""Gateway behaviours around sessions and exhausted budgets (committed gateway, real HTTP)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from _gateway import gateway_config, serve_in_thread
from llmdispatch.artifacts import save_artifact
from llmdispatch.data import load_table
from llmdispatch.data.table import OutcomeTable
from llmdispatch.gateway.app import create_app
from llmdispatch.gateway.config import load_config
from llmdispatch.gateway.replay_server import build_replay_app
from llmdispatch.policies.router import Router


@pytest.fixture(scope="module")
def table(shared_data: Callable[[str], Path]) -> OutcomeTable:
    return load_table(shared_data("cascades9"))


@pytest.fixture(scope="module")
def upstream(table: OutcomeTable) -> Iterator[str]:
    with serve_in_thread(build_replay_app(table)) as url:
        yield url + "/v1"


@pytest.fixture(scope="module")
def router(table: OutcomeTable, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("art") / "router"
    save_artifact(path, Router(lam=0.3).fit(table.split("train")))
    return path


def _ask(url: str, prompt: str, **extra: object) -> httpx.Response:
    body = {"model": "llmdispatch/auto", "messages": [{"role": "user", "content": prompt}]}
    return httpx.post(url + "/v1/chat/completions", json={**body, **extra}, timeout=30)


def test_a_conversation_stays_on_its_model(
    table: OutcomeTable, upstream: str, router: Path, tmp_path: Path
) -> None:
    cfg = gateway_config(
        tmp_path / "gw.yaml", table, {m: upstream for m in table.models}, {"auto": router}
    )
    test = table.split("test")
    prompts = [str(p) for p in test.prompts[::100]]
    with serve_in_thread(create_app(load_config(cfg))) as url:
        first = _ask(url, prompts[0], user="session-1")
        pinned = first.json()["model"]
        free = {_ask(url, p).json()["model"] for p in prompts[1:]}
        assert len(free) > 1  # without a session the router picks per prompt
        # The recorded prompts are all known to the replay upstream, so every turn answers.
        same = {_ask(url, p, user="session-1").json()["model"] for p in prompts[1:]}
        assert same == {pinned}
        headers = {"x-session-id": "session-2"}
        r = httpx.post(
            url + "/v1/chat/completions",
            headers=headers,
            timeout=30,
            json={
                "model": "llmdispatch/auto",
                "messages": [{"role": "user", "content": prompts[5]}],
            },
        )
        later = httpx.post(
            url + "/v1/chat/completions",
            headers=headers,
            timeout=30,
            json={
                "model": "llmdispatch/auto",
                "messages": [{"role": "user", "content": prompts[9]}],
            },
        )
        assert later.json()["model"] == r.json()["model"]


def test_exhausted_model_budget_routes_to_cheaper_models_when_configured(
    table: OutcomeTable, upstream: str, router: Path, tmp_path: Path
) -> None:
    test = table.split("test")
    prompts = [str(p) for p in test.prompts[:30]]
    with serve_in_thread(
        create_app(
            load_config(
                gateway_config(
                    tmp_path / "probe.yaml",
                    table,
                    {m: upstream for m in table.models},
                    {"auto": router},
                )
            )
        )
    ) as url:
        favourite = _ask(url, prompts[0]).json()["model"]
    budgets = {"per_model_usd": {favourite: 0.0}, "on_exhausted": "cheaper"}
    cfg = gateway_config(
        tmp_path / "gw.yaml",
        table,
        {m: upstream for m in table.models},
        {"auto": router},
        budgets=budgets,
    )
    with serve_in_thread(create_app(load_config(cfg))) as url:
        answered = [_ask(url, p, max_tokens=8) for p in prompts]
        assert all(r.status_code == 200 for r in answered)
        assert favourite not in {r.json()["model"] for r in answered}
    budgets = {"per_model_usd": {favourite: 0.0}, "on_exhausted": "reject"}
    cfg = gateway_config(
        tmp_path / "gw2.yaml",
        table,
        {m: upstream for m in table.models},
        {"auto": router},
        budgets=budgets,
    )
    with serve_in_thread(create_app(load_config(cfg))) as url:
        r = _ask(url, prompts[0], max_tokens=8)
        assert r.status_code == 429 and f"model:{favourite}" in r.json()["error"]["message"]
