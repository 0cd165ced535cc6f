"""`llmdispatch data info/list` on every shared data set, checked against the raw JSONL; leaks."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmdispatch.cli import build_parser, main
from llmdispatch.cli import data as data_cli
from llmdispatch.data import load_table
from llmdispatch.data.summary import drop_leaks, find_leaks, summarize_table

SETS = ["cascades9", "routerbench-subset", "llmrouter-dc", "arena-hard-v1", "alpaca-eval"]
#: Sets whose costs are estimates (the "cost" column of ../shared/data/README.md).
ESTIMATED_COSTS = {"llmrouter-dc", "arena-hard-v1", "alpaca-eval"}


def _records(folder: Path) -> list[dict[str, Any]]:
    with gzip.open(folder / "outcomes.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _expected(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's numbers, computed straight from the records."""
    models = sorted({m for r in records for m in r["outcomes"]})
    per_model = {}
    for m in models:
        outs = [r["outcomes"][m] for r in records if m in r["outcomes"]]
        scores = [o["score"] for o in outs if "score" in o]
        costs = [o["cost_usd"] for o in outs if "cost_usd" in o]
        per_model[m] = (np.mean(scores), np.mean(costs) if costs else None, len(scores))
    best = [
        max(o["score"] for o in r["outcomes"].values() if "score" in o)
        for r in records
        if any("score" in o for o in r["outcomes"].values())
    ]

    def text(r: dict[str, Any]) -> str:
        full = f"{r['system']}\n\n{r['prompt']}" if r.get("system") else r["prompt"]
        return " ".join(full.split()).casefold()

    train = {text(r) for r in records if r["split"] == "train"}
    leaks = Counter(
        r["dataset"].split("/")[0] for r in records if r["split"] == "test" and text(r) in train
    )
    splits = Counter((r["dataset"].split("/")[0], r["split"]) for r in records)
    return {"per_model": per_model, "oracle": np.mean(best), "leaks": leaks, "splits": splits}


@pytest.mark.parametrize("name", SETS)
def test_data_info_matches_a_direct_computation(
    name: str, shared_data: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = shared_data(name)
    assert main(["data", "info", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    records = _records(folder)
    want = _expected(records)
    assert info["prompts"] == len(records) and info["models"] == len(want["per_model"])
    got = {m["model"]: m for m in info["per_model"]}
    for model, (score, cost, n_scored) in want["per_model"].items():
        assert got[model]["mean_score"] == pytest.approx(score, abs=1e-12), model
        assert got[model]["coverage"] == pytest.approx(n_scored / len(records)), model
        if cost is None:
            assert got[model]["mean_cost"] is None
        else:
            assert got[model]["mean_cost"] == pytest.approx(cost, rel=1e-9), model
    assert info["oracle"] == pytest.approx(want["oracle"], abs=1e-12)
    eligible = {m: s for m, (s, _, n) in want["per_model"].items() if n >= 0.9 * len(records)}
    assert info["best_single"]["model"] == max(eligible, key=lambda m: eligible[m])
    assert info["leaked_test_prompts"] == sum(want["leaks"].values())
    for dataset, counts in info["per_dataset"].items():
        assert counts["train"] == want["splits"][(dataset, "train")], dataset
        assert counts["test"] == want["splits"][(dataset, "test")], dataset
        assert counts["leaked"] == want["leaks"][dataset], dataset
    assert info["load_seconds"] < 10
    assert info["costs_estimated"] == (name in ESTIMATED_COSTS), name

    # The printed (rich) summary shows the same numbers.
    assert main(["data", "info", name]) == 0
    out = capsys.readouterr().out
    assert f"oracle {want['oracle']:.4f}" in out
    for model, (score, _, _) in want["per_model"].items():
        assert re.search(rf"{re.escape(model[:20])}.*{score:.4f}", out), model
    assert f"test prompts whose text is also in train: {sum(want['leaks'].values())}" in out


def test_unknown_name_exits_2_and_lists_what_was_found(
    shared_datasets: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "info", "no-such-set"]) == 2
    err = capsys.readouterr().err
    assert "no data set 'no-such-set'" in err
    assert all(name in err for name in shared_datasets)


def test_data_list_counts_prompts(
    shared_datasets: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, folder in shared_datasets.items():
        row = next(line.split() for line in lines if line.startswith(f"{name} "))
        with gzip.open(folder / "outcomes.jsonl.gz", "rb") as fh:
            n = sum(1 for _ in fh)
        models = json.loads((folder / "models.json").read_text(encoding="utf-8"))
        assert row[1:4] == [str(n), str(len(models)), str(folder)], name


def test_data_list_without_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llmdispatch.data.locate.data_roots", lambda: [tmp_path])
    assert main(["data", "list"]) == 1


def test_actions_are_pluggable(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def add(sub: Any) -> None:
        sub.add_parser("probe").set_defaults(func=lambda args: seen.append("ran") or 0)

    monkeypatch.setattr(data_cli, "DATA_COMMANDS", list(data_cli.DATA_COMMANDS))
    data_cli.add_data_command(add)
    args = build_parser().parse_args(["data", "probe"])
    assert args.func(args) == 0 and seen == ["ran"]
    names = [a.__name__ for a in data_cli.DATA_COMMANDS]
    assert names[:3] == ["_add_info", "_add_list", "_add_export_log"]


def _table(tmp_path: Path, rows: list[tuple[str, str, str | None, str]]) -> Path:
    lines = [
        json.dumps(
            {
                "id": f"r{i}",
                "split": split,
                "prompt": prompt,
                "system": system,
                "dataset": dataset,
                "outcomes": {"m": {"score": i % 2}},
            }
        )
        for i, (split, prompt, system, dataset) in enumerate(rows)
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_leaks_on_a_synthetic_table(tmp_path: Path) -> None:
    rows = [
        ("train", "What is  the capital\nof France?", None, "qa"),
        ("train", "dup", None, "qa"),
        ("train", "dup", None, "qa"),  # duplicated within train: not a leak
        ("test", "  what is the CAPITAL of france? ", None, "qa"),  # leak (normalised match)
        ("test", "What is the capital of France", None, "qa"),  # no '?': different text
        ("test", "dup", "be brief", "qa"),  # other system prompt: different input
        ("test", "twice", None, "math"),
        ("test", "twice", None, "math"),  # duplicated within test: not a leak
        ("test", "DUP", None, "math"),  # leak
    ]
    table = load_table(_table(tmp_path, rows))
    assert find_leaks(table).tolist() == [3, 8]
    kept, n = drop_leaks(table)
    assert n == 2 and kept.ids.tolist() == ["r0", "r1", "r2", "r4", "r5", "r6", "r7"]
    assert len(find_leaks(kept)) == 0
    again, zero = drop_leaks(kept)
    assert zero == 0 and again is kept
    summary = summarize_table(table).to_dict()
    assert summary["leaked_test_prompts"] == 2
    assert summary["per_dataset"] == {
        "math": {"train": 0, "test": 3, "leaked": 1},
        "qa": {"train": 3, "test": 3, "leaked": 1},
    }
