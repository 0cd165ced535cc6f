"""Hot reload: an artifact saved over a served one is served without a restart.

The official ``openai`` client talks to a real gateway (uvicorn) in front of the replay
upstream; the artifact behind the default policy is replaced while it serves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import yaml

from _gateway import gateway_config, serve_in_thread, shared_table
from llmdispatch.artifacts import save_artifact
from llmdispatch.data.table import OutcomeTable
from llmdispatch.gateway.app import create_app
from llmdispatch.gateway.config import load_config
from llmdispatch.gateway.pipeline import Gateway
from llmdispatch.gateway.reloader import ArtifactWatcher
from llmdispatch.gateway.replay_server import build_replay_app
from llmdispatch.policies.bandit import BanditRouter
from llmdispatch.policies.router import Router


@pytest.fixture(scope="module")
def table(shared_data: Callable[[str], Path]) -> OutcomeTable:
    return shared_table(shared_data("cascades9"))


def _router_to(table: OutcomeTable, model: str) -> Router:
    """A router that may only choose ``model`` (fitted on a slice: quick)."""
    return Router(allow=[model]).fit(table.split("train").take(np.arange(300)))


def _answered(client: openai.OpenAI, table: OutcomeTable) -> str:
    prompt = str(table.split("test").prompts[0])
    reply = client.chat.completions.create(
        model="llmdispatch/auto", messages=[{"role": "user", "content": prompt}]
    )
    return reply.model


def _reloads(url: str, outcome: str) -> float:
    text = httpx.get(url + "/metrics").text
    line = f'llmdispatch_policy_reloads_total{{outcome="{outcome}",policy="main"}} '
    found = [ln for ln in text.splitlines() if ln.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def test_a_retrained_artifact_is_served_without_a_restart(
    table: OutcomeTable, tmp_path: Path
) -> None:
    first, second = table.models[0], table.models[1]
    folder = tmp_path / "main"
    save_artifact(folder, _router_to(table, first))
    replacement = _router_to(table, second)
    with serve_in_thread(build_replay_app(table)) as upstream:
        cfg = gateway_config(
            tmp_path / "gw.yaml",
            table,
            {m: upstream + "/v1" for m in table.models},
            {"main": folder},
            reload_artifacts_s=0.05,
        )
        with serve_in_thread(create_app(load_config(cfg))) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            assert _answered(client, table) == first
            save_artifact(folder, replacement)
            deadline = time.monotonic() + 15
            while _answered(client, table) != second:  # every request is answered meanwhile
                assert time.monotonic() < deadline, "the new artifact was never served"
                time.sleep(0.05)
            assert _reloads(url, "ok") == 1.0
            # A broken save: the previous router keeps serving, and the failure is counted.
            (folder / "artifact.json").write_text("{not json")
            deadline = time.monotonic() + 15
            while _reloads(url, "failed") < 1.0:
                assert time.monotonic() < deadline, "the broken artifact was never noticed"
                time.sleep(0.05)
            assert _answered(client, table) == second
            assert _reloads(url, "ok") == 1.0


def _offline_config(
    tmp_path: Path,
    table: OutcomeTable,
    policies: dict[str, Path],
    name: str = "gw.yaml",
    **extra: object,
) -> Path:
    """A gateway config whose upstreams are never called (the tests only load policies)."""
    upstreams = {m: "http://127.0.0.1:9/v1" for m in table.models}
    return gateway_config(tmp_path / name, table, upstreams, policies, **extra)


def test_changes_are_loaded_once_the_files_have_settled(
    table: OutcomeTable, tmp_path: Path
) -> None:
    folder = tmp_path / "main"
    save_artifact(folder, _router_to(table, table.models[0]))
    gw = Gateway(load_config(_offline_config(tmp_path, table, {"main": folder})))
    watcher = ArtifactWatcher(gw)
    old = gw.policies["main"]
    assert asyncio.run(watcher.check()) == []  # nothing changed
    save_artifact(folder, _router_to(table, table.models[1]))
    assert asyncio.run(watcher.check()) == []  # changed since the last poll: wait one more
    assert gw.policies["main"] is old
    assert asyncio.run(watcher.check()) == ["main"]
    assert gw.policies["main"] is not old and gw.policies["main"].label == "main"
    assert asyncio.run(watcher.check()) == []  # loaded once
    # A missing file (a save half-way, a folder being replaced) is waited out, not an error.
    (folder / "arrays.npz").rename(folder / "arrays.bak")
    assert asyncio.run(watcher.check()) == asyncio.run(watcher.check()) == []
    failed = gw.metrics.registry.get_sample_value(
        "llmdispatch_policy_reloads_total", {"policy": "main", "outcome": "failed"}
    )
    assert failed is None  # never counted


def test_bandits_and_inline_policies_are_not_watched(
    table: OutcomeTable, tmp_path: Path, shared_data: Callable[[str], Path]
) -> None:
    bandit = BanditRouter(algorithm="linucb", dim=8).fit(table.split("train").take(np.arange(300)))
    save_artifact(tmp_path / "bandit", bandit)
    save_artifact(tmp_path / "router", _router_to(table, table.models[0]))
    cfg = _offline_config(
        tmp_path, table, {"bandit": tmp_path / "bandit", "router": tmp_path / "router"}
    )
    doc = yaml.safe_load(cfg.read_text())
    # Trained at start-up from a data set: there is no artifact to watch.
    doc["policies"]["inline"] = {"policy": "router", "data": str(shared_data("cascades9"))}
    cfg.write_text(yaml.safe_dump(doc))
    gw = Gateway(load_config(cfg))
    assert sorted(gw.policies) == ["bandit", "inline", "router"]
    assert list(ArtifactWatcher(gw).refs) == ["router"]


def test_reloading_can_be_switched_off(table: OutcomeTable, tmp_path: Path) -> None:
    save_artifact(tmp_path / "main", _router_to(table, table.models[0]))
    main = {"main": tmp_path / "main"}
    cfg = _offline_config(tmp_path, table, main, reload_artifacts_s=None)
    assert load_config(cfg).reload_artifacts_s is None
    bad = _offline_config(tmp_path, table, main, name="bad.yaml", reload_artifacts_s=0)
    with pytest.raises(ValueError, match="reload_artifacts_s"):
        load_config(bad)


def test_serve_shows_the_gateways_own_log_lines_at_its_level() -> None:
    import logging
    import logging.config

    from uvicorn.config import LOGGING_CONFIG

    from llmdispatch.cli.serve import log_config

    config = log_config("info")
    assert "llmdispatch" not in LOGGING_CONFIG["loggers"]  # uvicorn's own dict is left alone
    root = logging.getLogger("llmdispatch")
    saved = (root.level, root.propagate, list(root.handlers))
    try:
        logging.config.dictConfig(config)
        logger = logging.getLogger("llmdispatch.gateway.reloader")
        assert logger.isEnabledFor(logging.INFO)
        assert root.handlers
        logging.config.dictConfig(log_config("warning"))
        assert not logger.isEnabledFor(logging.INFO)
    finally:  # other tests capture these loggers through the root logger
        root.setLevel(saved[0])
        root.propagate = saved[1]
        root.handlers[:] = saved[2]
