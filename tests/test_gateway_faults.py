"""Gateway fallback paths over real HTTP: retries, Retry-After, resets, broken streams, budgets."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from _gateway import Flaky, gateway_config, serve_in_thread, shared_table, trained
from llmdispatch.artifacts import load_artifact
from llmdispatch.data.table import OutcomeTable
from llmdispatch.gateway.app import create_app
from llmdispatch.gateway.config import load_config
from llmdispatch.gateway.replay_server import ReplayOptions, build_replay_app
from llmdispatch.policies.base import Plan
from llmdispatch.query import Query


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


def messages_of(table: OutcomeTable, i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": str(table.split("test").prompts[i])}]


def plan_for(artifact: Path, table: OutcomeTable, i: int) -> Plan:
    policy, _ = load_artifact(artifact)
    query = Query.from_text(str(table.split("test").prompts[i]))
    plan: Plan = policy.explain(query, frozenset(table.models))
    return plan


def metric(url: str, name: str, labels: str) -> float:
    """One sample of the gateway's Prometheus exposition (0 when absent)."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_retry_after_is_honoured_before_retrying_the_same_model(
    table: OutcomeTable, upstream: str, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    plan = plan_for(artifacts["router"], table, 3)
    flaky = Flaky(build_replay_app(table), failures=1, status=429, retry_after="0.4")
    with serve_in_thread(flaky) as flaky_url:
        ups = {m: (flaky_url + "/v1" if m == plan.choice else upstream) for m in table.models}
        cfg = gateway_config(tmp_path / "gw.yaml", table, ups, {"router": artifacts["router"]})
        with serve_in_thread(create_app(load_config(cfg))) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="llmdispatch/auto", messages=messages_of(table, 3)
            )
            assert raw.parse().model == plan.choice  # retried, not fallen back
            assert raw.headers["x-llmdispatch-fallbacks"] == "0"
            assert flaky.calls == 2 and flaky.times[1] - flaky.times[0] >= 0.4


