"""RouterBench loader: the real CSVs against the common format, Parquet, pickle, list prompts."""

from __future__ import annotations

import csv
import gzip
import json
import pickle
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmdispatch.cli import main
from llmdispatch.data import DataError, load_table
from llmdispatch.data.routerbench import parse_list_cell, parse_prompt, read_routerbench_file
from llmdispatch.data.table import OutcomeTable

CSV_COUNTS = {  # rows per source file (wc of the CSVs' records, repeated sample ids included)
    "arc_challenge_test.csv": 445,
    "arc_challenge_train.csv": 1039,
    "mbpp_test.csv": 128,
    "mbpp_train.csv": 299,
    "winograde_test.csv": 380,
    "winograde_train.csv": 887,
}


def test_list_string_prompts_are_parsed_as_literals_only(tmp_path: Path) -> None:
    assert parse_prompt("['What is 2+2?']") == "What is 2+2?"
    assert parse_prompt("  ['a', 'b']  ") == "a\n\nb"
    assert parse_prompt("['same', 'same']") == "same"  # RouterBench's doubled few-shot prompt
    assert parse_list_cell("['x', 'x']") == "x\n\nx"  # responses keep every part
    assert parse_prompt("plain [text]") == "plain [text]"
    assert parse_prompt("[1, 2]") == "[1, 2]"  # a list, but not of strings
    assert parse_prompt("['unterminated]") == "['unterminated]"
    marker = tmp_path / "pwned"
    evil = f"[__import__('pathlib').Path({str(marker)!r}).touch()]"
    assert parse_prompt(evil) == evil  # not a literal: kept as text, never evaluated
    assert not marker.exists()


def _jsonl_records(folder: Path) -> list[dict[str, Any]]:
    with gzip.open(folder / "outcomes.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _match_rows(table: OutcomeTable, records: list[dict[str, Any]]) -> list[int]:
    """For each JSONL record, the CSV row with its sample id and the same scored models."""
    by_id: dict[str, list[int]] = defaultdict(list)
    for i, rid in enumerate(table.ids):
        by_id[str(rid).split("#", 1)[0]].append(i)
    rows = []
    for rec in records:
        scored = {m for m, o in rec["outcomes"].items() if "score" in o}
        hits = [
            i
            for i in by_id[str(rec["id"])]
            if {m for j, m in enumerate(table.models) if table.known[i, j]} == scored
        ]
        assert len(hits) == 1, rec["id"]
        rows.append(hits[0])
    return rows


def test_real_csvs_agree_with_the_common_format(shared_data: Callable[[str], Path]) -> None:
    folder = shared_data("routerbench-subset")
    table = load_table(folder / "csv")
    records = _jsonl_records(folder)
    assert table.n_prompts == sum(CSV_COUNTS.values()) == 3178
    assert set(table.splits) == {"train", "test"}
    assert set(table.datasets) == {"arc-challenge", "mbpp", "winogrande"}
    assert sum("repeated sample_id" in n for n in table.report.notes) == 2
    rows = _match_rows(table, records)
    assert len(set(rows)) == len(records) == 3164
    # The 14 rows the common format dropped are the single-model ARC rows (see the card).
    extra = sorted(set(range(table.n_prompts)) - set(rows))
    assert len(extra) == 14
    only = table.model_index("gpt-3.5-turbo-1106")
    assert all(table.known[i].sum() == 1 and table.known[i, only] for i in extra)
    for k, rec in zip(rows, records, strict=True):
        assert table.prompts[k] == rec["prompt"]
        assert table.splits[k] == rec["split"] and table.datasets[k] == rec["dataset"]
        for model, o in rec["outcomes"].items():
            j = table.model_index(model)
            np.testing.assert_equal(table.score[k, j], o.get("score", np.nan))
            assert table.responses[k, j] == o.get("response")
            assert table.cost[k, j] == pytest.approx(o["cost_usd"], rel=1e-12)
    # Per-model mean scores over the matching prompts, computed from the gz JSONL.
    for model in table.models:
        outcomes = [r["outcomes"][model] for r in records if model in r["outcomes"]]
        scores = [o["score"] for o in outcomes if "score" in o]
        mean = np.nanmean(table.score[rows, table.model_index(model)])
        assert mean == pytest.approx(np.mean(scores), abs=1e-12), model
    # Cards come from the models.json one folder up.
    assert table.card("gpt-4-1106-preview").price_in_per_mtok is not None


def test_one_csv_takes_its_split_from_the_file_name(shared_data: Callable[[str], Path]) -> None:
    path = shared_data("routerbench-subset") / "csv" / "mbpp_test.csv"
    table = load_table(path)
    assert table.n_prompts == CSV_COUNTS["mbpp_test.csv"]
    assert set(table.splits) == {"test"} and set(table.datasets) == {"mbpp"}
    assert not any(str(p).startswith("['") for p in table.prompts)
    assert not any(str(r).startswith("['") for r in table.responses[table.known])
    assert table.report.source == str(path) and table.report.rows_read == 128


def test_parquet_matches_the_csv(shared_data: Callable[[str], Path], tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    src = shared_data("routerbench-subset") / "csv" / "winograde_test.csv"
    csv.field_size_limit(2**31 - 1)
    with src.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, list[object]] = {}
    for name in rows[0]:
        numeric = name not in ("", "sample_id", "prompt", "eval_name") and not name.endswith(
            ("|model_response", "oracle_model_to_route_to")
        )
        columns[name] = [
            (float(r[name]) if r[name] else None) if numeric else r[name] for r in rows
        ]
    path = tmp_path / "winograde_test.parquet"
    pq.write_table(pa.table(columns), path)
    from_csv = load_table(src)
    from_parquet = load_table(path).select_models(from_csv.models)  # no models.json: CSV order
    assert from_parquet.ids.tolist() == from_csv.ids.tolist()
    assert set(from_parquet.splits) == {"test"}
    np.testing.assert_array_equal(from_parquet.score, from_csv.score)
    np.testing.assert_array_equal(from_parquet.cost, from_csv.cost)
    assert from_parquet.prompts.tolist() == from_csv.prompts.tolist()


def test_parquet_without_pyarrow_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"t\.parquet: reading Parquet needs pyarrow"):
        read_routerbench_file(path)


