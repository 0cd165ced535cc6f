"""Distil a static token-embedding table from a sentence-transformers model (Model2Vec).

References
----------
Tulkens & van Dongen, "Model2Vec: fast state-of-the-art static embeddings" (MinishLab,
2024), ``model2vec.distill``. For every token ``t`` of the model's vocabulary:

1. ``u_t`` = mean of the transformer's output over ``[CLS] t [SEP]``;
2. PCA of ``{u_t}`` to ``dims`` dimensions (centred, no whitening);
3. SIF weighting with Zipf frequencies estimated from the vocabulary rank ``r`` (WordPiece
   vocabularies are roughly frequency-ordered): ``p_r ∝ 1 / (r + 1)``,
   ``v_t = a / (a + p_r) · PCA(u_t)`` with ``a = 1e-4``.

Adapted: written here (the same steps as ``model2vec.distill_from_model``) so that it runs
offline from the bundled MiniLM without ``model2vec``'s extra dependencies, can keep only the
``vocab_size`` most frequent tokens (fast tests), and writes a safe format (``.npz`` +
``tokenizer.json`` + ``meta.json``) atomically into the user's cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from llmdispatch.features._util import digest, require_extra
from llmdispatch.features.minilm import DEFAULT_MODEL, model_fingerprint, resolve_model
from llmdispatch.features.static import (
    DEFAULT_NAME,
    META_FILE,
    TABLE_FILE,
    TOKENIZER_FILE,
    static_model_dir,
)

_SPECIAL = re.compile(r"^\[(unused\d+|PAD|UNK|CLS|SEP|MASK)\]$")


def vocabulary_ids(tokenizer_file: Path, vocab_size: int | None) -> npt.NDArray[np.int64]:
    """Ids of the tokens to distil: all but special ones, most frequent first (id order)."""
    vocab: dict[str, int] = json.loads(tokenizer_file.read_text(encoding="utf-8"))["model"]["vocab"]
    ids = np.array(sorted(i for tok, i in vocab.items() if not _SPECIAL.match(tok)), np.int64)
    return ids if vocab_size is None else ids[:vocab_size]


def zipf_sif_weights(n: int, sif: float) -> npt.NDArray[np.float64]:
    """``a / (a + p_r)`` with ``p_r ∝ 1 / (r + 1)`` for ranks ``r = 1..n`` (Model2Vec)."""
    inv_rank = 1.0 / np.arange(2, n + 2, dtype=np.float64)
    weights: npt.NDArray[np.float64] = sif / (sif + inv_rank / inv_rank.sum())
    return weights


def token_embeddings(
    model_dir: Path, ids: npt.NDArray[np.int64], batch_size: int = 1024
) -> npt.NDArray[np.float32]:
    """Mean transformer output over ``[CLS] t [SEP]`` for each token id ``t`` (torch)."""
    require_extra("transformers", "static")
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    out = np.empty((len(ids), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            batch = torch.as_tensor(ids[start : start + batch_size])
            cls = torch.full_like(batch, tok.cls_token_id)
            sep = torch.full_like(batch, tok.sep_token_id)
            input_ids = torch.stack([cls, batch, sep], dim=1)
            hidden = model(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            out[start : start + len(batch)] = hidden.mean(dim=1).float().numpy()
    return out


def pca(X: npt.NDArray[np.float32], dims: int) -> npt.NDArray[np.float64]:
    """Centred PCA by eigen-decomposition of the covariance (deterministic sign)."""
    Xc = X.astype(np.float64) - X.mean(axis=0)
    eigvals, eigvecs = np.linalg.eigh(Xc.T @ Xc / max(1, len(X) - 1))
    top = eigvecs[:, np.argsort(eigvals)[::-1][: min(dims, X.shape[1])]]
    top *= np.sign(top[np.argmax(np.abs(top), axis=0), np.arange(top.shape[1])])
    projected: npt.NDArray[np.float64] = Xc @ top
    return projected


def distill_static(
    out: Path | None = None,
    *,
    model: str = DEFAULT_MODEL,
    name: str = DEFAULT_NAME,
    dims: int = 256,
    vocab_size: int | None = None,
    sif: float = 1e-4,
) -> Path:
    """Distil ``model`` into a static table at ``out`` (default: the cache); returns the folder.

    Offline: ``model`` must resolve to a local folder (the bundled MiniLM by default).
    """
    started = time.perf_counter()
    source = resolve_model(model)
    if isinstance(source, str) or not (source / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"{model!r}: need a local model folder with {TOKENIZER_FILE}")
    if dims < 1 or not 0 < sif < 1 or (vocab_size is not None and vocab_size < 2):
        raise ValueError("need dims >= 1, 0 < sif < 1 and vocab_size >= 2 (or None)")
    ids = vocabulary_ids(source / TOKENIZER_FILE, vocab_size)
    reduced = pca(token_embeddings(source, ids), dims)
    reduced *= zipf_sif_weights(len(ids), sif)[:, None]
    n_vocab = int(ids.max()) + 1
    vocab_total = len(json.loads((source / TOKENIZER_FILE).read_text("utf-8"))["model"]["vocab"])
    vectors = np.zeros((max(n_vocab, vocab_total), reduced.shape[1]), dtype=np.float32)
    vectors[ids] = reduced
    kept = np.zeros(len(vectors), dtype=bool)
    kept[ids] = True
    meta: dict[str, Any] = {
        "format": 1,
        "name": name,
        "source_model": model,
        "source_fingerprint": model_fingerprint(model),
        "method": "model2vec-style: mean over [CLS] t [SEP], PCA, Zipf-SIF",
        "dims": int(reduced.shape[1]),
        "tokens": len(ids),
        "sif": sif,
        "digest": digest(vectors, kept),
        "seconds": round(time.perf_counter() - started, 1),
    }
    target = out if out is not None else static_model_dir(name)
    _write_folder(target, vectors, kept, source / TOKENIZER_FILE, meta)
    return target


def _write_folder(
    target: Path,
    vectors: npt.NDArray[np.float32],
    kept: npt.NDArray[np.bool_],
    tokenizer_file: Path,
    meta: dict[str, Any],
) -> None:
    """Write the model into a temporary sibling folder, then swap it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        np.savez(tmp / TABLE_FILE, vectors=vectors, kept=kept)
        shutil.copyfile(tokenizer_file, tmp / TOKENIZER_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}-old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
