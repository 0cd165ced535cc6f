"""The request log: every request with its decision, usage, cost, latency and feedback.

SQLAlchemy Core over SQLite (WAL, the default) or PostgreSQL (``postgresql://…``, psycopg 3).
Writes never block the event loop: rows go to a queue that a background thread flushes in
batches; :meth:`RequestLog.flush` waits until everything queued is written. The log exports
to an outcome table (:func:`export_table`), so served traffic trains the next router.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from llmdispatch.catalog import ModelCard
from llmdispatch.data.table import LoadReport, OutcomeTable

METADATA = sa.MetaData()
REQUESTS = sa.Table(
    "llmdispatch_requests",
    METADATA,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("key_id", sa.String(128)),
    sa.Column("policy", sa.String(128)),
    sa.Column("model", sa.String(256)),
    sa.Column("attempts", sa.Text),
    sa.Column("system", sa.Text),
    sa.Column("prompt", sa.Text),
    sa.Column("response", sa.Text),
    sa.Column("tokens_in", sa.Integer),
    sa.Column("tokens_out", sa.Integer),
    sa.Column("cost_usd", sa.Float),
    sa.Column("latency_ms", sa.Float),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("status", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("est_quality", sa.Float),
    sa.Column("est_cost", sa.Float),
)
FEEDBACK = sa.Table(
    "llmdispatch_feedback",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), sa.ForeignKey("llmdispatch_requests.id"), index=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("reward", sa.Float),
    sa.Column("preference", sa.Text),
)


def engine_for(url: str) -> sa.Engine:
    """An engine for a SQLite path or URL, or a PostgreSQL URL (psycopg 3 driver)."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    elif "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{url}"
    engine = sa.create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

    METADATA.create_all(engine)
    return engine


