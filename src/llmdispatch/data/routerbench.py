"""RouterBench-format tables: CSV, Parquet, and pickle only when the user allows it.

Columns (Hu et al., RouterBench, arXiv:2403.12031): ``sample_id``, ``prompt``, ``eval_name``,
one score column per model (``<model>``), ``<model>|total_cost``, ``<model>|model_response``
and optionally ``oracle_model_to_route_to``. The ``prompt`` and response cells are often
Python-list strings (``"['question ...']"``): they are parsed with :func:`ast.literal_eval`,
which evaluates literals only and never runs code; a list's parts are joined. Split:
``*_train``/``*_test`` file names, else the deterministic hash split of the id. Pickle can run
code when read, so it is refused unless ``allow_pickle`` is set (``--allow-pickle``).
Every problem names the file, the row (line for CSV, 1-based record for Parquet/pickle) and
the column.
"""

from __future__ import annotations

import ast
import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmdispatch.catalog import ModelCard, load_catalog
from llmdispatch.data.builder import DataError, TableBuilder
from llmdispatch.data.splits import hash_split_label
from llmdispatch.data.table import OutcomeTable

TABLE_SUFFIXES = (".csv", ".parquet", ".pkl", ".pickle")
#: ``<model>|<suffix>`` columns and the outcome key each fills.
_PER_MODEL = {"total_cost": "cost_usd", "model_response": "response"}
_META = {"", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to", "Unnamed: 0"}

Rows = Iterator[tuple[int, dict[str, Any]]]


def parse_list_cell(cell: str, *, dedupe: bool = False) -> str:
    """A Python-list string parsed as a literal (never evaluated) and joined; else ``cell``.

    ``dedupe`` keeps repeated parts once: some RouterBench rows store the same few-shot
    prompt twice.
    """
    text = cell.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return cell
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return cell
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return cell
    parts = list(dict.fromkeys(value)) if dedupe else value
    return "\n\n".join(parts)


def parse_prompt(cell: str) -> str:
    """A prompt cell: a Python-list string is parsed as a literal and joined; else as is."""
    return parse_list_cell(cell, dedupe=True)


def _rows_csv(path: Path) -> Rows:
    # Long responses can exceed the default 128 kB field size limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(newline="", encoding="utf-8") as fh:
        # A quoted cell may span lines: report the physical line where the row starts.
        reader = csv.DictReader(fh)
        start = 2
        for row in reader:
            yield start, row
            start = reader.line_num + 1


def _rows_parquet(path: Path) -> Rows:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow: pip install 'llmdispatch[parquet]'"
        ) from None
    table = pq.read_table(path)
    yield from enumerate(table.to_pylist(), start=1)


def _rows_pickle(path: Path, allow_pickle: bool) -> Rows:
    if not allow_pickle:
        raise DataError(
            f"{path}: pickle files can run code when loaded; pass --allow-pickle "
            "(allow_pickle=True) only for files you trust"
        )
    import pickle

    with path.open("rb") as fh:
        obj = pickle.load(fh)
    records = obj.to_dict("records") if hasattr(obj, "to_dict") else obj
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path}: expected a DataFrame or a list of row dicts in the pickle")
    for i, row in enumerate(records, start=1):
        yield i, dict(row)


def _rows(path: Path, allow_pickle: bool) -> Rows:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _rows_csv(path)
    if suffix == ".parquet":
        return _rows_parquet(path)
    if suffix in (".pkl", ".pickle"):
        return _rows_pickle(path, allow_pickle)
    raise DataError(f"{path}: not a RouterBench table ({', '.join(TABLE_SUFFIXES)})")


