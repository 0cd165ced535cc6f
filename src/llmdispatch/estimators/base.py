"""The estimator interface: "how well would model m do on query x?"."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

import numpy as np

from llmdispatch.data.table import OutcomeTable
from llmdispatch.types import Features, FloatMatrix


class QualityEstimator(ABC):
    """Predicts ``Q[n, m]``: the expected quality in [0, 1] of each model on each query.

    scikit-learn conventions: the constructor only stores parameters, ``fit`` validates them
    and returns ``self``, learned state ends in ``_``. ``fit`` sees the training table (scores,
    costs, responses) and its prompts' features ``X`` (rows aligned with the table).
    """

    registry_kind: ClassVar[str]
    registry_name: ClassVar[str]
    models_: tuple[str, ...]

    @abstractmethod
    def fit(self, table: OutcomeTable, X: Features) -> Self:
        """Learn from a training table and its features."""

    @abstractmethod
    def predict(self, X: Features) -> FloatMatrix:
        """``Q[n, m]`` in the column order of ``models_``."""

    @abstractmethod
    def get_state(self) -> dict[str, Any]:
        """Fitted state for :mod:`llmdispatch.artifacts`."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""

    def warm(self) -> None:
        """Build what the first prediction would build lazily (an index, a cache), so a
        served estimator answers its first request at full speed. Default: nothing."""
        return None

    def _check_fitted(self) -> None:
        if not hasattr(self, "models_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")


def clip_quality(q: FloatMatrix) -> FloatMatrix:
    """Quality predictions clipped into [0, 1] as float64."""
    return np.clip(np.asarray(q, dtype=np.float64), 0.0, 1.0)
