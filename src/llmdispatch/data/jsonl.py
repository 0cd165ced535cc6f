"""Reader for the common outcome format: ``outcomes.jsonl(.gz)`` plus ``models.json``."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from llmdispatch.catalog import ModelCard, load_catalog
from llmdispatch.data.builder import DataError, TableBuilder
from llmdispatch.data.splits import hash_split_label
from llmdispatch.data.table import OutcomeTable

_REQUIRED = ("id", "prompt", "outcomes")


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})"
                ) from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
                )
            yield lineno, record


def _str_field(record: dict[str, Any], key: str, where: str, *, required: bool) -> str | None:
    value = record.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: field '{key}': missing")
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}': expected a string, got {type(value).__name__}")
    return value


def _card_says_estimated(folder: Path) -> bool:
    card = folder / "README.md"
    if not card.is_file():
        return False
    text = card.read_text(encoding="utf-8", errors="replace").lower()
    return "## estimated cost" in text or "cost is an estimate" in text


def read_jsonl_table(
    outcomes: Path, *, catalog: dict[str, ModelCard] | None = None, name: str | None = None
) -> OutcomeTable:
    """Read one ``outcomes.jsonl[.gz]`` file (with ``models.json`` beside it when present).

    Every malformed line or field raises :class:`DataError` naming file, line and field.
    A record without ``split`` gets a deterministic hash split; one without ``dataset`` gets
    the table's name. Both are counted in the load report.
    """
    folder = outcomes.parent
    if catalog is None:
        models_json = folder / "models.json"
        catalog = load_catalog(models_json) if models_json.is_file() else {}
    table_name = name or (folder.name if outcomes.name.startswith("outcomes") else outcomes.stem)
    located = ((f"{outcomes}:{lineno}", record) for lineno, record in _iter_records(outcomes))
    return _build(
        located,
        name=table_name,
        catalog=catalog,
        source=str(outcomes),
        costs_estimated=_card_says_estimated(folder),
    )


def from_records(
    records: Iterable[Mapping[str, Any]],
    *,
    name: str = "records",
    models: Iterable[ModelCard] | Mapping[str, ModelCard] = (),
    costs_estimated: bool = False,
) -> OutcomeTable:
    """An outcome table from records in the common format, held in memory.

    Each record is what one line of ``outcomes.jsonl`` holds (``../shared/data/README.md``):
    ``id``, ``prompt``, ``outcomes`` (model → ``score``, ``cost_usd``, ``tokens_in``,
    ``tokens_out``, ``latency_ms``, ``confidence``, ``response``), and optionally ``split``
    (``train``/``test``; a hash split when absent), ``dataset``, ``system`` and
    ``reference``. ``models`` gives the catalogue (prices, context windows, modalities);
    models without a card get a default one. Problems raise :class:`DataError` naming the
    record (``record 3``, counted from 1) and the field, exactly as the file reader does.

    Examples
    --------
    >>> table = from_records([
    ...     {"id": "q1", "prompt": "2 + 2?", "split": "train",
    ...      "outcomes": {"small": {"score": 1.0, "cost_usd": 1e-5},
    ...                   "large": {"score": 1.0, "cost_usd": 1e-3}}},
    ...     {"id": "q2", "prompt": "Prove Fermat's last theorem.", "split": "test",
    ...      "outcomes": {"small": {"score": 0.0}, "large": {"score": 0.4}}},
    ... ])
    >>> table.models, table.n_prompts, table.split("test").ids.tolist()
    (('large', 'small'), 2, ['q2'])
    """
    cards = dict(models) if isinstance(models, Mapping) else {c.name: c for c in models}
    located = ((f"record {i}", dict(r)) for i, r in enumerate(records, start=1))
    return _build(located, name=name, catalog=cards, source=name, costs_estimated=costs_estimated)


def _build(
    located: Iterable[tuple[str, dict[str, Any]]],
    *,
    name: str,
    catalog: Mapping[str, ModelCard],
    source: str,
    costs_estimated: bool,
) -> OutcomeTable:
    """Validate records (each with where it came from) and build the table."""
    builder = TableBuilder(name, source, catalog)
    hashed = unlabeled = 0
    for where, record in located:
        for key in _REQUIRED:
            if key not in record:
                raise DataError(f"{where}: field '{key}': missing")
        rid = record["id"]
        if not isinstance(rid, str | int) or isinstance(rid, bool):
            raise DataError(f"{where}: field 'id': expected a string")
        rid = str(rid)
        split = _str_field(record, "split", where, required=False)
        if split is None:
            split = hash_split_label(rid)
            hashed += 1
        elif split not in ("train", "test"):
            raise DataError(f"{where}: field 'split': expected 'train' or 'test', got {split!r}")
        dataset = _str_field(record, "dataset", where, required=False)
        if dataset is None:
            dataset = name
            unlabeled += 1
        outcomes_field = record["outcomes"]
        if not isinstance(outcomes_field, dict):
            raise DataError(f"{where}: field 'outcomes': expected an object")
        builder.add(
            where=where,
            id=rid,
            prompt=_str_field(record, "prompt", where, required=True) or "",
            system=_str_field(record, "system", where, required=False),
            reference=_str_field(record, "reference", where, required=False),
            dataset=dataset,
            split=split,
            outcomes=outcomes_field,
        )
        builder.report.rows_read += 1
    if hashed:
        builder.report.notes.append(f"{hashed} records had no split: hash split applied")
    if unlabeled:
        builder.report.notes.append(f"{unlabeled} records had no dataset label: set to {name}")
    return builder.build(costs_estimated=costs_estimated)
