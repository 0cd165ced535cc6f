"""The gateway over real HTTP: the official openai client against a replay upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from _gateway import free_port, gateway_config, serve_in_thread, shared_table, trained
from llmdispatch.data.table import OutcomeTable
from llmdispatch.gateway.app import create_app
from llmdispatch.gateway.auth import hash_api_key
from llmdispatch.gateway.config import load_config
from llmdispatch.gateway.openapi import openapi_document
from llmdispatch.gateway.replay_server import Faults, build_replay_app


@pytest.fixture(scope="module")
def table(shared_data: Callable[[str], Path]) -> OutcomeTable:
    return shared_table(shared_data("cascades9"))


@pytest.fixture(scope="module")
def artifacts(table: OutcomeTable, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.getbasetemp()
    return {k: trained(k, table, root) for k in ("router", "cascade")}


@pytest.fixture(scope="module")
def upstream(table: OutcomeTable) -> Iterator[str]:
    with serve_in_thread(build_replay_app(table)) as url:
        yield url + "/v1"


@pytest.fixture(scope="module")
def broken(table: OutcomeTable) -> Iterator[str]:
    with serve_in_thread(build_replay_app(table, Faults(fail_rate=1.0, fail_status=503))) as url:
        yield url + "/v1"


@pytest.fixture(scope="module")
def gateway(
    table: OutcomeTable,
    upstream: str,
    artifacts: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("gw")
    cfg = gateway_config(
        root / "gw.yaml",
        table,
        {m: upstream for m in table.models},
        {"router": artifacts["router"], "cascade": artifacts["cascade"]},
        database=str(root / "log.sqlite"),
    )
    with serve_in_thread(create_app(load_config(cfg))) as url:
        yield url


def prompt_of(table: OutcomeTable, i: int) -> list[dict[str, str]]:
    test = table.split("test")
    return [{"role": "user", "content": str(test.prompts[i])}]


def recorded(table: OutcomeTable, i: int, model: str) -> str:
    test = table.split("test")
    return str(test.responses[i, test.models.index(model)])


def test_routed_completion_with_decision_headers(gateway: str, table: OutcomeTable) -> None:
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="llmdispatch/auto", messages=prompt_of(table, 0)
    )
    reply = raw.parse()
    assert reply.model in table.models
    assert reply.choices[0].message.content == recorded(table, 0, reply.model)
    h = raw.headers
    assert h["x-llmdispatch-model"] == reply.model and h["x-llmdispatch-policy"] == "router"
    assert h["x-llmdispatch-request-id"] == reply.id
    assert float(h["x-llmdispatch-estimated-quality"]) > 0
    assert float(h["x-llmdispatch-cost"]) > 0 and h["x-llmdispatch-rungs"] == "1"


def test_gateway_and_route_command_agree(
    gateway: str, table: OutcomeTable, artifacts: dict[str, Path]
) -> None:
    from llmdispatch.artifacts import load_artifact
    from llmdispatch.query import Query

    router, _ = load_artifact(artifacts["router"])
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused")
    for i in range(8):
        messages = prompt_of(table, i)
        plan = router.explain(Query.from_text(messages[0]["content"]), None)
        reply = client.chat.completions.create(model="llmdispatch/router", messages=messages)
        assert reply.model == plan.choice


def test_pass_through_streaming_and_async(gateway: str, table: OutcomeTable) -> None:
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused")
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=prompt_of(table, 1))
    assert reply.model == "gpt-4o-mini"
    assert reply.choices[0].message.content == recorded(table, 1, "gpt-4o-mini")
    stream = client.chat.completions.create(
        model="llmdispatch/router",
        messages=prompt_of(table, 2),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    model = chunks[0].model
    assert text == recorded(table, 2, model)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0

    async def many() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="unused")
        replies = await asyncio.gather(
            *(
                aclient.chat.completions.create(
                    model="llmdispatch/auto", messages=prompt_of(table, i)
                )
                for i in range(3, 13)
            )
        )
        await aclient.close()
        return [r.model for r in replies]

    models = asyncio.run(many())
    assert len(models) == 10 and set(models) <= set(table.models)

    async def streamed() -> tuple[str, str]:
        aclient = openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="unused")
        stream = await aclient.chat.completions.create(
            model="llmdispatch/auto", messages=prompt_of(table, 14), stream=True
        )
        parts, model = [], ""
        async for chunk in stream:
            model = chunk.model
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        await aclient.close()
        return model, "".join(parts)

    model, text = asyncio.run(streamed())
    assert text == recorded(table, 14, model)


def test_cascade_escalates_and_streams_its_final_answer(gateway: str, table: OutcomeTable) -> None:
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused")
    rungs = []
    test = table.split("test")
    for i in range(20):
        raw = client.chat.completions.with_raw_response.create(
            model="llmdispatch/cascade",
            messages=prompt_of(table, i),
            extra_headers={"x-llmdispatch-task": str(test.datasets[i])},
        )
        reply = raw.parse()
        rungs.append(int(raw.headers["x-llmdispatch-rungs"]))
        assert reply.choices[0].message.content == recorded(table, i, reply.model)
    assert max(rungs) >= 2 and min(rungs) == 1  # some escalate, some do not
    stream = client.chat.completions.create(
        model="llmdispatch/cascade", messages=prompt_of(table, 0), stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_errors_are_openai_shaped(gateway: str, table: OutcomeTable) -> None:
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=prompt_of(table, 0))
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="llmdispatch/auto", messages=[])
    r = httpx.post(gateway + "/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_models_feedback_health_metrics_openapi(gateway: str, table: OutcomeTable) -> None:
    ids = [m["id"] for m in httpx.get(gateway + "/v1/models").json()["data"]]
    assert (
        set(table.models) < set(ids) and "llmdispatch/auto" in ids and "llmdispatch/cascade" in ids
    )
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused")
    reply = client.chat.completions.create(model="llmdispatch/auto", messages=prompt_of(table, 5))
    r = httpx.post(gateway + "/v1/feedback", json={"request_id": reply.id, "reward": 1.0})
    assert r.status_code == 200 and r.json()["stored"] is True
    r = httpx.post(gateway + "/v1/feedback", json={"request_id": "chatcmpl-unknown", "reward": 1})
    assert r.status_code == 404
    r = httpx.post(gateway + "/v1/feedback", json={"request_id": reply.id, "reward": 3})
    assert r.status_code == 400
    assert httpx.get(gateway + "/healthz").json() == {"status": "ok"}
    assert httpx.get(gateway + "/readyz").status_code == 200
    text = httpx.get(gateway + "/metrics").text
    assert "llmdispatch_requests_total{model=" in text and "llmdispatch_cost_usd_total" in text
    assert "llmdispatch_decisions_total" in text
    doc = httpx.get(gateway + "/openapi.json").json()
    assert doc == openapi_document()
    assert set(doc["paths"]) == {
        "/v1/chat/completions",
        "/v1/models",
        "/v1/feedback",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    }


def test_fallback_to_next_model_on_upstream_errors(
    table: OutcomeTable,
    upstream: str,
    broken: str,
    artifacts: dict[str, Path],
    tmp_path: Path,
) -> None:
    from llmdispatch.artifacts import load_artifact
    from llmdispatch.query import Query

    router, _ = load_artifact(artifacts["router"])
    messages = prompt_of(table, 4)
    plan = router.explain(Query.from_text(messages[0]["content"]), None)
    first = plan.choice
    # The router's first choice answers 503 every time; the next model works.
    ups = {m: (broken if m == first else upstream) for m in table.models}
    cfg = gateway_config(tmp_path / "gw.yaml", table, ups, {"router": artifacts["router"]})
    with serve_in_thread(create_app(load_config(cfg))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="llmdispatch/auto", messages=messages
        )
        reply = raw.parse()
        assert reply.model == plan.fallbacks[0]
        assert raw.headers["x-llmdispatch-fallbacks"] == "1"
        metrics = httpx.get(url + "/metrics").text
        assert f'llmdispatch_fallbacks_total{{model="{first}",reason="http_503"}} 1.0' in metrics
        # A pass-through to the broken model has nowhere to go: 502 with the reason.
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model=first, messages=messages)
        assert err.value.status_code == 502
    # A dead port (connection refused) falls back the same way.
    dead = f"http://127.0.0.1:{free_port()}/v1"
    ups = {m: (dead if m == first else upstream) for m in table.models}
    cfg = gateway_config(tmp_path / "gw2.yaml", table, ups, {"router": artifacts["router"]})
    with serve_in_thread(create_app(load_config(cfg))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="llmdispatch/auto", messages=messages, stream=True
        )
        chunks = list(stream)
        assert chunks[0].model == plan.fallbacks[0]


def test_keys_budgets_and_rate_limits(
    table: OutcomeTable, upstream: str, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    keys = [
        {"id": "team-a", "hash": hash_api_key("secret-a"), "policies": ["router"]},
        {
            "id": "team-b",
            "hash": hash_api_key("secret-b"),
            "budget_usd": 0.003,
            "requests_per_minute": 1000,
        },
        {"id": "slow", "hash": hash_api_key("secret-s"), "requests_per_minute": 2},
    ]
    cfg = gateway_config(
        tmp_path / "gw.yaml",
        table,
        {m: upstream for m in table.models},
        {"router": artifacts["router"]},
        keys=keys,
    )
    with serve_in_thread(create_app(load_config(cfg))) as url:
        messages = prompt_of(table, 6)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong").chat.completions.create(
                model="llmdispatch/auto", messages=messages
            )
        r = httpx.post(url + "/v1/chat/completions", json={"model": "x", "messages": messages})
        assert r.status_code == 401
        a = openai.OpenAI(base_url=url + "/v1", api_key="secret-a", max_retries=0)
        assert a.chat.completions.create(model="llmdispatch/router", messages=messages).model
        with pytest.raises(openai.PermissionDeniedError):
            a.chat.completions.create(model="gpt-4o", messages=messages)  # policies only
        b = openai.OpenAI(base_url=url + "/v1", api_key="secret-b", max_retries=0)
        served, costs = 0, []
        with pytest.raises(openai.RateLimitError, match="budget 'key:team-b' exhausted"):
            for i in range(200):
                raw = b.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=prompt_of(table, i), max_tokens=16
                )
                costs.append(float(raw.headers["x-llmdispatch-cost"]))
                served += 1
        assert served >= 1
        assert sum(costs) <= 0.003 + max(costs)
        s = openai.OpenAI(base_url=url + "/v1", api_key="secret-s", max_retries=0)
        s.chat.completions.create(model="llama3.2-1b", messages=messages)
        s.chat.completions.create(model="llama3.2-1b", messages=messages)
        with pytest.raises(openai.RateLimitError, match="requests/minute"):
            s.chat.completions.create(model="llama3.2-1b", messages=messages)


def test_demo_command_runs_end_to_end(
    capsys: pytest.CaptureFixture[str], shared_data: Callable[[str], Path]
) -> None:
    from llmdispatch.cli import main

    data = str(shared_data("cascades9"))
    assert main(["demo", "--data", data, "--limit", "40", "--concurrency", "8"]) == 0
    out = capsys.readouterr().out
    assert "router" in out and "cascade" in out and "vs best" in out


def test_timeouts_fall_back_and_a_cut_stream_ends_with_an_error_event(
    table: OutcomeTable, upstream: str, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    from llmdispatch.artifacts import load_artifact
    from llmdispatch.query import Query

    router, _ = load_artifact(artifacts["router"])
    messages = prompt_of(table, 7)
    plan = router.explain(Query.from_text(messages[0]["content"]), None)
    first = plan.choice
    slow_app = build_replay_app(table, Faults(delay_ms=1500))
    cut_app = build_replay_app(table, Faults(cut_after=1))
    with serve_in_thread(slow_app) as slow, serve_in_thread(cut_app) as cut:
        ups = {m: (slow + "/v1" if m == first else upstream) for m in table.models}
        cfg = gateway_config(tmp_path / "slow.yaml", table, ups, {"router": artifacts["router"]})
        text = (tmp_path / "slow.yaml").read_text().replace("timeout_s: 5", "timeout_s: 0.5")
        (tmp_path / "slow.yaml").write_text(text)
        with serve_in_thread(create_app(load_config(cfg))) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="llmdispatch/auto", messages=messages
            )
            assert raw.parse().model == plan.fallbacks[0]
            assert raw.headers["x-llmdispatch-fallbacks"] == "1"
        ups = {m: (cut + "/v1" if m == first else upstream) for m in table.models}
        cfg = gateway_config(tmp_path / "cut.yaml", table, ups, {"router": artifacts["router"]})
        with serve_in_thread(create_app(load_config(cfg))) as url:
            r = httpx.post(
                url + "/v1/chat/completions",
                json={"model": first, "messages": messages, "stream": True},
            )
            events = [line for line in r.text.splitlines() if line.startswith("data: ")]
            assert '"error"' in events[-2] and events[-1] == "data: [DONE]"
            assert "upstream stream broke" in events[-2]
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            with pytest.raises(openai.APIError, match="stream broke"):
                for _ in client.chat.completions.create(
                    model=first, messages=messages, stream=True
                ):
                    pass
            metrics = httpx.get(url + "/metrics").text
            assert (
                f'llmdispatch_fallbacks_total{{model="{first}",reason="stream_broken"}}' in metrics
            )


def test_circuit_breaker_opens_after_repeated_failures(
    table: OutcomeTable, upstream: str, broken: str, tmp_path: Path
) -> None:
    ups = {m: (broken if m == "gpt-4o" else upstream) for m in table.models}
    cfg = gateway_config(
        tmp_path / "gw.yaml", table, ups, breaker={"failures": 2, "cooldown_s": 60}
    )
    with serve_in_thread(create_app(load_config(cfg))) as url:
        body = {"model": "gpt-4o", "messages": prompt_of(table, 0)}
        codes = [httpx.post(url + "/v1/chat/completions", json=body).status_code for _ in range(3)]
        assert codes[:2] == [502, 502]
        third = httpx.post(url + "/v1/chat/completions", json=body)
        assert third.status_code == 503 and "circuit open" in third.json()["error"]["message"]
        metrics = httpx.get(url + "/metrics").text
        assert 'llmdispatch_circuit_open{model="gpt-4o"} 1.0' in metrics
        assert 'llmdispatch_circuit_open{model="gpt-4o-mini"} 0.0' in metrics


def test_token_and_per_model_rate_limits(
    table: OutcomeTable, upstream: str, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    keys = [{"id": "t", "hash": hash_api_key("secret-t"), "tokens_per_minute": 300}]
    cfg = gateway_config(
        tmp_path / "gw.yaml",
        table,
        {m: upstream for m in table.models},
        {"router": artifacts["router"]},
        keys=keys,
    )
    text = (tmp_path / "gw.yaml").read_text()
    # gpt-4o takes one request a minute; the router then routes around it.
    text = text.replace("  gpt-4o:\n", "  gpt-4o:\n    requests_per_minute: 1\n")
    (tmp_path / "gw.yaml").write_text(text)
    with serve_in_thread(create_app(load_config(cfg))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="secret-t", max_retries=0)
        with pytest.raises(openai.RateLimitError, match="tokens/minute"):
            for i in range(50):
                client.chat.completions.create(model="llama3.2-1b", messages=prompt_of(table, i))
    keys = [{"id": "u", "hash": hash_api_key("secret-u")}]
    cfg = gateway_config(
        tmp_path / "gw2.yaml",
        table,
        {m: upstream for m in table.models},
        {"router": artifacts["router"]},
        keys=keys,
    )
    text = (tmp_path / "gw2.yaml").read_text()
    text = text.replace("  gpt-4o:\n", "  gpt-4o:\n    requests_per_minute: 1\n")
    (tmp_path / "gw2.yaml").write_text(text)
    with serve_in_thread(create_app(load_config(cfg))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="secret-u", max_retries=0)
        assert client.chat.completions.create(model="gpt-4o", messages=prompt_of(table, 0)).model
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="gpt-4o", messages=prompt_of(table, 1))
        assert err.value.status_code == 503
