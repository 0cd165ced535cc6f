"""benchmarks/bench_crossfit.py: folds pooled back into one run; the script end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from llmdispatch.evaluation.replay import PolicyRun

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_crossfit.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_crossfit", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(rows: np.ndarray, knobs: list[float], called: float) -> PolicyRun:
    n = len(rows)
    quality = np.array([rows * 1.0 + k for k in knobs])  # value = prompt index + knob
    return PolicyRun(
        label="r",
        knob_name="lambda",
        knobs=np.array(knobs),
        quality=quality,
        cost=quality / 10,
        latency_ms=np.full((len(knobs), n), np.nan),
        called=np.full((len(knobs), 2), called),
        answered=np.full((len(knobs), 2), called),
        rungs=np.ones(len(knobs)),
        datasets=np.array([f"d{i}" for i in rows]),
        models=("a", "b"),
    )


def test_folds_pool_back_into_one_run_in_prompt_order() -> None:
    pooled = _module().pooled
    a, b = np.array([4, 0, 2]), np.array([1, 3])
    run = pooled([(a, _run(a, [0.0, 1.0], 0.2)), (b, _run(b, [0.0, 1.0], 0.7))], 5)
    np.testing.assert_array_equal(run.quality, [[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(run.datasets, ["d0", "d1", "d2", "d3", "d4"])
    np.testing.assert_allclose(run.called, np.full((2, 2), 0.6 * 0.2 + 0.4 * 0.7))
    with pytest.raises(ValueError, match="different knob values"):
        pooled([(a, _run(a, [0.0, 1.0], 0.2)), (b, _run(b, [0.0, 2.0], 0.7))], 5)


def test_script_judges_every_prompt_once(
    tmp_path: Path, shared_data: Callable[[str], Path]
) -> None:
    shared_data("arena-hard-v1")  # skips when the shared data are absent
    cmd = [sys.executable, str(SCRIPT), "--data", "arena-hard-v1", "--folds", "2"]
    cmd += ["--routers", "router-knn-tfidf", "router-bradley-terry", "--bootstrap", "50"]
    subprocess.run([*cmd, "--out", str(tmp_path)], check=True, capture_output=True, timeout=600)
    (result,) = json.loads((tmp_path / "crossfit" / "crossfit.json").read_text())
    assert result["prompts"] == 300 and result["folds"] == 2
    for row in result["routers"].values():
        lo, hi = row["d_zero_ci"]
        assert lo <= hi and 0 < row["aiq"] <= 1 and abs(row["d_zero"]) < 0.2
    report = (tmp_path / "crossfit" / "crossfit.md").read_text()
    assert "arena-hard-v1 (300 prompts, 2 folds)" in report and "router-bradley-terry" in report
