"""The request log as an outcome table, so served traffic trains the next router.

One record per distinct prompt (system prompt + prompt text), in the common format of
``/work/shared/data/README.md``; one outcome per model that answered it successfully:

* ``score``: the mean feedback reward over that model's requests for that prompt (absent
  without feedback; pairwise preferences carry no absolute score and are only counted);
* ``cost_usd``, ``tokens_in``, ``tokens_out``, ``latency_ms``: means over those requests;
* ``response``: the latest answer.

A cascade's lower rungs answered too: their cost and latency (from the request's
``attempts``) become outcomes of those models, without a response or score. Record ids are a
hash of the prompt, so the same prompt keeps its id (and its split) from one export to the
next; the split is a deterministic hash split with ``test_fraction`` of prompts in test.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import sqlalchemy as sa

from llmdispatch.catalog import ModelCard
from llmdispatch.data.builder import DataError, TableBuilder
from llmdispatch.data.splits import hash_split_label
from llmdispatch.data.table import OutcomeTable
from llmdispatch.gateway.requestlog import FEEDBACK, REQUESTS, engine_for, sqlite_file

_NUMERIC = (("cost_usd", "cost_usd"), ("tokens_in", "tokens_in"), ("tokens_out", "tokens_out"))


@dataclass
class _Cell:
    """What the log says about one model on one prompt."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    rewards: list[float] = field(default_factory=list)
    response: str | None = None

    def add(self, key: str, value: float | None) -> None:
        if value is not None:
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def outcome(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.rewards:
            out["score"] = min(max(float(np.mean(self.rewards)), 0.0), 1.0)
        for key, total in self.sums.items():
            mean = total / self.counts[key]
            out[key] = round(mean) if key.startswith("tokens") else mean
        if self.response is not None:
            out["response"] = self.response
        return out


@dataclass
class LogExport:
    """Records in the common format and what was read to make them."""

    records: list[dict[str, Any]]
    requests_read: int = 0
    rewards: int = 0
    preferences: int = 0
    models: tuple[str, ...] = ()


def prompt_id(system: str | None, prompt: str) -> str:
    """A stable id for a prompt: the same text gets the same id in every export."""
    digest = hashlib.sha256(f"{system or ''}\x00{prompt}".encode()).hexdigest()
    return f"log-{digest[:20]}"


def _query(since: float | None, until: float | None, policies: Sequence[str] | None) -> Any:
    q = sa.select(REQUESTS).where(REQUESTS.c.status == 200, REQUESTS.c.model.is_not(None))
    if since is not None:
        q = q.where(REQUESTS.c.created >= since)
    if until is not None:
        q = q.where(REQUESTS.c.created < until)
    if policies:
        q = q.where(REQUESTS.c.policy.in_(list(policies)))
    return q.order_by(REQUESTS.c.created, REQUESTS.c.id)


def _feedback(conn: sa.Connection) -> tuple[dict[str, list[float]], int]:
    rewards: dict[str, list[float]] = {}
    preferences = 0
    for rid, reward, pref in conn.execute(
        sa.select(FEEDBACK.c.request_id, FEEDBACK.c.reward, FEEDBACK.c.preference)
    ):
        if reward is not None:
            rewards.setdefault(str(rid), []).append(float(reward))
        if pref is not None:
            preferences += 1
    return rewards, preferences


def _rungs(attempts: str | None, final: str) -> list[dict[str, Any]]:
    """Successful answers of other models during the request (a cascade's lower rungs)."""
    try:
        items = json.loads(attempts) if attempts else []
    except json.JSONDecodeError:
        return []
    if not isinstance(items, list):
        return []
    return [
        a
        for a in items
        if isinstance(a, dict)
        and a.get("purpose", "answer") == "answer"
        and "error" not in a
        and isinstance(a.get("model"), str)
        and a["model"] != final
    ]


def read_log(
    url: str,
    *,
    since: float | None = None,
    until: float | None = None,
    policies: Sequence[str] | None = None,
    test_fraction: float = 0.0,
    dataset: str = "log",
) -> LogExport:
    """Read successful requests (``since ≤ created < until``, of these ``policies``) and
    their feedback into common-format records (see the module docstring)."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    file = sqlite_file(url)
    if file is not None and not file.is_file():  # SQLite would create it on connect
        raise DataError(f"{url}: no such request log (file not found)")
    engine = engine_for(url, create=False)
    try:
        with engine.connect() as conn:
            rows = conn.execute(_query(since, until, policies)).all()
            rewards, preferences = _feedback(conn)
    except sa.exc.NoSuchTableError as exc:  # pragma: no cover - depends on the database
        raise DataError(f"{url}: not a llmdispatch request log ({exc})") from None
    except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
        raise DataError(f"{url}: cannot read the request log: {exc.orig}") from None
    finally:
        engine.dispose()
    prompts: dict[tuple[str | None, str], dict[str, _Cell]] = {}
    for r in rows:
        cells = prompts.setdefault((r.system, r.prompt or ""), {})
        cell = cells.setdefault(r.model, _Cell())
        for column, key in _NUMERIC:
            cell.add(key, getattr(r, column))
        cell.add("latency_ms", r.latency_ms)
        cell.rewards += rewards.get(r.id, [])
        if r.response is not None:
            cell.response = r.response
        for rung in _rungs(r.attempts, r.model):
            lower = cells.setdefault(rung["model"], _Cell())
            lower.add("cost_usd", rung.get("cost"))
            lower.add("latency_ms", rung.get("latency_ms"))
    records: list[dict[str, Any]] = []
    for (system, prompt), cells in prompts.items():
        rid = prompt_id(system, prompt)
        outcomes = {m: o for m, c in cells.items() if (o := c.outcome())}
        if not outcomes:
            continue
        records.append(
            {
                "id": rid,
                "dataset": dataset,
                "split": hash_split_label(rid, test_fraction) if test_fraction else "train",
                "prompt": prompt,
                "system": system,
                "reference": None,
                "outcomes": outcomes,
            }
        )
    models = tuple(sorted({m for rec in records for m in rec["outcomes"]}))
    n_rewards = sum(len(v) for v in rewards.values())
    return LogExport(records, len(rows), n_rewards, preferences, models)


def table_from_records(
    records: Iterable[dict[str, Any]], name: str, source: str, cards: Iterable[ModelCard] = ()
) -> OutcomeTable:
    """Build (and validate) an outcome table from common-format records."""
    records = list(records)
    if not records:
        raise DataError(f"{source}: no successful requests to export")
    seen = {m for rec in records for m in rec["outcomes"]}
    builder = TableBuilder(name, source, {c.name: c for c in cards if c.name in seen})
    for i, rec in enumerate(records):
        builder.add(
            where=f"{source}#{i}",
            id=rec["id"],
            prompt=rec["prompt"],
            system=rec["system"],
            reference=rec["reference"],
            dataset=rec["dataset"],
            split=rec["split"],
            outcomes=rec["outcomes"],
        )
        builder.report.rows_read += 1
    return builder.build()


def export_table(
    url: str,
    name: str = "request-log",
    cards: Iterable[ModelCard] = (),
    *,
    since: float | None = None,
    until: float | None = None,
    policies: Sequence[str] | None = None,
    test_fraction: float = 0.0,
) -> OutcomeTable:
    """The request log at ``url`` as an outcome table (see :func:`read_log`)."""
    log = read_log(url, since=since, until=until, policies=policies, test_fraction=test_fraction)
    return table_from_records(log.records, name, url, cards)


def _open_out(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8")
    return path.open("w", encoding="utf-8")


def write_records(records: Iterable[dict[str, Any]], path: Path) -> int:
    """Write common-format records as JSONL (gzip when ``path`` ends in ``.gz``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with _open_out(path) as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            count += 1
    return count


def table_records(table: OutcomeTable) -> list[dict[str, Any]]:
    """An outcome table as common-format records (unknown values left out)."""
    fields = (
        ("score", "score"),
        ("cost", "cost_usd"),
        ("tokens_in", "tokens_in"),
        ("tokens_out", "tokens_out"),
        ("latency_ms", "latency_ms"),
    )
    records = []
    for i in range(table.n_prompts):
        outcomes: dict[str, dict[str, Any]] = {}
        for j, model in enumerate(table.models):
            o: dict[str, Any] = {}
            for attr, key in fields:
                v = float(getattr(table, attr)[i, j])
                if not np.isnan(v):
                    o[key] = int(v) if key.startswith("tokens") else v
            if table.responses[i, j] is not None:
                o["response"] = table.responses[i, j]
            if o:
                outcomes[model] = o
        if outcomes:
            records.append(
                {
                    "id": str(table.ids[i]),
                    "dataset": str(table.datasets[i]),
                    "split": str(table.splits[i]),
                    "prompt": str(table.prompts[i]),
                    "system": table.systems[i],
                    "reference": table.references[i],
                    "outcomes": outcomes,
                }
            )
    return records


def write_jsonl(table: OutcomeTable, path: Path) -> int:
    """Write a table in the common JSONL(.gz) format; returns the number of records."""
    return write_records(table_records(table), path)


def write_models_json(cards: Iterable[ModelCard], models: Sequence[str], path: Path) -> None:
    """``models.json`` for the exported models (prices from the gateway's config)."""
    by_name = {c.name: c for c in cards}
    out: dict[str, dict[str, Any]] = {}
    for m in models:
        card = by_name.get(m)
        if card is None:
            out[m] = {"price_in_per_mtok": None, "price_out_per_mtok": None}
            continue
        entry = card.model_dump(exclude={"name", "extra"}, exclude_none=True)
        entry["modalities"] = list(card.modalities)
        out[m] = {**entry, **card.extra}
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
