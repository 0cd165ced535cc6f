"""The encoder interface: request text → feature vectors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Self

from llmdispatch.features.hashing import SparseRow
from llmdispatch.query import Query
from llmdispatch.types import Features


class Encoder(ABC):
    """Turns prompts into feature rows. Constructors only store parameters.

    ``fit`` learns what it needs from training prompts (a vocabulary, IDF weights) and returns
    ``self``; ``encode`` maps any prompts to features. Encoders that learn nothing still
    accept ``fit``. ``key`` identifies the fitted encoder for the on-disk encoding cache.

    ``sparse_output`` says whether ``encode`` returns a CSR matrix (else a dense array), so
    an estimator that needs dense input can check before fitting. ``encode_queries`` is what a
    policy calls with full requests; encoders that look beyond the text (turns, attached
    images) override it, the others encode ``query.text``.
    """

    registry_kind: ClassVar[str]
    registry_name: ClassVar[str]
    sparse_output: ClassVar[bool] = False

    def fit(self, texts: Sequence[str]) -> Self:
        """Learn from training prompts; the default learns nothing."""
        return self

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> Features:
        """Feature rows for these prompts, one per text."""

    def encode_queries(self, queries: Sequence[Query]) -> Features:
        """Feature rows for full requests; the default encodes each ``query.text``."""
        return self.encode([q.text for q in queries])

    def encode_query_row(self, query: Query) -> SparseRow | None:
        """One request's sparse row as sorted ``(columns, values)``, equal to
        ``encode_queries([query])``, for the live path; ``None`` when the encoder has no such
        path (dense encoders, or ones that look beyond the text without overriding this)."""
        return None

    @property
    @abstractmethod
    def key(self) -> str:
        """A stable identifier of this fitted encoder (for caching encodings)."""

    @abstractmethod
    def get_state(self) -> dict[str, Any]:
        """Fitted state for :mod:`llmdispatch.artifacts`."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
