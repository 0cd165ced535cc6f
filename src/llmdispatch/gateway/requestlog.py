"""The request log: every request with its decision, usage, cost, latency and feedback.

SQLAlchemy Core over SQLite (WAL, the default) or PostgreSQL (``postgresql://…``, psycopg 3).
Writes never block the event loop: :meth:`RequestLog.log_request` and
:meth:`RequestLog.log_feedback` only check a row and put it on a queue; one background thread
completes the rows (every column, ``attempts`` as JSON) and writes whatever is queued in a
single transaction per batch. :meth:`RequestLog.flush` waits until everything queued so far
is written (tests, shutdown). A batch the database refuses is retried, then written row by
row so one bad row (say, feedback for an unknown request) costs only itself; rows that still
fail are counted in :attr:`RequestLog.dropped` and logged.

The queue is bounded (``max_queued`` rows): if the database falls behind for long, new rows
are dropped and counted rather than held in memory without limit.

:mod:`llmdispatch.gateway.logexport` turns the log into an outcome table to train on.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

logger = logging.getLogger(__name__)

METADATA = sa.MetaData()
REQUESTS = sa.Table(
    "llmdispatch_requests",
    METADATA,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created", sa.Float, nullable=False, index=True),  # UNIX seconds
    sa.Column("key_id", sa.String(128)),
    sa.Column("policy", sa.String(128)),
    sa.Column("model", sa.String(256)),  # the model that answered
    sa.Column("attempts", sa.Text),  # JSON list: every call (rungs, fallbacks) with its cost
    sa.Column("system", sa.Text),
    sa.Column("prompt", sa.Text),
    sa.Column("response", sa.Text),
    sa.Column("tokens_in", sa.Integer),
    sa.Column("tokens_out", sa.Integer),
    sa.Column("cost_usd", sa.Float),  # every call of the request
    sa.Column("latency_ms", sa.Float),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("status", sa.Integer),  # the HTTP status answered
    sa.Column("error", sa.Text),
    sa.Column("est_quality", sa.Float),  # the policy's estimates for its first choice
    sa.Column("est_cost", sa.Float),
)
FEEDBACK = sa.Table(
    "llmdispatch_feedback",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), sa.ForeignKey("llmdispatch_requests.id"), index=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("reward", sa.Float),  # in [0, 1]
    sa.Column("preference", sa.Text),  # JSON, e.g. {"chosen": "m1", "rejected": "m2"}
)
_REQUEST_COLUMNS = frozenset(c.name for c in REQUESTS.columns)
_SENTINEL = None


def database_url(url: str) -> str:
    """SQLAlchemy URL of a log: a path → SQLite; ``postgresql://`` → the psycopg 3 driver."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if "://" not in url:
        return f"sqlite:///{url}"
    return url


def sqlite_file(url: str) -> Path | None:
    """The file of a log kept in a SQLite file; ``None`` for other databases and in-memory."""
    full = database_url(url)
    if not full.startswith("sqlite:///"):
        return None
    path = full[len("sqlite:///") :]
    return Path(path) if path and path != ":memory:" else None


