"""``concat``: several encoders side by side, e.g. TF-IDF plus scalar features.

Each part's rows are multiplied by its weight and the blocks are joined column-wise; the
result is CSR when any part is sparse (so TF-IDF stays sparse) and dense otherwise, then
rows are L2-normalised (``normalize``). A part whose rows are not unit-norm (``scalar``) gets
the default weight ``1 / √width``, so its block's norm is at most about that of a unit block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Self, cast

import numpy as np
import scipy.sparse as sp

from llmdispatch.artifacts import Persistable, component_state, restore
from llmdispatch.features._util import check_texts, digest, l2_normalize_csr, l2_normalize_dense
from llmdispatch.features.base import Encoder
from llmdispatch.query import Query
from llmdispatch.registry import REGISTRY, register
from llmdispatch.types import Features


@register("encoder", "concat")
class ConcatEncoder(Encoder):
    """Concatenation of encoders (names or instances; instances are fitted in place).

    Examples
    --------
    >>> enc = ConcatEncoder(["tfidf", "scalar"]).fit(["what is 2 + 2?", "def f(x): return x"])
    >>> X = enc.encode(["what is 3 + 3?"])
    >>> X.format, X.shape[1] == (1 << 20) + 13
    ('csr', True)
    """

    def __init__(
        self,
        encoders: Sequence[Encoder | str] = ("tfidf", "scalar"),
        weights: Sequence[float] | None = None,
        normalize: bool = True,
    ) -> None:
        self.encoders = encoders
        self.weights = weights
        self.normalize = normalize

    @property
    def sparse_output(self) -> bool:  # type: ignore[override]
        """Whether any part is sparse (then the output is CSR)."""
        return any(p.sparse_output for p in self._parts())

    def _parts(self) -> list[Encoder]:
        if hasattr(self, "parts_"):
            return list(self.parts_)
        return [REGISTRY.get("encoder", e)() if isinstance(e, str) else e for e in self.encoders]

    def fit(self, texts: Sequence[str]) -> Self:
        """Fit every part on the same texts."""
        texts = check_texts(texts)
        if not self.encoders:
            raise ValueError("concat needs at least one encoder")
        if self.weights is not None and len(self.weights) != len(self.encoders):
            raise ValueError(f"{len(self.weights)} weights for {len(self.encoders)} encoders")
        self.parts_ = [part.fit(texts) for part in self._parts()]
        return self

    def encode(self, texts: Sequence[str]) -> Features:
        """Weighted blocks of every part for plain texts."""
        texts = check_texts(texts)
        return self._join(lambda part: part.encode(texts))

    def encode_queries(self, queries: Sequence[Query]) -> Features:
        """Weighted blocks of every part for full requests (``scalar`` sees turns, images)."""
        return self._join(lambda part: part.encode_queries(queries))

    def _join(self, run: Callable[[Encoder], Features]) -> Features:
        if not hasattr(self, "parts_"):
            raise RuntimeError("ConcatEncoder is not fitted; call fit(texts) first")
        blocks: list[Features] = []
        for i, part in enumerate(self.parts_):
            X = run(part)
            blocks.append(X * np.float32(self._weight(i, part, X.shape[1])))
        if any(sp.issparse(b) for b in blocks):
            out = sp.hstack([sp.csr_matrix(b, dtype=np.float32) for b in blocks], format="csr")
            return l2_normalize_csr(out) if self.normalize else out
        dense = np.hstack([np.asarray(b, dtype=np.float32) for b in blocks])
        return l2_normalize_dense(dense) if self.normalize else dense

    def _weight(self, i: int, part: Encoder, width: int) -> float:
        if self.weights is not None:
            return float(self.weights[i])
        return 1.0 if getattr(part, "unit_rows", True) else 1.0 / max(1.0, np.sqrt(width))

    @property
    def key(self) -> str:
        """``concat:<digest of the parts' keys, weights and normalize>``."""
        keys = [p.key for p in self._parts()]
        weights = None if self.weights is None else [float(w) for w in self.weights]
        return "concat:" + digest(keys, weights, self.normalize)

    def get_state(self) -> dict[str, Any]:
        """The parts' component states, the weights and ``normalize``."""
        if not hasattr(self, "parts_"):
            raise RuntimeError("ConcatEncoder is not fitted; call fit(texts) first")
        weights = None if self.weights is None else [float(w) for w in self.weights]
        parts = [component_state(cast(Persistable, p)) for p in self.parts_]
        return {"parts": parts, "weights": weights, "normalize": self.normalize}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild every part from its state."""
        parts = [restore(node) for node in state["parts"]]
        enc = cls(parts, state.get("weights"), bool(state.get("normalize", True)))
        enc.parts_ = parts
        return enc
