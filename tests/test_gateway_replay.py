"""The replay provider: recorded answers over real HTTP, lookups, streaming, faults, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from _gateway import free_port, serve_in_thread, shared_table
from llmdispatch.data.table import OutcomeTable
from llmdispatch.gateway.replay_server import ReplayOptions, build_replay_app


@pytest.fixture(scope="module")
def table(shared_data: Callable[[str], Path]) -> OutcomeTable:
    return shared_table(shared_data("cascades9"))


def long_row(table: OutcomeTable, model: str = "gpt-4o") -> int:
    """A prompt whose recorded answer by ``model`` spans many stream chunks."""
    j = table.models.index(model)
    return next(i for i in range(table.n_prompts) if len(str(table.responses[i, j])) > 60)


@pytest.fixture(scope="module")
def replay(table: OutcomeTable) -> Iterator[str]:
    with serve_in_thread(build_replay_app(table, ReplayOptions(chunk_size=5, hang_s=1.0))) as url:
        yield url


def test_recorded_answers_usage_and_logprobs(table: OutcomeTable, replay: str) -> None:
    client = openai.OpenAI(base_url=replay + "/v1", api_key="x", max_retries=0)
    i, j = 17, table.models.index("llama3.1-70b")
    system, prompt = str(table.systems[i]), str(table.prompts[i])
    reply = client.chat.completions.create(
        model="llama3.1-70b",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
        logprobs=True,
    )
    assert reply.choices[0].message.content == table.responses[i, j]
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == int(table.tokens_in[i, j])
    assert reply.usage.completion_tokens == int(table.tokens_out[i, j])
    assert reply.choices[0].logprobs is not None and reply.choices[0].logprobs.content
    assert reply.choices[0].logprobs.content[0].logprob == pytest.approx(table.confidence[i, j])
    assert reply.choices[0].model_extra == {"confidence": pytest.approx(table.confidence[i, j])}
    ids = [m.id for m in client.models.list()]
    assert ids == list(table.models)


def test_streams_in_chunks_with_usage_last(table: OutcomeTable, replay: str) -> None:
    client = openai.OpenAI(base_url=replay + "/v1", api_key="x", max_retries=0)
    i, j = long_row(table), table.models.index("gpt-4o")
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": str(table.prompts[i])}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == table.responses[i, j]
    assert max(len(p) for p in pieces) == 5 and len(pieces) >= len(table.responses[i, j]) // 5
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.completion_tokens == int(table.tokens_out[i, j])


def test_unknown_prompts_models_and_bad_json_are_clear_errors(
    table: OutcomeTable, replay: str
) -> None:
    client = openai.OpenAI(base_url=replay + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="prompt not found"):
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "not in the table"}]
        )
    with pytest.raises(openai.NotFoundError, match="not in this replay table"):
        client.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": str(table.prompts[0])}]
        )
    r = httpx.post(replay + "/v1/chat/completions", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(replay + "/v1/chat/completions").status_code == 405
    assert httpx.get(replay + "/elsewhere").status_code == 404


def test_forced_and_random_faults(table: OutcomeTable, replay: str) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": str(table.prompts[0])}]}
    url = replay + "/v1/chat/completions"
    r = httpx.post(url, json=body, headers={"x-replay-fault": "429"})
    assert r.status_code == 429 and r.headers["retry-after"] == "0"
    assert httpx.post(url, json=body, headers={"x-replay-fault": "503"}).status_code == 503
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(url, json=body, headers={"x-replay-fault": "reset"})
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url, json=body, headers={"x-replay-fault": "timeout"}, timeout=0.3)
    stream = {**body, "stream": True}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", url, json=stream, headers={"x-replay-fault": "cut"}) as response,
    ):
        for _ in response.iter_lines():
            pass
    options = ReplayOptions(fail_rate=0.5, fail_status=502, seed=1)
    with serve_in_thread(build_replay_app(table, options)) as flaky:
        codes = [
            httpx.post(flaky + "/v1/chat/completions", json=body).status_code for _ in range(40)
        ]
    assert set(codes) == {200, 502} and 8 <= codes.count(502) <= 32
    with pytest.raises(ValueError, match="fail_rate"):
        ReplayOptions(fail_rate=2.0)


def test_recorded_latency_is_slept(table: OutcomeTable) -> None:
    j = table.models.index("llama3.2-1b")
    i = int(np.nanargmin(table.latency_ms[:, j]))
    recorded = float(table.latency_ms[i, j]) / 1000
    body = {"model": "llama3.2-1b", "messages": [{"role": "user", "content": table.prompts[i]}]}
    with serve_in_thread(build_replay_app(table, ReplayOptions(use_latency=True))) as url:
        httpx.post(url + "/v1/chat/completions", json=body)  # warm the connection path
        start = time.perf_counter()
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
        assert time.perf_counter() - start >= recorded


def test_module_entry_point_serves_with_two_workers(
    table: OutcomeTable, shared_data: Callable[[str], Path]
) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "llmdispatch.gateway.replay_server", str(shared_data("cascades9"))]
    cmd += ["--port", str(port), "--workers", "2", "--chunk-size", "7", "--fail-rate", "0"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"replay server did not start: {err[-2000:]}")
            time.sleep(0.1)
        i = long_row(table)
        body = {
            "model": "gpt-4o",
            "stream": True,
            "messages": [{"role": "user", "content": str(table.prompts[i])}],
        }
        r = httpx.post(url + "/v1/chat/completions", json=body)
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        pieces = [json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[1:-2]]
        assert max(len(p) for p in pieces) == 7
        assert "".join(pieces) == table.responses[i, table.models.index("gpt-4o")]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.parametrize("chars", [7, 5000])
def test_response_size_is_configurable(table: OutcomeTable, chars: int) -> None:
    i = long_row(table)
    recorded = str(table.responses[i, table.models.index("gpt-4o")])
    messages = [{"role": "user", "content": str(table.prompts[i])}]
    options = ReplayOptions(response_chars=chars, chunk_size=64)
    with serve_in_thread(build_replay_app(table, options)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
        text = reply.choices[0].message.content or ""
        assert len(text) == chars and text.startswith(recorded[: min(chars, len(recorded))])
        assert reply.usage is not None and reply.usage.completion_tokens == max(1, chars // 4)
        stream = client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text


def test_bad_response_size_is_a_clear_error(shared_data: Callable[[str], Path]) -> None:
    with pytest.raises(ValueError, match="response_chars"):
        ReplayOptions(response_chars=0)
    cmd = [sys.executable, "-m", "llmdispatch.cli", "serve-replay", str(shared_data("cascades9"))]
    done = subprocess.run(
        [*cmd, "--response-chars", "0"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "response_chars must be at least 1" in done.stderr
