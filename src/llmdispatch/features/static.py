"""``static``: a token-embedding table distilled from MiniLM; numpy-only inference.

References
----------
Tulkens & van Dongen, "Model2Vec: fast state-of-the-art static embeddings" (MinishLab, 2024).
A sentence is the mean of its tokens' static vectors, then L2-normalised:
``e(x) = Σ_t v_t / ‖Σ_t v_t‖`` over the WordPiece tokens ``t`` of ``x``, where each ``v_t``
was computed once, offline, by :func:`llmdispatch.features.distill.distill_static`.

Adapted: the table and tokenizer are read from the user's cache (produced by
``llmdispatch encoders distill``, never committed), tokens missing from a reduced table are
skipped, and pooling is one sparse-times-dense product per batch. Inference imports numpy,
scipy and the ``tokenizers`` library only — no torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from llmdispatch.features._util import check_texts, l2_normalize_dense, require_extra
from llmdispatch.features.base import Encoder
from llmdispatch.features.cache import cache_root
from llmdispatch.registry import register

DEFAULT_NAME = "minilm-static"
TABLE_FILE = "table.npz"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
DISTILL_COMMAND = "llmdispatch encoders distill"


def static_model_dir(name: str = DEFAULT_NAME) -> Path:
    """Where ``llmdispatch encoders distill`` puts the model called ``name``."""
    return cache_root() / "encoders" / name


class StaticModel:
    """A loaded table: ``vectors[V, d]`` float32, ``kept[V]`` bool, and a tokenizer."""

    def __init__(self, folder: Path) -> None:
        require_extra("tokenizers", "static")
        from tokenizers import Tokenizer

        missing = [f for f in (TABLE_FILE, TOKENIZER_FILE, META_FILE) if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"no distilled static encoder in {folder} (missing {', '.join(missing)}); "
                f"create it with: {DISTILL_COMMAND}"
            )
        self.meta: dict[str, Any] = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        with np.load(folder / TABLE_FILE, allow_pickle=False) as npz:
            self.vectors: npt.NDArray[np.float32] = np.ascontiguousarray(npz["vectors"], np.float32)
            self.kept: npt.NDArray[np.bool_] = npz["kept"].astype(bool)
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.tokenizer.no_padding()

    @property
    def digest(self) -> str:
        """The digest of the table recorded at distillation."""
        return str(self.meta["digest"])

    def embed(self, texts: list[str], max_length: int | None) -> npt.NDArray[np.float32]:
        """Unit rows: the normalised sum of each text's kept token vectors."""
        tok = self.tokenizer
        if max_length:
            tok.enable_truncation(max_length)
        else:
            tok.no_truncation()
        encodings = tok.encode_batch(texts, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        ids = np.fromiter(
            (i for e in encodings for i in e.ids), dtype=np.int64, count=int(lengths.sum())
        )
        rows = np.repeat(np.arange(len(texts)), lengths)
        keep = self.kept[ids]
        ids, rows = ids[keep], rows[keep]
        counts = sp.csr_matrix(
            (np.ones(len(ids), dtype=np.float32), (rows, ids)),
            shape=(len(texts), len(self.vectors)),
        )
        return l2_normalize_dense(np.asarray(counts @ self.vectors))


_LOADED: dict[Path, tuple[tuple[int, int], StaticModel]] = {}


def load_static_model(folder: Path) -> StaticModel:
    """The table in ``folder``, loaded once per process (again if it was re-distilled)."""
    folder = folder.expanduser().resolve()
    try:
        st = (folder / META_FILE).stat()
        stamp = (st.st_mtime_ns, st.st_ino)
    except FileNotFoundError:
        stamp = (0, 0)
    cached = _LOADED.get(folder)
    if cached is None or cached[0] != stamp:
        _LOADED[folder] = cached = (stamp, StaticModel(folder))
    return cached[1]


@register("encoder", "static")
class StaticEncoder(Encoder):
    """Mean of distilled MiniLM token vectors; float32 unit rows, no torch at inference.

    Parameters
    ----------
    name : the distilled model's name in the cache (``<cache root>/encoders/<name>``).
    path : an explicit model folder instead (e.g. ``encoders distill --out DIR``).
    max_length : tokens per text considered (``None``: all).

    Examples
    --------
    >>> enc = StaticEncoder()  # needs `llmdispatch encoders distill` first  # doctest: +SKIP
    >>> enc.encode(["What is 2 + 2?"]).shape    # doctest: +SKIP
    (1, 256)
    """

    def __init__(
        self, name: str = DEFAULT_NAME, path: str | None = None, max_length: int | None = 512
    ) -> None:
        self.name = name
        self.path = path
        self.max_length = max_length

    def folder(self) -> Path:
        """The model folder this encoder reads."""
        return Path(self.path) if self.path else static_model_dir(self.name)

    def model(self) -> StaticModel:
        """The loaded table (a clear error says how to create it if it is missing)."""
        return load_static_model(self.folder())

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """``(n, d)`` float32 unit rows (zero rows for texts with no known token)."""
        return self.model().embed(check_texts(texts), self.max_length)

    @property
    def key(self) -> str:
        """``static:<name>:<table digest>:<max_length>``."""
        return f"static:{self.name}:{self.model().digest}:{self.max_length}"

    def get_state(self) -> dict[str, Any]:
        """Name, explicit path, length limit and the table digest (the table stays cached)."""
        return {
            "name": self.name,
            "path": self.path,
            "max_length": self.max_length,
            "digest": self.model().digest,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild and check that the cached table is the one the state was saved with."""
        enc = cls(state["name"], state.get("path"), state.get("max_length"))
        found = enc.model().digest
        if found != state["digest"]:
            raise ValueError(
                f"static encoder {enc.name!r} in {enc.folder()} has table {found}, but this "
                f"artifact was trained with {state['digest']}; restore that table or retrain"
            )
        return enc
