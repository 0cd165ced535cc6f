"""Compositions served live: router→cascade and cascade routing through the gateway.

The official ``openai`` client talks to the gateway, the gateway to the replay upstream
(recorded answers and confidences of ``cascades9``); every reply must be the one the policy
chooses when driven directly on the same recorded answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from _gateway import gateway_config, serve_in_thread, shared_table
from llmdispatch.artifacts import save_artifact
from llmdispatch.data.table import OutcomeTable
from llmdispatch.gateway.app import create_app
from llmdispatch.gateway.config import load_config
from llmdispatch.gateway.openai_format import build_query
from llmdispatch.gateway.replay_server import build_replay_app
from llmdispatch.policies.base import Policy
from llmdispatch.policies.cascade_routing import CascadeRouting
from llmdispatch.policies.router_cascade import RouterCascade
from test_composite import drive, replay_provider

ROWS = 24


@pytest.fixture(scope="module")
def table(shared_data: Callable[[str], Path]) -> OutcomeTable:
    return shared_table(shared_data("cascades9"))


@pytest.fixture(scope="module")
def policies(table: OutcomeTable) -> dict[str, Policy]:
    train = table.split("train")
    # λ in cost units of the mean query: some prompts stop at the first answer, some go on.
    return {
        "router-cascade": RouterCascade(lam=0.3).fit(train),
        "cascade-routing": CascadeRouting(lam=0.3).fit(train),
    }


@pytest.fixture(scope="module")
def gateway(
    table: OutcomeTable, policies: dict[str, Policy], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("gw-compositions")
    for name, policy in policies.items():
        save_artifact(root / name, policy)
    with serve_in_thread(build_replay_app(table)) as upstream:
        cfg = gateway_config(
            root / "gw.yaml",
            table,
            {m: upstream + "/v1" for m in table.models},
            {name: root / name for name in policies},
        )
        with serve_in_thread(create_app(load_config(cfg))) as url:
            yield url


@pytest.mark.parametrize("name", ["router-cascade", "cascade-routing"])
def test_composition_live_matches_the_policy_on_recorded_answers(
    name: str, gateway: str, table: OutcomeTable, policies: dict[str, Policy]
) -> None:
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused")
    test = table.split("test")
    rungs = []
    # Rows spread over the test split: every benchmark label (so every per-label choice) shows up.
    for i in np.linspace(0, test.n_prompts - 1, ROWS).astype(int).tolist():
        messages = [{"role": "user", "content": str(test.prompts[i])}]
        task = str(test.datasets[i])
        raw = client.chat.completions.with_raw_response.create(
            model=f"llmdispatch/{name}",
            messages=messages,  # type: ignore[arg-type]
            extra_headers={"x-llmdispatch-task": task},
        )
        reply = raw.parse()
        query = build_query({"model": name, "messages": messages}, None, task)
        expected, calls = drive(
            policies[name].start(query, frozenset(table.models)), replay_provider(test, i)
        )
        assert reply.model == expected, i
        assert int(raw.headers["x-llmdispatch-rungs"]) == len(calls), i
        assert reply.choices[0].message.content == str(
            test.responses[i, test.model_index(expected)]
        )
        assert raw.headers["x-llmdispatch-policy"] == name
        rungs.append(len(calls))
    assert min(rungs) == 1 and max(rungs) >= 2  # some stop at once, some escalate
