"""Helpers shared by the quality estimators: inputs, masks, splits, projections, state.

Scores are read from the table as a value matrix ``Y`` (unknown cells filled with 0) and a
mask ``M`` of known cells; every loss and every average in the estimators weighs cells by
``M``, so an unknown score is never treated as a 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from llmdispatch.data.table import OutcomeTable
from llmdispatch.features._util import l2_normalize_csr
from llmdispatch.types import Features, FloatMatrix, FloatVector, IntVector

Dense32 = npt.NDArray[np.float32]


# ---- inputs ------------------------------------------------------------------------------
def check_features(X: Any, n_rows: int | None = None, name: str = "X") -> Features:
    """``X`` as a finite 2-D dense array or CSR matrix; ``n_rows`` checks alignment."""
    if sp.issparse(X):
        out: Features = sp.csr_matrix(X)
        values = out.data
    else:
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_queries, n_features), got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
        out = arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64)
        values = out
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if n_rows is not None and out.shape[0] != n_rows:
        raise ValueError(f"{name} has {out.shape[0]} rows but the table has {n_rows} prompts")
    if out.shape[1] == 0:
        raise ValueError(f"{name} has no feature columns")
    return out


def check_n_features(X: Features, expected: int, name: str = "X") -> None:
    """A clear error when query features do not match the training width."""
    if X.shape[1] != expected:
        raise ValueError(
            f"{name} has {X.shape[1]} features but the estimator was fitted with {expected} "
            "(same encoder?)"
        )


def as_dense(X: Any) -> npt.NDArray[Any]:
    """A dense array from a dense array or a sparse matrix."""
    return np.asarray(X.toarray() if sp.issparse(X) else X)


def l2_normalize(X: Features) -> Features:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32; sparse stays CSR."""
    if sp.issparse(X):
        return l2_normalize_csr(sp.csr_matrix(X, dtype=np.float32, copy=True))
    arr = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.divide(arr, norms, out=np.zeros_like(arr), where=norms > 0)


@dataclass(frozen=True)
class Scores:
    """Scores of a table as values ``Y`` (unknown → 0) and mask ``M`` (known → True)."""

    Y: FloatMatrix
    M: npt.NDArray[np.bool_]
    models: tuple[str, ...]

    @property
    def prior(self) -> FloatVector:
        """Per-model mean over known scores."""
        return np.asarray(
            (self.Y * self.M).sum(axis=0) / np.maximum(self.M.sum(axis=0), 1), dtype=np.float64
        )

    @property
    def binary(self) -> bool:
        """True when every known score is exactly 0 or 1."""
        known = self.Y[self.M]
        return bool(np.all((known == 0.0) | (known == 1.0)))

    def rows(self, idx: IntVector) -> Scores:
        """The same scores for a subset of rows."""
        return Scores(self.Y[idx], self.M[idx], self.models)


def table_scores(table: OutcomeTable) -> Scores:
    """Validated scores of a training table: in [0, 1], every model known somewhere."""
    if table.n_prompts < 2 or table.n_models < 1:
        raise ValueError(
            f"table {table.name!r} has {table.n_prompts} prompts and {table.n_models} models; "
            "at least 2 prompts and 1 model are needed to fit"
        )
    raw = np.asarray(table.score, dtype=np.float64)
    M = ~np.isnan(raw)
    known = raw[M]
    if known.size and (known.min() < 0.0 or known.max() > 1.0):
        raise ValueError(
            f"table {table.name!r}: scores must lie in [0, 1], found "
            f"[{known.min():.3g}, {known.max():.3g}]"
        )
    empty = [m for m, c in zip(table.models, M.sum(axis=0), strict=True) if c == 0]
    if empty:
        raise ValueError(f"table {table.name!r}: no known score for model(s) {empty}")
    return Scores(np.where(M, raw, 0.0), M, tuple(table.models))


def masked_mse(Q: FloatMatrix, scores: Scores) -> float:
    """Mean squared error of predictions over the known cells only."""
    n = int(scores.M.sum())
    if n == 0:
        return float("nan")
    return float((((Q - scores.Y) ** 2) * scores.M).sum() / n)


def validation_rows(n: int, fraction: float, seed: int) -> tuple[IntVector, IntVector]:
    """Deterministic (fit, validation) row indices; both sides non-empty."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction}")
    n_val = min(max(1, round(n * fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def take_rows(X: Features, idx: IntVector) -> Features:
    """Rows of dense or CSR features."""
    return X[idx]


# ---- parameter validation -------------------------------------------------------------
def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive (or non-negative) number."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")


def check_int(name: str, value: Any, low: int) -> int:
    """Raise ``ValueError`` unless ``value`` is an int ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_grid(name: str, values: Sequence[float], *, integer: bool = False) -> list[float]:
    """A non-empty grid of positive numbers (integers when ``integer``)."""
    grid = list(values)
    if not grid:
        raise ValueError(f"{name} must not be empty")
    for v in grid:
        if integer:
            check_int(f"{name} entry", v, 1)
        else:
            check_positive(f"{name} entry", v)
    return grid


def check_fraction(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``0 < value < 1``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


# ---- numerics --------------------------------------------------------------------------
def sigmoid(z: FloatMatrix) -> FloatMatrix:
    """Logistic function, numerically stable."""
    out: FloatMatrix = np.empty_like(z, dtype=np.float64)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def log_loss_soft(z: FloatMatrix, y: FloatMatrix, w: FloatMatrix) -> tuple[float, FloatMatrix]:
    """Weighted cross-entropy of logits ``z`` against soft targets ``y``, and d/dz."""
    # -[y log σ(z) + (1-y) log(1-σ(z))] = softplus(z) - y z
    loss = (np.logaddexp(0.0, z) - y * z) * w
    grad = (sigmoid(z) - y) * w
    return float(loss.sum()), grad


# ---- state -----------------------------------------------------------------------------
def features_state(X: Features) -> dict[str, Any]:
    """Dense or CSR features as a JSON + arrays node."""
    if sp.issparse(X):
        C = sp.csr_matrix(X)
        return {
            "format": "csr",
            "data": C.data,
            "indices": C.indices,
            "indptr": C.indptr,
            "shape": [int(s) for s in C.shape],
        }
    return {"format": "dense", "array": np.asarray(X)}


def features_from_state(node: dict[str, Any]) -> Features:
    """Inverse of :func:`features_state`."""
    if node["format"] == "csr":
        return sp.csr_matrix(
            (node["data"], node["indices"], node["indptr"]), shape=tuple(node["shape"])
        )
    if node["format"] == "dense":
        return np.asarray(node["array"])
    raise ValueError(f"unknown features format {node['format']!r} in state")


def as_float_array(value: Any) -> FloatMatrix:
    """A state array as float64."""
    return np.asarray(value, dtype=np.float64)
