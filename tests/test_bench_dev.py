"""benchmarks/bench_dev.py: routers compared on held-out parts of train, never on test."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from llmdispatch.data import load_table

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_dev.py"


def test_script_compares_on_train_cuts_only(
    tmp_path: Path, shared_data: Callable[[str], Path]
) -> None:
    folder = shared_data("arena-hard-v1")  # skips when the shared data are absent
    cmd = [sys.executable, str(SCRIPT), "--data", "arena-hard-v1", "--salts", "a", "b"]
    cmd += ["--routers", "router-knn-tfidf", "router-bradley-terry"]
    cmd += ["--variant", "knn-k3", "router-knn-tfidf", "estimator_params={k: 3}"]
    run = [*cmd, "--out", str(tmp_path), "--jobs", "2"]
    subprocess.run(run, check=True, capture_output=True, timeout=600)
    cuts = json.loads((tmp_path / "dev" / "dev.json").read_text())
    one = tmp_path / "one-job"
    subprocess.run([*cmd, "--out", str(one)], check=True, capture_output=True, timeout=600)
    assert json.loads((one / "dev" / "dev.json").read_text()) == cuts  # same cuts, same order
    train = load_table(folder).split("train").n_prompts
    assert [c["salt"] for c in cuts] == ["a", "b"]
    for cut in cuts:  # the cut's three parts are the train split, nothing more
        assert cut["dev_prompts"] + sum(cut["prompts"].values()) == train
        assert set(cut["aiq"]) == {"router-knn-tfidf", "router-bradley-terry", "knn-k3"}
        assert all(0 < v <= 1 for v in cut["aiq"].values()) and 0 < cut["zero"] <= 1
    assert cuts[0]["dev_prompts"] != cuts[1]["dev_prompts"]  # two different cuts
    report = (tmp_path / "dev" / "dev.md").read_text()
    # Without the kNN baseline in the run there is nothing to subtract: dashes, not numbers.
    assert "| arena-hard-v1 | a |" in report and "| — | — | — | — |" in report
    assert "| knn-k3 |" in report
    # The variant is the kNN with k = 3: a different router from the default k.
    assert any(c["aiq"]["knn-k3"] != c["aiq"]["router-knn-tfidf"] for c in cuts)


def test_script_rejects_unknown_routers_and_bad_fractions(tmp_path: Path) -> None:
    for extra, message in (
        (["--routers", "router-nope"], "unknown benchmark-policy 'router-nope'"),
        (["--dev-fraction", "1.5"], "--dev-fraction must lie between 0 and 1"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--variant", "v", "router-nope", "k=1"], "'router-nope' is not a benchmark router"),
        (["--variant", "v", "router-knn"], "--variant needs NAME BASE KEY=VALUE"),
        (["--variant", "v", "router-knn", "weight_folds"], "'weight_folds' is not KEY=VALUE"),
        (["--variant", "v", "router-stack", "weight_folds=1"], "weight_folds must be 0"),
        (["--variant", "v", "router-knn", "nope=1"], "unexpected keyword argument 'nope'"),
        (["--variant", "router-knn", "router-knn", "lam=1"], "router names must be distinct"),
    ):
        done = subprocess.run(
            [sys.executable, str(SCRIPT), *extra, "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and message in done.stderr


def test_report_sums_up_every_cut_against_the_knn() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_dev", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cuts = [
        {
            "dataset": d,
            "salt": s,
            "dev_prompts": 10,
            "zero": 0.5,
            "aiq": {"router-knn": 0.6, "x": x},
        }
        for d, s, x in (("a", "dev", 0.62), ("a", "dev2", 0.59), ("b", "dev", 0.63))
    ]
    report = module.markdown(cuts, ["router-knn", "x"], 0.35)
    assert "| a | dev2 | 10 | -0.1000 | -0.0100 |" in report
    assert "| all cuts | mean | | -0.1000 | +0.0133 |" in report
    assert "| all cuts | above kNN | | 0/3 | 2/3 |" in report
