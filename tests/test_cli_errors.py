"""The CLI's error reporting: one clear message and an exit code that says what failed."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from llmdispatch.cli.errors import EXIT_BROKEN_PIPE, EXIT_RUNTIME, EXIT_USAGE, run_command
from llmdispatch.policies.calibrate import CalibrationTarget


def _args(error: BaseException) -> argparse.Namespace:
    def fail(_: Any) -> int:
        raise error

    return argparse.Namespace(command="train", func=fail)


def test_validation_errors_are_one_line_per_problem(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        CalibrationTarget.model_validate({"kind": "quality_fraction", "value": -1, "x": 1})
    except ValueError as exc:
        error = exc
    assert run_command(_args(error)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("llmdispatch train: error: invalid CalibrationTarget\n")
    assert "  value: Input should be greater than or equal to 0" in err
    assert "  x: Extra inputs are not permitted" in err
    assert "errors.pydantic.dev" not in err and "input_value" not in err


def test_other_errors_keep_their_message_and_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(_args(ValueError("bad value"))) == EXIT_USAGE
    assert capsys.readouterr().err == "llmdispatch train: error: bad value\n"
    assert run_command(_args(RuntimeError("upstream down"))) == EXIT_RUNTIME
    assert capsys.readouterr().err == "llmdispatch train: failed: upstream down\n"


def test_a_closed_pipe_ends_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(_args(BrokenPipeError(32, "Broken pipe"))) == EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""
