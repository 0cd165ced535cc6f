"""Bad input is reported with file, line and field; nothing is dropped without a count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmdispatch.catalog import ModelCard
from llmdispatch.cli import main
from llmdispatch.data import DataError, from_records, load_table
from llmdispatch.data.summary import summarize_table

GOOD = '{"id": "a", "prompt": "p", "outcomes": {"m": {"score": 1, "cost_usd": 0.1}}}'


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"bad\.jsonl:2: malformed JSON"),
        ('["a", "list"]', r"bad\.jsonl:2: expected a JSON object, got list"),
        (
            '{"id": "b", "prompt": "p", "outcomes": {"m": {"score": 1.5}}}',
            r"bad\.jsonl:2: field 'outcomes\.m\.score': score 1\.5 is outside \[0, 1\]",
        ),
        (
            '{"id": "b", "prompt": "p", "outcomes": {"m": {"score": -0.1}}}',
            r"bad\.jsonl:2: field 'outcomes\.m\.score': score -0\.1 is outside",
        ),
        (
            '{"id": "b", "prompt": "p", "outcomes": {"m": {"score": "high"}}}',
            r"bad\.jsonl:2: field 'outcomes\.m\.score': expected a number, got str",
        ),
        (
            '{"id": "b", "prompt": "p", "outcomes": {"m": {"score": true}}}',
            r"bad\.jsonl:2: field 'outcomes\.m\.score': expected a number, got bool",
        ),
        (
            '{"id": "b", "prompt": "p", "outcomes": {"m": {"cost_usd": -1}}}',
            r"bad\.jsonl:2: field 'outcomes\.m\.cost_usd': negative value",
        ),
        (
            '{"id": "b", "prompt": "p", "outcomes": {"m": {"response": 3}}}',
            r"bad\.jsonl:2: field 'outcomes\.m\.response': expected a string, got int",
        ),
        ('{"id": "b", "prompt": "p", "outcomes": {"m": 1}}', r"bad\.jsonl:2: field 'outcomes\.m'"),
        ('{"id": "b", "prompt": "p", "outcomes": []}', r"bad\.jsonl:2: field 'outcomes'"),
        ('{"id": "a", "prompt": "p", "outcomes": {}}', r"bad\.jsonl:2: field 'id': duplicate"),
        ('{"id": "b", "outcomes": {}}', r"bad\.jsonl:2: field 'prompt': missing"),
        ('{"id": "b", "prompt": 7, "outcomes": {}}', r"bad\.jsonl:2: field 'prompt': expected"),
        ('{"id": "b", "prompt": "p", "split": "dev", "outcomes": {}}', r":2: field 'split'"),
        ('{"id": "b", "prompt": "p", "dataset": 1, "outcomes": {}}', r":2: field 'dataset'"),
    ],
)
def test_malformed_jsonl_names_file_line_and_field(
    tmp_path: Path, line: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "bad.jsonl", [GOOD, line])
    with pytest.raises(DataError, match=message):
        load_table(path)
    assert main(["data", "info", str(path)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_blank_lines_keep_line_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", [GOOD, "", "{oops"])
    with pytest.raises(DataError, match=r"bad\.jsonl:3:"):
        load_table(path)


def test_unknown_outcome_field_is_reported_not_silently_dropped(tmp_path: Path) -> None:
    line = '{"id": "b", "prompt": "p", "outcomes": {"m": {"score": 0, "mood": "happy"}}}'
    table = load_table(_write(tmp_path / "t.jsonl", [GOOD, line]))
    assert table.report.problems == [
        f"{tmp_path / 't.jsonl'}:2: field 'outcomes.m.mood': " + "unknown field ignored"
    ]
    summary = summarize_table(table)
    assert summary.problems == table.report.problems and summary.prompts == 2


def test_cost_without_score_is_counted(tmp_path: Path) -> None:
    line = '{"id": "b", "prompt": "p", "outcomes": {"m": {"cost_usd": 0.2}}}'
    table = load_table(_write(tmp_path / "t.jsonl", [GOOD, line]))
    assert "1 outcomes have a cost but no score" in " ".join(table.report.notes)
    assert np.isnan(table.score[1, 0]) and table.cost[1, 0] == 0.2


def test_model_with_no_rows_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "models.json").write_text(json.dumps({"m": {}, "ghost": {}}))
    _write(tmp_path / "outcomes.jsonl", [GOOD])
    with pytest.raises(DataError, match=r"outcomes\.jsonl: model\(s\) with no rows: ghost"):
        load_table(tmp_path)


def test_missing_costs_are_derived_from_tokens_and_prices(tmp_path: Path) -> None:
    prices = {"m": {"price_in_per_mtok": 2.0, "price_out_per_mtok": 10.0}}
    (tmp_path / "models.json").write_text(json.dumps(prices))
    line = '{"id": "b", "prompt": "p", "outcomes": {"m": {"score": 0, "tokens_in": 1000, '
    line += '"tokens_out": 100}}}'
    table = load_table(_write(tmp_path / "outcomes.jsonl", [GOOD, line]))
    assert table.cost[:, 0].tolist() == [0.1, pytest.approx((1000 * 2.0 + 100 * 10.0) / 1e6)]
    assert table.report.derived_costs == 1 and summarize_table(table).derived_costs == 1


HEADER = "sample_id,prompt,eval_name,m,n,m|total_cost,n|total_cost,m|model_response"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('c,"[\'q\']",t,1.5,0,0.1,0.1,"x\ny"', r"t_test\.csv:5: field 'm': score 1\.5 is outside"),
        ('c,"[\'q\']",t,high,0,0.1,0.1,"x\ny"', r"t_test\.csv:5: field 'm': expected a number"),
        ('c,q,t,1,0,free,0.1,"x\ny"', r"t_test\.csv:5: field 'm\|total_cost': expected a number"),
        (
            'c,q,t,1,0,-0.1,0.1,"x\ny"',
            r"t_test\.csv:5: field 'm\|total_cost': negative value -0\.1",
        ),
    ],
)
def test_malformed_csv_names_file_line_and_column(tmp_path: Path, row: str, message: str) -> None:
    # Responses span two lines: the bad row starts on line 5 and ends on line 6.
    lines = [HEADER, "a,q,t,1,0,0.1,0.1,x", 'b,q,t,0,1,0.1,0.1,"two\nlines"', row]
    with pytest.raises(DataError, match=message):
        load_table(_write(tmp_path / "t_test.csv", lines))


def test_csv_model_with_no_scores_is_an_error(tmp_path: Path) -> None:
    lines = [HEADER, "a,q,t,1,,0.1,,x", "b,q,t,0,,0.1,,y"]
    with pytest.raises(DataError, match=r"no rows \(every score empty\): field 'n' of .*t\.csv"):
        load_table(_write(tmp_path / "t.csv", lines))


def test_csv_without_prompt_column_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"t\.csv: field 'prompt': column missing"):
        load_table(_write(tmp_path / "t.csv", ["sample_id,m", "a,1"]))


def test_csv_unknown_columns_are_reported(tmp_path: Path) -> None:
    lines = ["sample_id,prompt,m,m|latency,z|total_cost", "a,q,1,3,0.1", "b,q2,0,3,0.1"]
    table = load_table(_write(tmp_path / "t.csv", lines))
    assert table.models == ("m",)
    assert [p.split(": ", 1)[1] for p in table.report.problems] == [
        "field 'm|latency': unknown column ignored",
        "field 'z|total_cost': unknown column ignored",
    ]


def test_empty_folder_and_unknown_format_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.csv, \.parquet"):
        load_table(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown data format"):
        load_table(_write(tmp_path / "t.txt", ["hello"]))


def test_records_in_memory_build_the_same_table_as_the_file(tmp_path: Path) -> None:
    records = [
        {
            "id": f"q{i}",
            "prompt": f"prompt {i}",
            "split": "test" if i % 3 == 0 else "train",
            "dataset": "math" if i % 2 else "chat",
            "outcomes": {
                "small": {"score": (i % 2) * 1.0, "cost_usd": 1e-5, "response": f"s{i}"},
                "large": {"score": 1.0, "cost_usd": 1e-3, "confidence": 0.9},
            },
        }
        for i in range(12)
    ]
    path = _write(tmp_path / "outcomes.jsonl", [json.dumps(r) for r in records])
    from_file = load_table(path)
    table = from_records(records, name=from_file.name)
    assert table.ids.tolist() == from_file.ids.tolist()
    assert table.models == from_file.models == ("large", "small")  # no catalogue: by name
    for field in ("score", "cost", "confidence"):
        np.testing.assert_array_equal(getattr(table, field), getattr(from_file, field))
    assert table.responses[1, 1] == "s1" and table.split("test").n_prompts == 4
    # Catalogue models come first, as with a models.json beside the file.
    cards = [ModelCard(name="small", price_in_per_mtok=0.1)]
    priced = from_records(records, models=cards)
    assert priced.models == ("small", "large")
    assert priced.card("small").price_in_per_mtok == 0.1
    # A record without a split is hash-split and counted, as from a file.
    unsplit = from_records([{"id": "a", "prompt": "p", "outcomes": {"m": {"score": 1}}}])
    assert unsplit.splits[0] in ("train", "test")
    assert "1 records had no split" in " ".join(unsplit.report.notes)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"id": "b", "outcomes": {}}, r"record 2: field 'prompt': missing"),
        (
            {"id": "b", "prompt": "p", "outcomes": {"m": {"score": 2}}},
            r"record 2: field 'outcomes\.m\.score': score 2\.0 is outside \[0, 1\]",
        ),
        ({"id": "a", "prompt": "p", "outcomes": {"m": {}}}, r"record 2: field 'id': duplicate"),
        (
            {"id": "b", "prompt": "p", "split": "dev", "outcomes": {}},
            r"record 2: field 'split': expected 'train' or 'test', got 'dev'",
        ),
    ],
)
def test_bad_records_in_memory_name_the_record_and_field(
    record: dict[str, object], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        from_records([json.loads(GOOD), record])
