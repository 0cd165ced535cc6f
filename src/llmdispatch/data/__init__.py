"""Outcome tables and their loaders."""

from llmdispatch.data.builder import DataError
from llmdispatch.data.jsonl import from_records
from llmdispatch.data.locate import available_datasets, load_table, resolve_dataset
from llmdispatch.data.splits import hash_split, kfold, train_test, train_validation
from llmdispatch.data.table import LoadReport, OutcomeTable

__all__ = [
    "DataError",
    "LoadReport",
    "OutcomeTable",
    "available_datasets",
    "from_records",
    "hash_split",
    "kfold",
    "load_table",
    "resolve_dataset",
    "train_test",
    "train_validation",
]
