"""RouterBench-format tables: CSV, Parquet, and pickle only when the user allows it.

Columns (Hu et al., RouterBench, arXiv:2403.12031): ``sample_id``, ``prompt``, ``eval_name``,
one score column per model (``<model>``), ``<model>|total_cost``, ``<model>|model_response``
and optionally ``oracle_model_to_route_to``. The ``prompt`` cell is often a Python-list
string (``"['question ...']"``): it is parsed with :func:`ast.literal_eval`, which evaluates
literals only and never runs code; a list's parts are joined. Split: ``*_train``/``*_test``
file names when a folder is read, else the table's hash split. Pickle can run code when
read, so it is refused unless ``allow_pickle`` is set (``--allow-pickle`` on the command line).
"""

from __future__ import annotations

import ast
import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmdispatch.catalog import load_catalog
from llmdispatch.data.builder import DataError, TableBuilder
from llmdispatch.data.splits import hash_split_label
from llmdispatch.data.table import OutcomeTable

_SUFFIXES = {"total_cost": "cost_usd", "model_response": "response"}
_META = {"", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to", "Unnamed: 0"}


def parse_prompt(cell: str) -> str:
    """A prompt cell: a Python-list string is parsed as a literal and joined; else as is."""
    text = cell.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return cell
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            # RouterBench stores the same few-shot prompt twice in some rows: keep it once.
            parts = list(dict.fromkeys(value))
            return "\n\n".join(parts)
    return cell


def _rows_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        yield from enumerate(reader, start=2)


def _rows_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs the 'parquet' extra (pyarrow)") from None
    table = pq.read_table(path)
    yield from enumerate(table.to_pylist(), start=1)


def _rows_pickle(path: Path, allow_pickle: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    if not allow_pickle:
        raise DataError(
            f"{path}: pickle files can run code when loaded; pass --allow-pickle "
            "(allow_pickle=True) only for files you trust"
        )
    import pickle

    with path.open("rb") as fh:
        obj = pickle.load(fh)
    records = obj.to_dict("records") if hasattr(obj, "to_dict") else obj
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a DataFrame or a list of rows in the pickle")
    for i, row in enumerate(records, start=1):
        yield i, dict(row)


def _number(value: Any, where: str, field: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: field '{field}': expected a number, got {value!r}") from None
    return None if number != number else number


def _add_rows(
    builder: TableBuilder, path: Path, rows: Iterator[tuple[int, dict[str, Any]]], split: str | None
) -> None:
    models: list[str] | None = None
    seen = builder_ids(builder)
    duplicates = 0
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        if models is None:
            columns = list(row)
            for needed in ("prompt",):
                if needed not in columns:
                    raise DataError(f"{path}: missing column '{needed}' (RouterBench format)")
            models = [c for c in columns if "|" not in c and c not in _META]
            if not models:
                raise DataError(f"{path}: no model score columns found")
        sid = str(row.get("sample_id") or f"{path.stem}-{lineno}")
        if sid in seen:
            # RouterBench repeats some sample ids (e.g. ARC rows scored for one model only):
            # keep every row, under a distinct id, and count it in the load report.
            seen[sid] += 1
            sid = f"{sid}#{seen[sid]}"
            duplicates += 1
        else:
            seen[sid] = 1
        outcomes: dict[str, dict[str, Any]] = {}
        for model in models:
            result: dict[str, Any] = {}
            score = _number(row.get(model), where, model)
            if score is not None:
                result["score"] = score
            cost = _number(row.get(f"{model}|total_cost"), where, f"{model}|total_cost")
            if cost is not None:
                result["cost_usd"] = cost
            response = row.get(f"{model}|model_response")
            if isinstance(response, str) and response:
                result["response"] = response
            if "score" in result:
                outcomes[model] = result
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            raise DataError(f"{where}: field 'prompt': expected text, got {type(prompt).__name__}")
        builder.add(
            where=where,
            id=str(sid),
            prompt=parse_prompt(prompt),
            system=None,
            reference=None,
            dataset=str(row.get("eval_name") or path.stem),
            split=split or hash_split_label(str(sid)),
            outcomes=outcomes,
        )
        builder.report.rows_read += 1
    if duplicates:
        builder.report.notes.append(
            f"{path.name}: {duplicates} repeated sample_id values kept under ids suffixed '#n'"
        )


def builder_ids(builder: TableBuilder) -> dict[str, int]:
    """Ids already in ``builder`` (shared across the files of one folder)."""
    ids: dict[str, int] = getattr(builder, "_routerbench_ids", {})
    builder._routerbench_ids = ids  # type: ignore[attr-defined]
    return ids


def _rows(path: Path, allow_pickle: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _rows_csv(path)
    if suffix == ".parquet":
        return _rows_parquet(path)
    if suffix in (".pkl", ".pickle"):
        return _rows_pickle(path, allow_pickle)
    raise DataError(f"{path}: not a RouterBench table (.csv, .parquet, .pkl)")


def _catalog(folder: Path) -> dict[str, Any]:
    for candidate in (folder / "models.json", folder.parent / "models.json"):
        if candidate.is_file():
            return load_catalog(candidate)
    return {}


def read_routerbench_file(path: Path, *, allow_pickle: bool = False) -> OutcomeTable:
    """One RouterBench table; the split comes from a ``_train``/``_test`` name or a hash."""
    stem = path.stem.lower()
    split = "train" if stem.endswith("_train") else "test" if stem.endswith("_test") else None
    builder = TableBuilder(path.stem, str(path), _catalog(path.parent))
    _add_rows(builder, path, _rows(path, allow_pickle), split)
    return builder.build()


def read_routerbench_dir(folder: Path, *, allow_pickle: bool = False) -> OutcomeTable:
    """Every RouterBench table in a folder, joined (duplicate sample ids are an error)."""
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in (".csv", ".parquet", ".pkl", ".pickle")
    )
    if not files:
        raise DataError(f"{folder}: no .csv, .parquet or .pkl tables")
    builder = TableBuilder(folder.name, str(folder), _catalog(folder))
    for path in files:
        stem = path.stem.lower()
        split = "train" if stem.endswith("_train") else "test" if stem.endswith("_test") else None
        _add_rows(builder, path, _rows(path, allow_pickle), split)
    return builder.build()
