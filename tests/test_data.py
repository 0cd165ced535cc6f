"""Loaders on real RouterBench CSVs and malformed inputs; `data info`; log export."""

from __future__ import annotations

import gzip
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from llmdispatch.cli import main
from llmdispatch.data import DataError, load_table
from llmdispatch.data.leaks import drop_leaks, find_leaks
from llmdispatch.data.routerbench import parse_prompt

SETS = ["cascades9", "routerbench-subset", "llmrouter-dc", "arena-hard-v1", "alpaca-eval"]


def test_list_string_prompts_are_parsed_without_running_code() -> None:
    assert parse_prompt("['What is 2+2?']") == "What is 2+2?"
    assert parse_prompt("['a', 'a']") == "a"
    assert parse_prompt("['a', 'b']") == "a\n\nb"
    evil = "[__import__('os').system('echo pwned')]"
    assert parse_prompt(evil) == evil  # not a literal: kept as text, never evaluated
    assert parse_prompt("plain [text]") == "plain [text]"


def test_routerbench_csvs_agree_with_the_common_format(
    shared_data: Callable[[str], Path],
) -> None:
    folder = shared_data("routerbench-subset")
    csv_table = load_table(folder / "csv")
    jsonl = load_table(folder)
    assert set(csv_table.models) == set(jsonl.models)
    assert set(csv_table.splits) == {"train", "test"}
    assert set(csv_table.datasets) >= {"mbpp"}
    assert any("repeated sample_id" in n for n in csv_table.report.notes)
    for m in jsonl.models:
        a = np.nanmean(csv_table.score[:, csv_table.model_index(m)])
        b = np.nanmean(jsonl.score[:, jsonl.model_index(m)])
        # The common format drops 14 single-model ARC rows (see the card): tiny differences.
        assert a == pytest.approx(b, abs=0.003), m
    one = load_table(folder / "csv" / "mbpp_test.csv")
    assert set(one.splits) == {"test"} and one.n_prompts > 100
    assert not str(one.prompts[0]).startswith("['")
    assert csv_table.card("gpt-4-1106-preview").price_in_per_mtok is not None


def test_pickle_needs_explicit_permission(tmp_path: Path) -> None:
    rows = [{"sample_id": "a", "prompt": "hi", "eval_name": "x", "m": 1.0, "m|total_cost": 0.1}]
    path = tmp_path / "t.pkl"
    path.write_bytes(pickle.dumps(rows))
    with pytest.raises(DataError, match="--allow-pickle"):
        load_table(path)
    table = load_table(path, allow_pickle=True)
    assert table.n_prompts == 1 and table.models == ("m",)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"bad\.jsonl:2"),
        (
            '{"id": "b", "prompt": "p", "outcomes": {"m": {"score": 1.5}}}',
            r"bad\.jsonl:2: field 'outcomes\.m\.score': score 1\.5 is outside \[0, 1\]",
        ),
        (
            '{"id": "b", "prompt": "p", "outcomes": {"m": {"score": "high"}}}',
            r"bad\.jsonl:2: field 'outcomes\.m\.score': expected a number",
        ),
        (
            '{"id": "a", "prompt": "p", "outcomes": {"m": {"score": 1}}}',
            r"bad\.jsonl:2: field 'id': duplicate id",
        ),
        ('{"id": "b", "outcomes": {"m": {"score": 1}}}', r"bad\.jsonl:2: field 'prompt'"),
        (
            '{"id": "b", "prompt": "p", "split": "dev", "outcomes": {}}',
            r"bad\.jsonl:2: field 'split'",
        ),
    ],
)
def test_malformed_lines_name_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    good = '{"id": "a", "prompt": "p", "outcomes": {"m": {"score": 1, "cost_usd": 0.1}}}'
    path = _write(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(DataError, match=message):
        load_table(path)


def test_model_with_no_rows_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "models.json").write_text(json.dumps({"m": {}, "ghost": {}}))
    _write(
        tmp_path / "outcomes.jsonl", ['{"id": "a", "prompt": "p", "outcomes": {"m": {"score": 1}}}']
    )
    with pytest.raises(DataError, match="no rows: ghost"):
        load_table(tmp_path)


def test_leaks_are_found_and_dropped(tmp_path: Path) -> None:
    lines = [
        '{"id": "a", "split": "train", "prompt": "Same  text", "outcomes": {"m": {"score": 1}}}',
        '{"id": "b", "split": "test", "prompt": "same text", "outcomes": {"m": {"score": 1}}}',
        '{"id": "c", "split": "test", "prompt": "other", "outcomes": {"m": {"score": 0}}}',
    ]
    table = load_table(_write(tmp_path / "t.jsonl", lines))
    assert find_leaks(table).tolist() == [1]
    kept, n = drop_leaks(table)
    assert n == 1 and kept.ids.tolist() == ["a", "c"]


@pytest.mark.parametrize("name", SETS)
def test_data_info_matches_a_direct_computation(
    name: str, shared_data: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = shared_data(name)
    assert main(["data", "info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    with gzip.open(folder / "outcomes.jsonl.gz", "rt") as fh:
        records = [json.loads(line) for line in fh]
    assert info["prompts"] == len(records)
    by_model = {m["model"]: m for m in info["per_model"]}
    models = sorted({m for r in records for m in r["outcomes"]})
    for m in models:
        scores = [
            r["outcomes"][m]["score"]
            for r in records
            if m in r["outcomes"] and "score" in r["outcomes"][m]
        ]
        assert by_model[m]["mean_score"] == pytest.approx(np.mean(scores)), m
    best = [
        max(o["score"] for o in r["outcomes"].values() if "score" in o)
        for r in records
        if any("score" in o for o in r["outcomes"].values())
    ]
    assert info["oracle"] == pytest.approx(np.mean(best))
    assert info["load_seconds"] < 10
    assert main(["data", "info", str(folder)]) == 0
    assert "oracle" in capsys.readouterr().out


def test_export_log_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llmdispatch.gateway.requestlog import RequestLog

    db = str(tmp_path / "log.sqlite")
    log = RequestLog(db)
    for i, (model, reward) in enumerate([("a", 1.0), ("b", 0.0), ("a", None)]):
        log.log_request(
            {
                "id": f"r{i}",
                "created": float(i),
                "policy": "p",
                "model": model,
                "attempts": [{"model": model}],
                "prompt": f"q{i % 2}",
                "response": "ok",
                "tokens_in": 10,
                "tokens_out": 5,
                "cost_usd": 0.001,
                "latency_ms": 12.0,
                "status": 200,
            }
        )
        if reward is not None:
            log.log_feedback(f"r{i}", reward, None)
    log.close()
    out = tmp_path / "log.jsonl.gz"
    assert main(["data", "export-log", db, str(out)]) == 0
    table = load_table(out)
    assert set(table.models) == {"a", "b"} and table.n_prompts == 2
    assert table.score[:, table.model_index("a")].tolist()[0] == 1.0
    assert "with feedback scores" in capsys.readouterr().out
