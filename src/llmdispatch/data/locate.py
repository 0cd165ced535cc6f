"""Find data sets by path or by name, and load whatever format a path holds."""

from __future__ import annotations

import os
from pathlib import Path

from llmdispatch.data.builder import DataError
from llmdispatch.data.jsonl import read_jsonl_table
from llmdispatch.data.table import OutcomeTable

ENV_VAR = "LLMDISPATCH_DATA"
_OUTCOME_FILES = ("outcomes.jsonl.gz", "outcomes.jsonl")


def data_roots() -> list[Path]:
    """Folders searched for data sets by name: ``$LLMDISPATCH_DATA``, then ``../shared/data``."""
    roots: list[Path] = []
    if env := os.environ.get(ENV_VAR):
        roots += [Path(p) for p in env.split(os.pathsep) if p]
    here = Path.cwd()
    roots += [here.parent / "shared" / "data", here / "shared" / "data"]
    # The package's own checkout, for commands run from elsewhere.
    repo = Path(__file__).resolve().parents[3]
    roots.append(repo.parent / "shared" / "data")
    seen: list[Path] = []
    for root in roots:
        if root.is_dir() and root.resolve() not in [s.resolve() for s in seen]:
            seen.append(root)
    return seen


def is_dataset_dir(path: Path) -> bool:
    """Whether a folder holds an outcome table in a format we read."""
    if not path.is_dir():
        return False
    if any((path / f).is_file() for f in _OUTCOME_FILES):
        return True
    return any(path.glob("*.csv")) or any(path.glob("*.parquet"))


def available_datasets() -> dict[str, Path]:
    """Every data set found under the data roots, by folder name (first root wins)."""
    found: dict[str, Path] = {}
    for root in data_roots():
        for child in sorted(root.iterdir()):
            if child.name not in found and is_dataset_dir(child):
                found[child.name] = child
    return found


def resolve_dataset(spec: str | Path) -> Path:
    """A path as given, or a data-set name looked up in the data roots."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    found = available_datasets()
    if str(spec) in found:
        return found[str(spec)]
    roots = ", ".join(str(r) for r in data_roots()) or "(none exist)"
    names = ", ".join(found) or "(none)"
    raise DataError(
        f"no data set {str(spec)!r}: not a path, and not a name under {roots}. "
        f"Found: {names}. Set {ENV_VAR} to add a folder."
    )


def load_table(spec: str | Path, *, allow_pickle: bool = False) -> OutcomeTable:
    """Load a data set by name or path: a folder, a JSONL(.gz), a CSV/Parquet/pickle file.

    A folder with ``outcomes.jsonl[.gz]`` is read in the common format; a folder of
    RouterBench CSVs (``*_train.csv`` / ``*_test.csv``) is read and joined.
    """
    path = resolve_dataset(spec)
    if path.is_dir():
        for fname in _OUTCOME_FILES:
            if (path / fname).is_file():
                return read_jsonl_table(path / fname)
        from llmdispatch.data.routerbench import read_routerbench_dir

        table: OutcomeTable = read_routerbench_dir(path, allow_pickle=allow_pickle)
        return table
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith((".jsonl", ".jsonl.gz")):
        return read_jsonl_table(path)
    if path.suffix.lower() in (".csv", ".parquet", ".pkl", ".pickle"):
        from llmdispatch.data.routerbench import read_routerbench_file

        single: OutcomeTable = read_routerbench_file(path, allow_pickle=allow_pickle)
        return single
    raise DataError(f"{path}: unknown data format (expected a folder, .jsonl[.gz], .csv, .parquet)")
