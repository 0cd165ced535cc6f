"""The gateway's request log exports to an outcome table that the loaders read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdispatch.cli import main
from llmdispatch.data import load_table


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
