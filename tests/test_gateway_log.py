"""The request log on SQLite and PostgreSQL: queued batched writes under concurrent load,
bad rows costing only themselves, and the export to an outcome table (and back)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import yaml

from llmdispatch.cli import main
from llmdispatch.data import load_table
from llmdispatch.data.builder import DataError
from llmdispatch.gateway.logexport import export_table, prompt_id, read_log
from llmdispatch.gateway.requestlog import FEEDBACK, REQUESTS, RequestLog, database_url


@pytest.fixture
def pg_schema_url(postgres_url: str) -> Iterator[str]:
    """The test database with a fresh schema first on the search path (dropped after)."""
    schema = f"llmd_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "logs" / "requests.sqlite")
    return str(request.getfixturevalue("pg_schema_url"))


def _row(rid: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": rid,
        "policy": "router",
        "model": "small",
        "attempts": [{"model": "small", "purpose": "answer", "cost": 0.001}],
        "prompt": f"prompt {rid}",
        "response": "ok",
        "tokens_in": 10,
        "tokens_out": 5,
        "cost_usd": 0.001,
        "latency_ms": 12.0,
        "status": 200,
    }
    return {**base, **fields}


def _count(url: str, table: sa.Table) -> int:
    engine = sa.create_engine(database_url(url))
    with engine.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    engine.dispose()
    return int(n)


def test_every_row_is_written_under_concurrent_load(log_url: str) -> None:
    # Two logs on one database stand for two gateway processes; threads and an event loop
    # write at the same time.
    logs = [RequestLog(log_url, batch=64), RequestLog(log_url, batch=64)]

    def writer(w: int) -> None:
        log = logs[w % 2]
        for i in range(150):
            log.log_request(_row(f"t{w}-{i}", key_id=f"k{w}"))
            if i % 10 == 0:
                log.log_feedback(f"t{w}-{i}", 1.0, None)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()

    async def from_the_loop() -> None:
        for i in range(100):
            logs[0].log_request(_row(f"loop-{i}"))  # returns at once: the loop never waits
            if i % 20 == 0:
                await asyncio.sleep(0)

    asyncio.run(from_the_loop())
    for t in threads:
        t.join()
    for log in logs:
        assert log.flush(timeout=60)
    assert _count(log_url, REQUESTS) == 6 * 150 + 100
    assert _count(log_url, FEEDBACK) == 6 * 15
    assert sum(log.dropped for log in logs) == 0
    assert logs[1].has_request("t1-149") and not logs[1].has_request("nope")
    for log in logs:
        log.close()
        log.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        logs[0].log_request(_row("late"))


def test_a_bad_row_costs_only_itself(log_url: str) -> None:
    log = RequestLog(log_url)
    log.log_request(_row("a"))
    assert log.flush(timeout=30)
    for rid in ("b", "a", "c"):  # "a" again violates the primary key
        log.log_request(_row(rid))
    log.log_feedback("c", 1.0)
    log.log_feedback("ghost", 1.0)  # no such request (foreign key)
    log.close()
    assert _count(log_url, REQUESTS) == 3 and _count(log_url, FEEDBACK) == 1
    assert log.dropped == 2 and log.written == 4


def test_rows_are_checked_when_logged(tmp_path: Path) -> None:
    log = RequestLog(str(tmp_path / "log.sqlite"))
    with pytest.raises(ValueError, match="unknown request-log columns"):
        log.log_request({"id": "x", "secret": "s"})
    with pytest.raises(ValueError, match="needs an 'id'"):
        log.log_request({"model": "m"})
    log.log_request({"id": "minimal"})  # every other column may be missing
    log.close()
    assert _count(str(tmp_path / "log.sqlite"), REQUESTS) == 1


def test_a_full_queue_drops_new_rows_instead_of_growing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "log.sqlite")
    log = RequestLog(url, batch=8, max_queued=20)
    writing, release = threading.Event(), threading.Event()
    insert = log._insert

    def stalled(items: list[tuple[str, dict[str, Any]]]) -> None:  # a database that hangs
        writing.set()
        release.wait(30)
        insert(items)

    monkeypatch.setattr(log, "_insert", stalled)
    log.log_request(_row("first"))
    assert writing.wait(30)  # the writer holds "first"; the queue is empty again
    for i in range(25):
        log.log_request(_row(f"r{i}"))  # returns at once, also when the queue is full
    assert log.dropped == 5
    release.set()
    assert log.flush(timeout=30)
    log.close()
    assert _count(url, REQUESTS) == 21 and log.written == 21 and log.dropped == 5


def test_rows_are_completed_by_the_writer_and_a_bad_one_costs_only_itself(
    tmp_path: Path,
) -> None:
    url = str(tmp_path / "log.sqlite")
    log = RequestLog(url)
    log.log_request(_row("fine", created=5.0))
    log.log_request(_row("not-json", attempts=[object()]))
    log.log_request({"id": "bare"})
    log.close()
    assert log.dropped == 1 and log.written == 2
    engine = sa.create_engine(database_url(url))
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(REQUESTS))}
    engine.dispose()
    assert set(rows) == {"fine", "bare"} and rows["fine"].created == 5.0
    assert json.loads(rows["fine"].attempts) == [
        {"model": "small", "purpose": "answer", "cost": 0.001}
    ]
    assert rows["bare"].created > 1e9 and rows["bare"].attempts is None  # stamped when logged


def _traffic(url: str) -> None:
    """A small served history: two prompts, a cascade, feedback, failures, two policies."""
    log = RequestLog(url)
    log.log_request(_row("r1", created=100.0, prompt="q1", system="be brief", model="small"))
    log.log_request(_row("r2", created=200.0, prompt="q1", system="be brief", model="small"))
    cascade = [
        {"model": "small", "purpose": "answer", "cost": 0.002, "latency_ms": 30.0},
        {"model": "small", "purpose": "verify", "cost": 0.0001},
        {"model": "large", "purpose": "answer", "cost": 0.02, "latency_ms": 80.0},
    ]
    log.log_request(
        _row("r3", created=300.0, prompt="q2", model="large", cost_usd=0.0221, attempts=cascade)
    )
    log.log_request(_row("r4", created=400.0, prompt="q3", policy="other", response="x"))
    log.log_request(_row("r5", created=500.0, prompt="q4", status=502, model=None, error="down"))
    log.log_feedback("r1", 1.0, None)
    log.log_feedback("r2", 0.5, None)
    log.log_feedback("r3", 0.0, {"chosen": "large", "rejected": "small"})
    log.close()


def test_export_builds_an_outcome_table(log_url: str) -> None:
    _traffic(log_url)
    table = export_table(log_url)
    assert table.n_prompts == 3 and set(table.models) == {"small", "large"}
    i = {p: k for k, p in enumerate(table.prompts)}
    s, lg = table.model_index("small"), table.model_index("large")
    assert table.score[i["q1"], s] == pytest.approx(0.75)  # mean of the two rewards
    assert table.systems[i["q1"]] == "be brief"
    assert table.ids[i["q1"]] == prompt_id("be brief", "q1")
    assert table.score[i["q2"], lg] == 0.0 and table.cost[i["q2"], lg] == pytest.approx(0.0221)
    # The cascade's lower rung answered too: its cost and latency, no response or score.
    assert table.cost[i["q2"], s] == pytest.approx(0.002)
    assert table.latency_ms[i["q2"], s] == pytest.approx(30.0)
    assert np.isnan(table.score[i["q2"], s]) and table.responses[i["q2"], s] is None
    assert np.isnan(table.score[i["q3"], s])  # no feedback: unknown, not zero
    assert set(table.splits) == {"train"}
    later = export_table(log_url, since=250.0, policies=["router"])
    assert list(later.prompts) == ["q2"]
    log = read_log(log_url, test_fraction=0.5)
    assert log.requests_read == 4 and log.rewards == 3 and log.preferences == 1
    assert {r["split"] for r in log.records} <= {"train", "test"}
    assert log.records == read_log(log_url, test_fraction=0.5).records  # deterministic


def test_export_of_nothing_is_an_error(tmp_path: Path) -> None:
    url = str(tmp_path / "empty.sqlite")
    RequestLog(url).close()
    with pytest.raises(DataError, match="no successful requests"):
        export_table(url)


def test_export_of_a_missing_sqlite_file_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(DataError, match="no such request log"):
        read_log(str(missing))
    assert not missing.exists()


def test_export_log_command_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(tmp_path / "log.sqlite")
    _traffic(url)
    out = tmp_path / "log.jsonl.gz"
    assert main(["data", "export-log", url, str(out)]) == 0
    assert "3 prompts × 2 models (2 with feedback scores, 1 preferences" in capsys.readouterr().out
    back, direct = load_table(out), export_table(url)
    assert list(back.ids) == list(direct.ids) and back.models == direct.models
    for field in ("score", "cost", "tokens_in", "tokens_out", "latency_ms"):
        np.testing.assert_allclose(getattr(back, field), getattr(direct, field))
    assert back.responses.tolist() == direct.responses.tolist()

    # A folder export is a data set: models.json carries the gateway config's prices.
    cfg = tmp_path / "gw.yaml"
    models = {
        m: {"base_url": "http://127.0.0.1:9/v1", "price_in_per_mtok": p, "price_out_per_mtok": p}
        for m, p in (("small", 0.1), ("large", 5.0))
    }
    cfg.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    folder = tmp_path / "served"
    args = ["data", "export-log", url, str(folder), "--config", str(cfg), "--since", "1970-01-01"]
    assert main([*args, "--policy", "router", "--test-fraction", "0.5"]) == 0
    data = load_table(folder)
    assert data.cards["large"].price_in_per_mtok == 5.0 and data.n_prompts == 2
    assert json.loads((folder / "models.json").read_text())["small"]["price_out_per_mtok"] == 0.1
    assert "request log" in (folder / "README.md").read_text()
    with pytest.raises(SystemExit) as bad:
        main(["data", "export-log", url, str(tmp_path / "x.jsonl"), "--since", "soon"])
    assert bad.value.code == 2
    assert "neither UNIX seconds nor an ISO date" in capsys.readouterr().err
