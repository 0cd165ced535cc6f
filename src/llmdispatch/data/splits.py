"""Deterministic splits: hash train/test, validation carved from train, k-fold."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from llmdispatch.data.table import OutcomeTable


def _hash_unit(key: str, salt: str = "") -> float:
    digest = hashlib.sha256(f"{salt}{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hash_split_label(key: str, test_fraction: float = 0.5, salt: str = "") -> str:
    """``test`` for a stable ``test_fraction`` share of keys, else ``train``.

    With the defaults this matches the shared cards' rule (sha256 of the id, even → train)
    closely in spirit: the label depends on the id alone, so it never changes between runs.
    """
    return "test" if _hash_unit(key, salt) < test_fraction else "train"


def hash_split(table: OutcomeTable, test_fraction: float = 0.5, salt: str = "") -> OutcomeTable:
    """The table relabelled with a deterministic hash split of its ids."""
    labels = np.array([hash_split_label(i, test_fraction, salt) for i in table.ids], dtype=str)
    return table.with_splits(labels)


def train_validation(
    train: OutcomeTable, validation_fraction: float = 0.25, salt: str = "validation"
) -> tuple[OutcomeTable, OutcomeTable]:
    """Split a training table into (fit, validation) by a salted hash of the ids."""
    is_val = np.array([_hash_unit(i, salt) < validation_fraction for i in train.ids], dtype=bool)
    if is_val.all() or not is_val.any():
        raise ValueError(f"table {train.name!r} is too small for a validation split")
    return train.take(~is_val), train.take(is_val)


def kfold_indices(
    n: int, k: int, seed: int = 0
) -> Iterator[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]]:
    """Yield (train_idx, test_idx) for k shuffled folds of ``n`` rows."""
    if not 2 <= k <= n:
        raise ValueError(f"k must be between 2 and the number of rows ({n}), got {k}")
    order = np.random.default_rng(seed).permutation(n)
    for fold in np.array_split(order, k):
        yield np.setdiff1d(order, fold, assume_unique=True), np.sort(fold)


def kfold(
    table: OutcomeTable, k: int, seed: int = 0
) -> Iterator[tuple[OutcomeTable, OutcomeTable]]:
    """Yield (train, test) tables for k shuffled folds."""
    for tr, te in kfold_indices(table.n_prompts, k, seed):
        yield table.take(tr), table.take(te)


def train_test(table: OutcomeTable) -> tuple[OutcomeTable, OutcomeTable]:
    """The table's own train and test split; a clear error when one side is empty."""
    train, test = table.split("train"), table.split("test")
    if not len(train) or not len(test):
        raise ValueError(
            f"table {table.name!r} has {len(train)} train and {len(test)} test rows; "
            "both are needed (relabel with hash_split)"
        )
    return train, test