class RequestLog:
    """Queued, batched writes of request rows and feedback rows."""

    def __init__(self, url: str, batch: int = 256) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.batch = batch
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="llmdispatch-log", daemon=True)
        self._thread.start()

    def log_request(self, row: dict[str, Any]) -> None:
        """Queue one request row (``attempts`` may be a list: it is stored as JSON)."""
        if not isinstance(row.get("attempts"), str | None):
            row = {**row, "attempts": json.dumps(row["attempts"])}
        self._queue.put(("request", row))

    def log_feedback(self, request_id: str, reward: float | None, preference: Any) -> None:
        """Queue one feedback row."""
        pref = None if preference is None else json.dumps(preference)
        row = {
            "request_id": request_id,
            "created": time.time(),
            "reward": reward,
            "preference": pref,
        }
        self._queue.put(("feedback", row))

    def has_request(self, request_id: str) -> bool:
        """Whether a request id is in the log (after what is queued is written)."""
        self.flush()
        with self.engine.connect() as conn:
            q = sa.select(REQUESTS.c.id).where(REQUESTS.c.id == request_id)
            return conn.execute(q).first() is not None

    def flush(self) -> None:
        """Block until every queued row is written."""
        self._queue.join()

    def close(self) -> None:
        """Flush, stop the writer, dispose of the engine."""
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=10)
        self.engine.dispose()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            items = [item]
            while len(items) < self.batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # handled after this batch
                    self._queue.task_done()
                    break
                items.append(nxt)
            try:
                self._write(items)
            finally:
                for _ in items:
                    self._queue.task_done()

    def _write(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        requests = [row for kind, row in items if kind == "request"]
        feedback = [row for kind, row in items if kind == "feedback"]
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    if requests:
                        conn.execute(REQUESTS.insert(), requests)
                    if feedback:
                        conn.execute(FEEDBACK.insert(), feedback)
                return
            except sa.exc.OperationalError:  # e.g. SQLite busy under several writers
                time.sleep(0.05 * (attempt + 1))
        raise RuntimeError(f"request log {self.url}: could not write {len(items)} rows")


def _rows(url: str) -> tuple[list[Any], dict[str, float]]:
    engine = engine_for(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(REQUESTS).order_by(REQUESTS.c.created)).all()
        fb = conn.execute(
            sa.select(FEEDBACK.c.request_id, sa.func.avg(FEEDBACK.c.reward))
            .where(FEEDBACK.c.reward.is_not(None))
            .group_by(FEEDBACK.c.request_id)
        ).all()
    engine.dispose()
    return list(rows), {str(r[0]): float(r[1]) for r in fb}


def export_table(
    url: str, name: str = "request-log", cards: Iterable[ModelCard] = ()
) -> OutcomeTable:
    """The log as an outcome table: one row per distinct prompt, one column per model.

    Scores come from feedback rewards (the mean when several); cost, tokens, latency and
    the response from the request row (the latest per prompt and model). Only successful
    requests count.
    """
    rows, rewards = _rows(url)
    rows = [r for r in rows if r.status == 200 and r.model]
    models = tuple(sorted({r.model for r in rows}))
    keys: dict[tuple[str | None, str], int] = {}
    for r in rows:
        keys.setdefault((r.system, r.prompt or ""), len(keys))
    n, m = len(keys), len(models)
    mats = {
        f: np.full((n, m), np.nan)
        for f in ("score", "cost", "tokens_in", "tokens_out", "latency_ms", "confidence")
    }
    responses = np.full((n, m), None, dtype=object)
    ids = [""] * n
    for r in rows:
        i, j = keys[(r.system, r.prompt or "")], models.index(r.model)
        ids[i] = ids[i] or r.id
        mats["cost"][i, j] = r.cost_usd if r.cost_usd is not None else np.nan
        mats["tokens_in"][i, j] = r.tokens_in if r.tokens_in is not None else np.nan
        mats["tokens_out"][i, j] = r.tokens_out if r.tokens_out is not None else np.nan
        mats["latency_ms"][i, j] = r.latency_ms if r.latency_ms is not None else np.nan
        responses[i, j] = r.response
        if r.id in rewards:
            mats["score"][i, j] = min(max(rewards[r.id], 0.0), 1.0)
    card_map = {c.name: c for c in cards}
    prompts = [p for (_s, p) in keys]
    systems = [s for (s, _p) in keys]
    return OutcomeTable(
        name=name,
        ids=np.array(ids, dtype=str),
        prompts=np.array(prompts, dtype=object),
        systems=np.array(systems, dtype=object),
        references=np.array([None] * n, dtype=object),
        datasets=np.array(["log"] * n, dtype=str),
        splits=np.array(["train"] * n, dtype=str),
        models=models,
        score=mats["score"],
        raw_score=mats["score"].copy(),
        cost=mats["cost"],
        tokens_in=mats["tokens_in"],
        tokens_out=mats["tokens_out"],
        latency_ms=mats["latency_ms"],
        confidence=mats["confidence"],
        responses=responses,
        cards={k: card_map.get(k) or ModelCard(name=k) for k in models},
        report=LoadReport(source=url, rows_read=len(rows)),
    )


def write_jsonl(table: OutcomeTable, path: Path) -> int:
    """Write a table in the common JSONL(.gz) format; returns the number of records."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    count = 0
    with opener(path, "wt", encoding="utf-8") as fh:
        for i in range(table.n_prompts):
            outcomes: dict[str, dict[str, Any]] = {}
            for j, model in enumerate(table.models):
                o: dict[str, Any] = {}
                for field, key in (
                    ("score", "score"),
                    ("cost", "cost_usd"),
                    ("tokens_in", "tokens_in"),
                    ("tokens_out", "tokens_out"),
                    ("latency_ms", "latency_ms"),
                ):
                    v = getattr(table, field)[i, j]
                    if not np.isnan(v):
                        o[key] = int(v) if key.startswith("tokens") else float(v)
                if table.responses[i, j] is not None:
                    o["response"] = table.responses[i, j]
                if o:
                    outcomes[model] = o
            if not outcomes:
                continue
            rec = {
                "id": str(table.ids[i]),
                "dataset": str(table.datasets[i]),
                "split": str(table.splits[i]),
                "prompt": str(table.prompts[i]),
                "system": table.systems[i],
                "reference": None,
                "outcomes": outcomes,
            }
            fh.write(json.dumps(rec) + "\n")
            count += 1
    return count