def engine_for(url: str, create: bool = True) -> sa.Engine:
    """An engine for a log (see :func:`database_url`); SQLite runs in WAL mode. With
    ``create`` the tables are made if missing (and a SQLite file's folder)."""
    file = sqlite_file(url)
    if file is not None and create:
        file.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(database_url(url), pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=5000")  # several gateway processes, one file
            cur.execute("PRAGMA foreign_keys=ON")  # feedback only for logged requests, as in PG
            cur.close()

    if create:
        METADATA.create_all(engine)
    return engine


def _checked_row(row: dict[str, Any]) -> dict[str, Any]:
    """A request row whose columns are known and that has an ``id`` (else ``ValueError``),
    stamped with ``created`` if it has none; the rest waits for :func:`_request_row`."""
    unknown = row.keys() - _REQUEST_COLUMNS
    if unknown:
        raise ValueError(f"unknown request-log columns: {sorted(unknown)}")
    if not row.get("id"):
        raise ValueError("a request-log row needs an 'id'")
    if row.get("created") is None:
        row = {**row, "created": time.time()}
    return row


def _request_row(row: dict[str, Any]) -> dict[str, Any]:
    """A complete row of a checked one: every column, ``attempts`` as JSON."""
    full = {name: row.get(name) for name in _REQUEST_COLUMNS}
    if not isinstance(full["attempts"], str | None):
        full["attempts"] = json.dumps(full["attempts"])
    return full


class RequestLog:
    """Queued, batched writes of request rows and feedback rows (see the module docstring)."""

    def __init__(
        self, url: str, batch: int = 256, retries: int = 4, max_queued: int = 10_000
    ) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.batch = batch
        self.retries = retries
        self.dropped = 0
        self.written = 0
        self._count_lock = threading.Lock()  # ``dropped`` grows from callers and the writer
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(max_queued)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="llmdispatch-log", daemon=True)
        self._thread.start()

    def log_request(self, row: dict[str, Any]) -> None:
        """Queue one request row (columns of :data:`REQUESTS`; ``attempts`` may be a list).

        The row is written later, from another thread: do not change it after this call.
        """
        self._put("request", _checked_row(row))

    def log_feedback(self, request_id: str, reward: float | None, preference: Any = None) -> None:
        """Queue one feedback row for a logged request."""
        row = {
            "request_id": request_id,
            "created": time.time(),
            "reward": reward,
            "preference": None if preference is None else json.dumps(preference),
        }
        self._put("feedback", row)

    def has_request(self, request_id: str) -> bool:
        """Whether a request id is in the log (after what is queued is written). Blocking:
        call it from a thread (``asyncio.to_thread``) inside the server."""
        self.flush()
        with self.engine.connect() as conn:
            q = sa.select(REQUESTS.c.id).where(REQUESTS.c.id == request_id)
            return conn.execute(q).first() is not None

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every row queued so far is written (or dropped); ``False`` on timeout."""
        if timeout is None:
            self._queue.join()
            return True
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, stop the writer and release the engine (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_SENTINEL)
        self._thread.join(timeout=timeout)
        late = []  # rows a racing caller queued behind the stop mark
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _SENTINEL:
                late.append(item)
            self._queue.task_done()
        if late and not self._thread.is_alive():
            self._write(late)
        self.engine.dispose()

    def _put(self, kind: str, row: dict[str, Any]) -> None:
        if self._closed:
            raise RuntimeError(f"request log {self.url} is closed")
        try:
            self._queue.put_nowait((kind, row))
        except queue.Full:
            with self._count_lock:
                self.dropped += 1
                first = self.dropped == 1
            if first:
                logger.error(
                    "request log %s: %d rows are waiting to be written; dropping new rows "
                    "until the database catches up (counted in dropped)",
                    self.url,
                    self._queue.maxsize,
                )

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            items: list[tuple[str, dict[str, Any]]] = []
            if item is _SENTINEL:
                stop = True
            else:
                items.append(item)
            while len(items) < self.batch and not stop:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _SENTINEL:
                    stop = True
                else:
                    items.append(nxt)
            try:
                if items:
                    self._write(items)
            except Exception:  # the writer must survive anything, or flush() would hang
                with self._count_lock:
                    self.dropped += len(items)
                logger.exception("request log %s: dropped %d rows", self.url, len(items))
            finally:
                for _ in range(len(items) + (1 if stop else 0)):
                    self._queue.task_done()

    def _write(self, queued: list[tuple[str, dict[str, Any]]]) -> None:
        items = []
        for kind, row in queued:
            if kind == "request":
                try:
                    row = _request_row(row)
                except (TypeError, ValueError) as exc:  # e.g. attempts that are not JSON
                    with self._count_lock:
                        self.dropped += 1
                    logger.error("request log %s: dropped a request row: %s", self.url, exc)
                    continue
            items.append((kind, row))
        if not items:
            return
        for attempt in range(self.retries + 1):
            try:
                self._insert(items)
                self.written += len(items)
                return
            except sa.exc.OperationalError:  # e.g. SQLite busy, a dropped connection
                if attempt == self.retries:
                    break
                time.sleep(0.05 * (attempt + 1))
            except sa.exc.DBAPIError:  # e.g. an integrity error: find the bad rows
                break
        for item in items:  # one by one, so only the bad rows are lost
            try:
                self._insert([item])
                self.written += 1
            except sa.exc.DBAPIError as exc:
                with self._count_lock:
                    self.dropped += 1
                logger.error("request log %s: dropped a %s row: %s", self.url, item[0], exc)

    def _insert(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        requests = [row for kind, row in items if kind == "request"]
        feedback = [row for kind, row in items if kind == "feedback"]
        with self.engine.begin() as conn:
            if requests:
                conn.execute(REQUESTS.insert(), requests)
            if feedback:  # after the requests: feedback may refer to a row of this batch
                conn.execute(FEEDBACK.insert(), feedback)


def __getattr__(name: str) -> Any:
    """``export_table`` and ``write_jsonl`` moved to :mod:`llmdispatch.gateway.logexport`."""
    if name in ("export_table", "write_jsonl"):
        from llmdispatch.gateway import logexport

        return getattr(logexport, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