class _Payload:
    """A pickle that would create a file when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.marker,))


def test_pickle_is_refused_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps([_Payload(marker)]))
    with pytest.raises(DataError, match="--allow-pickle"):
        load_table(evil)
    assert main(["data", "info", str(evil)]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert not marker.exists()  # refused before anything was unpickled

    rows = [
        {"sample_id": "a", "prompt": "['hi']", "eval_name": "x", "m": 1.0, "m|total_cost": 0.1},
        {"sample_id": "b", "prompt": "yo", "eval_name": "x", "m": 0.0, "m|total_cost": 0.2},
    ]
    good = tmp_path / "rows_train.pkl"
    good.write_bytes(pickle.dumps(rows))
    table = load_table(good, allow_pickle=True)
    assert table.models == ("m",) and table.prompts.tolist() == ["hi", "yo"]
    assert set(table.splits) == {"train"} and table.cost[:, 0].tolist() == [0.1, 0.2]
    assert main(["data", "info", str(good), "--allow-pickle", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompts"] == 2


def test_a_file_without_split_in_its_name_gets_the_hash_split(tmp_path: Path) -> None:
    path = tmp_path / "bench.csv"
    lines = ["sample_id,prompt,eval_name,m,m|total_cost"]
    lines += [f"s{i},['q {i}'],task,{i % 2},0.01" for i in range(200)]
    path.write_text("\n".join(lines) + "\n")
    first, second = load_table(path), load_table(path)
    assert first.splits.tolist() == second.splits.tolist()
    assert 60 < int((first.splits == "test").sum()) < 140
    assert first.datasets.tolist() == ["task"] * 200
    assert first.mean_score()[0] == pytest.approx(0.5)