def _number(value: Any, where: str, column: str) -> float | None:
    """A numeric cell: empty/None/NaN -> None; text that is not a number -> DataError."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool):
        raise DataError(f"{where}: field '{column}': expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"{where}: field '{column}': expected a number, got {type(value).__name__} {value!r}"
        ) from None
    return None if number != number else number


def _split_of(path: Path) -> str | None:
    stem = path.stem.lower()
    return "train" if stem.endswith("_train") else "test" if stem.endswith("_test") else None


class _RouterBenchReader:
    """Feeds RouterBench rows of one or more files into a :class:`TableBuilder`."""

    def __init__(self, name: str, source: str, cards: dict[str, ModelCard]) -> None:
        self.builder = TableBuilder(name, source, cards)
        self._ids: dict[str, int] = {}
        self._columns: dict[str, Path] = {}  # score column -> first file that has it
        self._scored: set[str] = set()

    def _models(self, path: Path, columns: list[str]) -> list[str]:
        if "prompt" not in columns:
            raise DataError(f"{path}: field 'prompt': column missing (RouterBench format)")
        models = [c for c in columns if "|" not in c and c not in _META]
        if not models:
            raise DataError(f"{path}: no model score columns found (RouterBench format)")
        for column in columns:
            if "|" not in column:
                continue
            model, _, suffix = column.rpartition("|")
            if suffix not in _PER_MODEL or model not in models:
                self.builder.report.problem(f"{path}: field '{column}': unknown column ignored")
        for model in models:
            self._columns.setdefault(model, path)
        return models

    def _unique_id(self, sid: str) -> str:
        # RouterBench repeats some sample ids (ARC rows scored for one model only): keep
        # every row under a distinct id; the count goes into the load report.
        if sid not in self._ids:
            self._ids[sid] = 1
            return sid
        self._ids[sid] += 1
        return f"{sid}#{self._ids[sid]}"

    def add_file(self, path: Path, rows: Rows) -> None:
        """Add every row of one file; the split comes from the file name or the id's hash."""
        split = _split_of(path)
        models: list[str] | None = None
        report = self.builder.report
        repeated = 0
        for lineno, row in rows:
            where = f"{path}:{lineno}"
            if models is None:
                models = self._models(path, list(row))
            raw_id = row.get("sample_id")
            sid = f"{path.stem}-{lineno}" if raw_id is None or raw_id == "" else str(raw_id)
            uid = self._unique_id(sid)
            repeated += uid != sid
            prompt = row.get("prompt")
            if not isinstance(prompt, str):
                raise DataError(
                    f"{where}: field 'prompt': expected text, got {type(prompt).__name__}"
                )
            self.builder.add(
                where=where,
                id=uid,
                prompt=parse_prompt(prompt),
                system=None,
                reference=None,
                dataset=str(row.get("eval_name") or path.stem),
                split=split or hash_split_label(uid),
                outcomes=self._outcomes(row, models, where),
            )
            report.rows_read += 1
        if repeated:
            report.notes.append(
                f"{path.name}: {repeated} repeated sample_id values (seen earlier in this or "
                "an earlier file) kept under ids suffixed '#n'"
            )

    def _outcomes(
        self, row: dict[str, Any], models: list[str], where: str
    ) -> dict[str, dict[str, Any]]:
        outcomes: dict[str, dict[str, Any]] = {}
        for model in models:
            result: dict[str, Any] = {}
            score = _number(row.get(model), where, model)
            if score is not None:
                if not 0.0 <= score <= 1.0:
                    raise DataError(f"{where}: field '{model}': score {score} is outside [0, 1]")
                result["score"] = score
                self._scored.add(model)
            column = f"{model}|total_cost"
            cost = _number(row.get(column), where, column)
            if cost is not None:
                if cost < 0:
                    raise DataError(f"{where}: field '{column}': negative value {cost}")
                result["cost_usd"] = cost
            response = row.get(f"{model}|model_response")
            if isinstance(response, str) and response:
                result["response"] = parse_list_cell(response)
            if result:
                outcomes[model] = result
        return outcomes

    def build(self) -> OutcomeTable:
        """The table; a score column with no score in any row is an error."""
        empty = [m for m in self._columns if m not in self._scored]
        if empty:
            where = ", ".join(f"field '{m}' of {self._columns[m]}" for m in empty)
            raise DataError(f"model(s) with no rows (every score empty): {where}")
        return self.builder.build()


def _catalog(folder: Path) -> dict[str, ModelCard]:
    for candidate in (folder / "models.json", folder.parent / "models.json"):
        if candidate.is_file():
            return load_catalog(candidate)
    return {}


def read_routerbench_file(path: Path, *, allow_pickle: bool = False) -> OutcomeTable:
    """One RouterBench table; the split comes from a ``_train``/``_test`` name or a hash.

    Model cards come from a ``models.json`` beside the file (or one folder up).
    """
    reader = _RouterBenchReader(path.stem, str(path), _catalog(path.parent))
    reader.add_file(path, _rows(path, allow_pickle))
    return reader.build()


def read_routerbench_dir(folder: Path, *, allow_pickle: bool = False) -> OutcomeTable:
    """Every RouterBench table in a folder, joined (repeated sample ids get a ``#n`` suffix)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in TABLE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no {', '.join(TABLE_SUFFIXES)} tables")
    reader = _RouterBenchReader(folder.name, str(folder), _catalog(folder))
    for path in files:
        reader.add_file(path, _rows(path, allow_pickle))
    return reader.build()
