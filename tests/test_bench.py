"""`bench` on the real shared data: references checked against a direct computation."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from llmdispatch.cli import main
from llmdispatch.evaluation.bench import bench_dataset
from llmdispatch.evaluation.suites import benchmark_entries

SETS = ["cascades9", "routerbench-subset", "llmrouter-dc", "arena-hard-v1", "alpaca-eval"]


def direct(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Test-split score and cost matrices straight from the gz JSONL (no package code)."""
    with gzip.open(folder / "outcomes.jsonl.gz", "rt") as fh:
        records = [json.loads(line) for line in fh]
    test = [r for r in records if r["split"] == "test"]
    models = sorted({m for r in records for m in r["outcomes"]})
    score = np.full((len(test), len(models)), np.nan)
    cost = np.full((len(test), len(models)), np.nan)
    for i, r in enumerate(test):
        for j, m in enumerate(models):
            o = r["outcomes"].get(m, {})
            score[i, j] = o.get("score", np.nan)
            cost[i, j] = o.get("cost_usd", np.nan)
    return models, score, cost


def brute_frontier(c: np.ndarray, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Best quality reachable at each cost by one point or a random mix of two."""
    out = np.full(len(x), -np.inf)
    for i in range(len(c)):
        out = np.where(c[i] <= x, np.maximum(out, q[i]), out)
        for j in range(len(c)):
            if c[i] < c[j]:
                t = (x - c[i]) / (c[j] - c[i])
                mix = q[i] + t * (q[j] - q[i])
                out = np.where((t >= 0) & (t <= 1), np.maximum(out, mix), out)
    return out


@pytest.mark.parametrize("name", SETS)
def test_references_match_direct_computation(name: str, shared_data: Callable[[str], Path]) -> None:
    folder = shared_data(name)
    models, score, cost = direct(folder)
    entries = benchmark_entries(["zero-router", "oracle"])
    result = bench_dataset(folder, entries, bootstrap=20)
    order = [result.models.index(m) for m in models]
    q_means = np.nanmean(score, axis=0)
    c_means = np.nanmean(cost, axis=0)
    np.testing.assert_allclose(result.refs.quality[order], q_means, rtol=1e-9)
    np.testing.assert_allclose(result.refs.cost[order], c_means, rtol=1e-9)
    # Zero router AIQ: brute-force frontier of the single models, integrated finely.
    x = np.linspace(c_means.min(), c_means.max(), 20001)
    y = brute_frontier(c_means, q_means, x)
    aiq = float(np.trapezoid(y, x) / (x[-1] - x[0]))
    assert result.zero["aiq"] == pytest.approx(aiq, abs=1e-6)
    # The oracle point: per prompt the cheapest model with the best score.
    oracle = next(p for p in result.policies if p.name == "oracle")
    assert oracle.run is not None
    best = np.nanmax(score, axis=1)
    cheapest_best = np.where(score == best[:, None], cost, np.inf).min(axis=1)
    assert oracle.run.mean_quality[0] == pytest.approx(best.mean())
    assert oracle.run.mean_cost[0] == pytest.approx(cheapest_best.mean())
    # Oracle AIQ from its own frontier, anchored at the cheapest model (module convention).
    j = int(np.argmin(c_means))
    oc = np.append(oracle.run.mean_cost, c_means[j])
    oq = np.append(oracle.run.mean_quality, q_means[j])
    y = brute_frontier(oc, oq, x)
    assert oracle.metrics["aiq"] == pytest.approx(
        float(np.trapezoid(y, x) / (x[-1] - x[0])), abs=1e-4
    )
    zero = next(p for p in result.policies if p.name == "zero-router")
    assert zero.metrics["aiq"] <= result.zero["aiq"] + 0.02


def test_bench_command_writes_report_json_and_plot(
    tmp_path: Path, shared_data: Callable[[str], Path]
) -> None:
    folder = shared_data("arena-hard-v1")
    out = tmp_path / "out"
    rc = main(
        [
            "bench",
            str(folder),
            "--policies",
            "zero-router",
            "random",
            "oracle",
            "router-knn",
            "--bootstrap",
            "30",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "## arena-hard-v1" in report and "router-knn" in report and "AIQ(log)" in report
    # The summary: the only router is the kNN baseline itself, so it cannot beat it.
    assert "| arena-hard-v1 | router | router-knn |" in report and "| is kNN |" in report
    assert "The best router beats the zero router on " in report and "of 1 data sets" in report
    assert "interval against the tuned kNN lies above zero" in report
    assert "arena-hard-v1: none." in report
    doc = json.loads((out / "results.json").read_text())
    knn = next(p for p in doc[0]["policies"] if p["name"] == "router-knn")
    assert len(knn["curve"]["cost"]) == len(knn["curve"]["quality"]) > 10
    assert knn["ci"]["aiq"][0] <= knn["metrics"]["aiq"] <= knn["ci"]["aiq"][1]
    png = out / "arena-hard-v1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_bench_errors_are_clear(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "no-such-set", "--out", "/tmp/unused"]) == 2
    assert "no data set 'no-such-set'" in capsys.readouterr().err
    assert main(["bench", "--policies", "nope"]) == 2
    assert "unknown benchmark-policy 'nope'" in capsys.readouterr().err


def test_summary_lists_every_router_above_the_knn() -> None:
    """Not only the best router by AIQ: every router whose interval against the kNN lies
    above zero, best first; a set where none does says so."""
    from types import SimpleNamespace

    from llmdispatch.evaluation.bench import PolicyResult
    from llmdispatch.evaluation.report import summary_markdown

    def router(name: str, aiq: float, d_knn: float, ci: tuple[float, float]) -> PolicyResult:
        return PolicyResult(
            name,
            "router",
            run=object(),  # type: ignore[arg-type]
            metrics={"aiq": aiq, "d_aiq_knn": d_knn, "d_aiq_zero": 0.02},
            ci={"d_aiq_knn": ci, "d_aiq_zero": (0.01, 0.03)},
        )

    sets = [
        SimpleNamespace(
            name="a",
            policies=[
                router("router-embedllm", 0.810, 0.005, (-0.001, 0.011)),
                router("router-stack", 0.809, 0.004, (0.001, 0.009)),
                router("router-mlp", 0.808, 0.003, (0.0004, 0.006)),
            ],
        ),
        SimpleNamespace(name="b", policies=[router("router-mf", 0.7, -0.01, (-0.02, 0.0))]),
    ]
    text = "\n".join(summary_markdown(sets))  # type: ignore[arg-type]
    assert "the tuned kNN router on 0 of 2" in text  # the best by AIQ ties on a
    assert "a: router-stack 0.004 [0.001, 0.009], router-mlp 0.003 [0.000, 0.006]; b: none." in text


def test_bench_judges_a_users_own_configs_beside_the_references(
    tmp_path: Path, shared_data: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = shared_data("arena-hard-v1")
    eagle = tmp_path / "my-eagle.yaml"
    eagle.write_text(f"data: {folder}\nout: unused\nestimator: eagle\n")
    knn = tmp_path / "my-knn.yaml"
    knn.write_text(
        f"data: {folder}\nout: unused\nestimator: knn\nestimator_params: {{k: 20}}\n"
        "validation_fraction: 0.3\n"
    )
    out = tmp_path / "out"
    # No data set named: the configs' one; no --policies: the references and the kNN baseline.
    rc = main(["bench", "--config", str(eagle), str(knn), "--bootstrap", "30", "--out", str(out)])
    assert rc == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "my-knn.yaml: validation_fraction 0.3 is not used here" in err
    doc = json.loads((out / "results.json").read_text())
    assert [d["dataset"] for d in doc] == ["arena-hard-v1"]
    names = [p["name"] for p in doc[0]["policies"]]
    assert names[:3] == ["zero-router", "random", "oracle"]
    assert names[3] in ("router-knn", "router-knn-tfidf")
    assert names[4:] == ["my-eagle", "my-knn"]
    mine = {p["name"]: p for p in doc[0]["policies"] if p["name"].startswith("my-")}
    for p in mine.values():
        assert p["family"] == "router" and p["error"] is None and p["metrics"]["aiq"] > 0.5
    report = (out / "report.md").read_text()
    assert "| my-eagle |" in report and "| my-knn |" in report

    # Any registered policy can be a config; it is reported in its family.
    frugal = tmp_path / "my-frugal.yaml"
    frugal.write_text(
        f"data: {folder}\nout: unused\npolicy: frugalgpt\n"
        "params: {signal: frugalgpt-scorer, n_budgets: 5}\n"
    )
    assert (
        main(
            [
                "bench",
                "--config",
                str(frugal),
                "--policies",
                "zero-router",
                "--bootstrap",
                "30",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    doc = json.loads((out / "results.json").read_text())
    assert [(p["name"], p["family"]) for p in doc[0]["policies"]] == [
        ("zero-router", "reference"),
        ("my-frugal", "cascade"),
    ]
    assert doc[0]["policies"][1]["error"] is None

    # Bad configs fail before anything runs, naming the file.
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data: {folder}\nout: unused\nestimator: nosuch\n")
    assert main(["bench", "--config", str(bad), "--out", str(out)]) == 2
    assert "unknown estimator 'nosuch'" in capsys.readouterr().err
    one = tmp_path / "one.yaml"
    one.write_text(f"data: {folder}\nout: unused\nmodels: [gpt-4, claude-2]\n")
    assert main(["bench", "--config", str(one), str(eagle), "--out", str(out)]) == 2
    assert "the configs keep different models" in capsys.readouterr().err
    named = tmp_path / "oracle.yaml"
    named.write_text(f"data: {folder}\nout: unused\n")
    assert main(["bench", "--config", str(named), "--out", str(out)]) == 2
    assert "two policies are named 'oracle'" in capsys.readouterr().err
