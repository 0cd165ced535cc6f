"""Gateway behaviour over real HTTP: modalities and context windows, session affinity, inline
policies, aliases, streaming accounting, preference feedback, line-precise config errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from _gateway import Switch, gateway_config, serve_in_thread, shared_table, trained
from llmdispatch.artifacts import load_artifact
from llmdispatch.data.table import OutcomeTable
from llmdispatch.gateway.app import create_app
from llmdispatch.gateway.config import load_config
from llmdispatch.gateway.replay_server import build_replay_app
from llmdispatch.policies.router import Router
from llmdispatch.query import Query
from llmdispatch.yamlconfig import ConfigError


@pytest.fixture(scope="module")
def table(shared_data: Callable[[str], Path]) -> OutcomeTable:
    return shared_table(shared_data("cascades9"))


@pytest.fixture(scope="module")
def test_split(table: OutcomeTable) -> OutcomeTable:
    return table.split("test")


@pytest.fixture(scope="module")
def artifacts(table: OutcomeTable, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.getbasetemp()
    return {k: trained(k, table, root) for k in ("router", "cascade", "bandit")}


@pytest.fixture(scope="module")
def upstream(table: OutcomeTable) -> Iterator[str]:
    with serve_in_thread(build_replay_app(table)) as url:
        yield url + "/v1"


def user(test: OutcomeTable, i: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": str(test.prompts[i])}]


def recorded(test: OutcomeTable, i: int, model: str) -> str:
    return str(test.responses[i, test.models.index(model)])


def edit_models(path: Path, changes: dict[str, dict[str, Any]]) -> Path:
    doc = yaml.safe_load(path.read_text())
    for name, fields in changes.items():
        doc["models"][name].update(fields)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_image_parts_and_context_windows_restrict_the_models(
    table: OutcomeTable,
    test_split: OutcomeTable,
    upstream: str,
    artifacts: dict[str, Path],
    tmp_path: Path,
) -> None:
    cfg = gateway_config(
        tmp_path / "gw.yaml",
        table,
        {m: upstream for m in table.models},
        {"router": artifacts["router"]},
    )
    edit_models(
        cfg,
        {
            "gpt-4o": {"modalities": ["text", "image"]},
            "gpt-4o-mini": {"modalities": ["text", "image"], "context_window": 4},
            "llama3.2-1b": {"context_window": 4},
        },
    )
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    parts = [{"type": "text", "text": str(test_split.prompts[0])}, image]
    with serve_in_thread(create_app(load_config(cfg))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="llmdispatch/auto",
            messages=[{"role": "user", "content": parts}],  # type: ignore[misc,list-item]
        )
        # Only gpt-4o takes images and the prompt (gpt-4o-mini's window is 4 tokens).
        assert reply.model == "gpt-4o"
        assert reply.choices[0].message.content == recorded(test_split, 0, "gpt-4o")
        with pytest.raises(openai.BadRequestError, match="does not accept image input"):
            client.chat.completions.create(
                model="llama3.1-8b",
                messages=[{"role": "user", "content": parts}],  # type: ignore[misc,list-item]
            )
        with pytest.raises(openai.BadRequestError, match="context window"):
            client.chat.completions.create(model="llama3.2-1b", messages=user(test_split, 0))
        for i in range(30):  # text prompts never reach a model whose window is too small
            reply = client.chat.completions.create(
                model="llmdispatch/auto", messages=user(test_split, i)
            )
            assert reply.model not in ("gpt-4o-mini", "llama3.2-1b")


def _two_choices(router: Router, test: OutcomeTable) -> tuple[int, int]:
    """Two test prompts the router sends to different models."""
    first = router.explain(Query.from_text(str(test.prompts[0])), None).choice
    for i in range(1, test.n_prompts):
        if router.explain(Query.from_text(str(test.prompts[i])), None).choice != first:
            return 0, i
    raise AssertionError("the router sends every prompt to one model")


def test_session_affinity_keeps_a_conversation_on_one_model(
    table: OutcomeTable,
    test_split: OutcomeTable,
    upstream: str,
    artifacts: dict[str, Path],
    tmp_path: Path,
) -> None:
    router, _ = load_artifact(artifacts["router"])
    a, b = _two_choices(router, test_split)
    model_a = router.explain(Query.from_text(str(test_split.prompts[a])), None).choice
    model_b = router.explain(Query.from_text(str(test_split.prompts[b])), None).choice
    switch = Switch(build_replay_app(table))
    with serve_in_thread(switch) as switched:
        ups = {m: (switched + "/v1" if m == model_a else upstream) for m in table.models}
        cfg = gateway_config(
            tmp_path / "gw.yaml",
            table,
            ups,
            {"router": artifacts["router"], "cascade": artifacts["cascade"]},
        )
        app = create_app(load_config(cfg))
        with serve_in_thread(app) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            first = client.chat.completions.create(
                model="llmdispatch/router", messages=user(test_split, a), user="alice"
            )
            assert first.model == model_a
            # The next turn would go to model_b; the session stays on model_a.
            raw = client.chat.completions.with_raw_response.create(
                model="llmdispatch/router", messages=user(test_split, b), user="alice"
            )
            assert raw.parse().model == model_a and raw.headers["x-llmdispatch-affinity"] == model_a
            # A header names the session too; a new session is routed afresh.
            fresh = client.chat.completions.create(
                model="llmdispatch/router",
                messages=user(test_split, b),
                extra_headers={"x-session-id": "bob"},
            )
            assert fresh.model == model_b
            # The pinned model fails: the router chooses among the others.
            switch.down = True
            raw = client.chat.completions.with_raw_response.create(
                model="llmdispatch/router", messages=user(test_split, b), user="alice"
            )
            assert raw.parse().model == model_b
            assert raw.headers["x-llmdispatch-fallbacks"] == "0"
            # A cascade starts at the pinned rung (it may still escalate from there).
            cascade, _ = load_artifact(artifacts["cascade"])
            plan = cascade.explain(Query.from_text(str(test_split.prompts[0])), table.models)
            rungs = [c.model for c in plan.candidates if c.excluded is None]
            asyncio.run(app.state.gateway.state.pin("carol", rungs[-1], 60))
            raw = client.chat.completions.with_raw_response.create(
                model="llmdispatch/cascade", messages=user(test_split, 0), user="carol"
            )
            assert raw.parse().model == rungs[-1] and raw.headers["x-llmdispatch-rungs"] == "1"


def test_inline_policies_aliases_and_model_list(
    table: OutcomeTable,
    test_split: OutcomeTable,
    upstream: str,
    artifacts: dict[str, Path],
    tmp_path: Path,
    shared_data: Callable[[str], Path],
) -> None:
    cfg = gateway_config(tmp_path / "gw.yaml", table, {m: upstream for m in table.models})
    doc = yaml.safe_load(cfg.read_text())
    doc["models"]["house-model"] = {**doc["models"]["gpt-4o"], "upstream_name": "gpt-4o"}
    doc["policies"] = {
        "saved": str(artifacts["router"]),  # a bare path is an artifact
        "quick": {
            "policy": "router",
            "data": str(shared_data("cascades9")),
            "datasets": ["gsm8k"],
            "models": ["llama3.2-1b", "gpt-4o"],
            "params": {"lam": 0.0},
        },
    }
    doc["default_policy"] = "quick"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    with serve_in_thread(create_app(load_config(cfg))) as url:
        ids = {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}
        assert {"house-model", "llmdispatch/saved", "llmdispatch/quick", "llmdispatch/auto"} <= ids
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="llmdispatch/auto", messages=user(test_split, 1)
        )
        assert reply.model in ("llama3.2-1b", "gpt-4o")  # the inline router's two models
        saved = client.chat.completions.create(
            model="llmdispatch/saved", messages=user(test_split, 1)
        )
        assert saved.model in table.models
        alias = client.chat.completions.create(model="house-model", messages=user(test_split, 2))
        assert alias.model == "house-model"
        assert alias.choices[0].message.content == recorded(test_split, 2, "gpt-4o")
        chunks = list(
            client.chat.completions.create(
                model="house-model", messages=user(test_split, 2), stream=True
            )
        )
        assert {c.model for c in chunks} == {"house-model"}


def test_streams_are_billed_from_upstream_usage_even_when_the_client_did_not_ask(
    table: OutcomeTable, test_split: OutcomeTable, upstream: str, tmp_path: Path
) -> None:
    cfg = gateway_config(tmp_path / "gw.yaml", table, {m: upstream for m in table.models})
    model = "gpt-4o"
    j = test_split.models.index(model)
    card = table.card(model)
    expected = card.cost(int(test_split.tokens_in[3, j]), int(test_split.tokens_out[3, j]))
    with serve_in_thread(create_app(load_config(cfg))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        chunks = list(
            client.chat.completions.create(model=model, messages=user(test_split, 3), stream=True)
        )
        assert all(c.usage is None for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            recorded(test_split, 3, model)
        )
        text = httpx.get(url + "/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("llmdispatch_cost_usd_total{"))
        assert float(line.rsplit(" ", 1)[1]) == pytest.approx(expected, rel=1e-9)
        with_usage = list(
            client.chat.completions.create(
                model=model,
                messages=user(test_split, 3),
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = with_usage[-1].usage
        assert usage is not None
        assert usage.prompt_tokens == int(test_split.tokens_in[3, j])


def test_preference_feedback_teaches_a_bandit(
    table: OutcomeTable,
    test_split: OutcomeTable,
    upstream: str,
    artifacts: dict[str, Path],
    tmp_path: Path,
) -> None:
    cfg = gateway_config(
        tmp_path / "gw.yaml",
        table,
        {m: upstream for m in table.models},
        {"bandit": artifacts["bandit"]},
    )
    app = create_app(load_config(cfg))
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="llmdispatch/auto", messages=user(test_split, 0)
        )
        other = next(m for m in table.models if m != reply.model)
        bandit = app.state.gateway.policies["bandit"]
        query = Query(text=str(test_split.prompts[0]))

        def utility(model: str) -> float:
            plan = bandit.explain(query, frozenset(table.models))
            return float(next(c.utility for c in plan.candidates if c.model == model))

        before = utility(other) - utility(reply.model)
        pref = {"chosen": other, "rejected": reply.model}
        r = httpx.post(url + "/v1/feedback", json={"request_id": reply.id, "preference": pref})
        assert r.status_code == 200 and r.json()["learned"] is True
        assert utility(other) - utility(reply.model) > before
        r = httpx.post(url + "/v1/feedback", json={"request_id": "nope", "preference": pref})
        assert r.status_code == 404
        r = httpx.post(url + "/v1/feedback", json={"request_id": reply.id, "reward": True})
        assert r.status_code == 400
        bad = {"request_id": reply.id, "preference": {"chosen": 1}}
        assert httpx.post(url + "/v1/feedback", json=bad).status_code == 400


def test_config_errors_name_the_line(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    text = (
        "models:\n"
        "  a:\n"
        "    base_url: http://127.0.0.1:1/v1\n"
        "    timeout_s: -1\n"
        "policies:\n"
        f"  r: {artifacts['router']}\n"
        "  inline:\n"
        "    policy: router\n"
        "default_policy: nope\n"
    )
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path}:4: models.a.timeout_s" in message
    assert f"{path}:7: policies.inline" in message and "name its 'data'" in message
    path.write_text(
        text.replace("timeout_s: -1", "timeout_s: 1")
        .replace("  inline:\n", "")
        .replace("    policy: router\n", "")
    )
    with pytest.raises(ConfigError, match=rf"{path}:7: default_policy: 'nope' is not among"):
        load_config(path)
    from llmdispatch.cli import main

    assert main(["serve", str(path)]) == 2


def test_openapi_document_matches_the_routes_and_headers(
    table: OutcomeTable,
    test_split: OutcomeTable,
    upstream: str,
    artifacts: dict[str, Path],
    tmp_path: Path,
) -> None:
    from starlette.routing import Route

    from llmdispatch.gateway.openapi import openapi_document

    cfg = gateway_config(
        tmp_path / "gw.yaml", table, {m: upstream for m in table.models}, {"r": artifacts["router"]}
    )
    app = create_app(load_config(cfg))
    doc = openapi_document()
    served = {
        (r.path, m.lower())
        for r in app.routes
        if isinstance(r, Route)
        for m in (r.methods or ())
        if m != "HEAD"
    }
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
    ok = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
    with serve_in_thread(app) as url:
        r = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "llmdispatch/auto", "messages": user(test_split, 0), "user": "dan"},
        )
        r = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "llmdispatch/auto", "messages": user(test_split, 1), "user": "dan"},
        )
        assert r.status_code == 200
        sent = {h for h in r.headers if h.startswith("x-llmdispatch-")}
        assert "x-llmdispatch-affinity" in sent and sent <= set(ok["headers"])
        feedback = httpx.post(
            url + "/v1/feedback", json={"request_id": r.json()["id"], "reward": 1}
        )
        assert feedback.status_code == 404  # no log and no online learner: nothing to store
        schema = doc["paths"]["/v1/feedback"]["post"]["responses"]["200"]["content"]
        assert set(schema["application/json"]["schema"]["required"]) == {
            "request_id",
            "stored",
            "learned",
        }


def test_key_budgets_per_day_are_reported_as_remaining(
    table: OutcomeTable, test_split: OutcomeTable, upstream: str, tmp_path: Path
) -> None:
    from llmdispatch.gateway.auth import hash_api_key

    keys = [{"id": "k", "hash": hash_api_key("s"), "budget_usd": 0.5, "budget_window": "day"}]
    cfg = gateway_config(
        tmp_path / "gw.yaml", table, {m: upstream for m in table.models}, keys=keys
    )
    with serve_in_thread(create_app(load_config(cfg))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="s", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=user(test_split, 0)
        )
        cost = float(raw.headers["x-llmdispatch-cost"])
        text = httpx.get(url + "/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("llmdispatch_budget_remaining"))
        assert line.startswith('llmdispatch_budget_remaining_usd{scope="key:k"}')
        assert float(line.rsplit(" ", 1)[1]) == pytest.approx(0.5 - cost)
    text = cfg.read_text().replace("budget_window: day", "budget_window: week")
    cfg.write_text(text)
    line = next(n for n, x in enumerate(text.splitlines(), 1) if "budget_window" in x)
    with pytest.raises(ConfigError, match=rf"{cfg}:{line}: keys.0.budget_window"):
        load_config(cfg)