def test_a_long_retry_after_falls_back_at_once(
    table: OutcomeTable, upstream: str, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    plan = plan_for(artifacts["router"], table, 4)
    flaky = Flaky(build_replay_app(table), failures=10**6, status=429, retry_after="120")
    with serve_in_thread(flaky) as flaky_url:
        ups = {m: (flaky_url + "/v1" if m == plan.choice else upstream) for m in table.models}
        cfg = gateway_config(tmp_path / "gw.yaml", table, ups, {"router": artifacts["router"]})
        with serve_in_thread(create_app(load_config(cfg))) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            start = time.monotonic()
            raw = client.chat.completions.with_raw_response.create(
                model="llmdispatch/auto", messages=messages_of(table, 4)
            )
            assert time.monotonic() - start < 5
            assert raw.parse().model == plan.fallbacks[0]
            assert raw.headers["x-llmdispatch-fallbacks"] == "1" and flaky.calls == 1
            labels = f'model="{plan.choice}",reason="rate_limited"'
            assert metric(url, "llmdispatch_fallbacks_total", labels) == 1.0


def test_resets_fall_back_and_streams_broken_before_the_first_byte_too(
    table: OutcomeTable, upstream: str, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    plan = plan_for(artifacts["router"], table, 5)
    resetting = build_replay_app(table, ReplayOptions(reset_rate=1.0))
    with serve_in_thread(resetting) as bad:
        ups = {m: (bad + "/v1" if m == plan.choice else upstream) for m in table.models}
        cfg = gateway_config(tmp_path / "gw.yaml", table, ups, {"router": artifacts["router"]})
        with serve_in_thread(create_app(load_config(cfg))) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="llmdispatch/auto", messages=messages_of(table, 5)
            )
            assert raw.parse().model == plan.fallbacks[0]
            assert raw.headers["x-llmdispatch-fallbacks"] == "1"
            # Streamed: the upstream sends its headers, then drops before the first event.
            with client.chat.completions.with_streaming_response.create(
                model="llmdispatch/auto", messages=messages_of(table, 5), stream=True
            ) as response:
                assert response.headers["x-llmdispatch-model"] == plan.fallbacks[0]
                assert response.headers["x-llmdispatch-fallbacks"] == "1"
                chunks = list(response.parse())
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            test = table.split("test")
            assert text == test.responses[5, test.models.index(plan.fallbacks[0])]
            labels = f'model="{plan.choice}",reason="connection"'
            assert metric(url, "llmdispatch_fallbacks_total", labels) == 2.0


def test_a_failing_cascade_rung_escalates_and_all_failing_is_a_502(
    table: OutcomeTable, upstream: str, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    plan = plan_for(artifacts["cascade"], table, 0)
    rungs = [c.model for c in plan.candidates if c.excluded is None]
    assert len(rungs) >= 2
    broken = build_replay_app(table, ReplayOptions(fail_rate=1.0, fail_status=500))
    with serve_in_thread(broken) as bad:
        ups = {m: (bad + "/v1" if m == rungs[0] else upstream) for m in table.models}
        cfg = gateway_config(tmp_path / "gw.yaml", table, ups, {"cascade": artifacts["cascade"]})
        with serve_in_thread(create_app(load_config(cfg))) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="llmdispatch/cascade", messages=messages_of(table, 0)
            )
            assert raw.parse().model in rungs[1:]
            labels = f'model="{rungs[0]}",reason="http_500"'
            assert metric(url, "llmdispatch_fallbacks_total", labels) == 1.0
        cfg = gateway_config(
            tmp_path / "all.yaml",
            table,
            {m: bad + "/v1" for m in table.models},
            {"cascade": artifacts["cascade"]},
            database=str(tmp_path / "log.sqlite"),
        )
        with serve_in_thread(create_app(load_config(cfg))) as url:
            r = httpx.post(
                url + "/v1/chat/completions",
                json={"model": "llmdispatch/cascade", "messages": messages_of(table, 0)},
            )
            assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error"
            assert "no model could answer" in r.json()["error"]["message"]
            rid = r.headers["x-llmdispatch-request-id"]
            labels = 'model="",policy="cascade",status="502"'
            assert metric(url, "llmdispatch_requests_total", labels) == 1.0
        # The failed request is in the log with its status and every attempt.
        import sqlalchemy as sa

        from llmdispatch.gateway.requestlog import REQUESTS

        engine = sa.create_engine(f"sqlite:///{tmp_path / 'log.sqlite'}")
        with engine.connect() as conn:
            row = conn.execute(sa.select(REQUESTS).where(REQUESTS.c.id == rid)).one()
        engine.dispose()
        assert row.status == 502 and "HTTP 500" in row.attempts


def test_cheaper_models_answer_when_a_model_budget_is_spent(
    table: OutcomeTable, upstream: str, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    plan = plan_for(artifacts["router"], table, 6)
    budgets = {"per_model_usd": {plan.choice: 0.0}, "on_exhausted": "cheaper"}
    ups = {m: upstream for m in table.models}
    cfg = gateway_config(
        tmp_path / "gw.yaml", table, ups, {"router": artifacts["router"]}, budgets=budgets
    )
    with serve_in_thread(create_app(load_config(cfg))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="llmdispatch/auto", messages=messages_of(table, 6)
        )
        assert raw.parse().model == plan.fallbacks[0]
        with pytest.raises(openai.RateLimitError, match="budget"):
            client.chat.completions.create(model=plan.choice, messages=messages_of(table, 6))
        assert f'scope="model:{plan.choice}"' in httpx.get(url + "/metrics").text
    budgets["on_exhausted"] = "reject"
    cfg = gateway_config(
        tmp_path / "gw2.yaml", table, ups, {"router": artifacts["router"]}, budgets=budgets
    )
    with serve_in_thread(create_app(load_config(cfg))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError, match=f"budget 'model:{plan.choice}'"):
            client.chat.completions.create(model="llmdispatch/auto", messages=messages_of(table, 6))


def test_a_client_leaving_mid_stream_is_billed_logged_and_releases_its_reservation(
    table: OutcomeTable, tmp_path: Path
) -> None:
    import asyncio

    import sqlalchemy as sa

    from llmdispatch.gateway.requestlog import REQUESTS

    test = table.split("test")
    j = test.models.index("gpt-4o")
    i = next(k for k in range(test.n_prompts) if len(str(test.responses[k, j])) > 80)
    slow = build_replay_app(table, ReplayOptions(chunk_size=2, chunk_delay_ms=40))
    with serve_in_thread(slow) as up:
        cfg = gateway_config(
            tmp_path / "gw.yaml",
            table,
            {m: up + "/v1" for m in table.models},
            database=str(tmp_path / "log.sqlite"),
            budgets={"global_usd": 1.0},
        )
        app = create_app(load_config(cfg))
        with serve_in_thread(app) as url:
            body = {"model": "gpt-4o", "messages": messages_of(table, i), "stream": True}
            with httpx.stream("POST", url + "/v1/chat/completions", json=body) as response:
                rid = response.headers["x-llmdispatch-request-id"]
                lines = response.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))
            gw = app.state.gateway
            deadline = time.monotonic() + 10
            while (
                metric(
                    url,
                    "llmdispatch_requests_total",
                    'model="gpt-4o",policy="pass-through",status="499"',
                )
                < 1
            ):
                assert time.monotonic() < deadline, "the abandoned stream was never settled"
                time.sleep(0.05)
            gw.log.flush()
            spent = asyncio.run(gw.state.spent("global"))
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'log.sqlite'}")
    with engine.connect() as conn:
        row = conn.execute(sa.select(REQUESTS).where(REQUESTS.c.id == rid)).one()
    engine.dispose()
    assert row.status == 499 and row.error == "client disconnected"
    # The reservation (prompt + 512 output tokens) became the partial answer's cost.
    assert 0 < row.cost_usd < gw.estimate("gpt-4o", Query.from_text(str(test.prompts[i])), {})
    assert spent == pytest.approx(row.cost_usd)
    assert len(row.response) < len(str(test.responses[i, j]))


def test_backoff_sleep_never_returns_early() -> None:
    """uvloop's millisecond timers may fire before the deadline; a Retry-After may not."""
    import asyncio

    import uvloop

    from llmdispatch.gateway.providers import sleep_at_least

    async def main() -> list[float]:
        late = []
        for seconds in (0.0004, 0.0123, 0.0317, 0.05) * 5:
            start = time.monotonic()
            await sleep_at_least(seconds)
            late.append(time.monotonic() - start - seconds)
        return late

    assert min(uvloop.run(main())) >= 0 and min(asyncio.run(main())) >= 0
