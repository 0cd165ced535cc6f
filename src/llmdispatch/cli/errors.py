"""Turn known errors into one clear line on stderr and an exit code that says what failed."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from pydantic import ValidationError

from llmdispatch.artifacts import ArtifactError
from llmdispatch.data.builder import DataError
from llmdispatch.registry import UnknownComponentError

EXIT_USAGE = 2
EXIT_RUNTIME = 3
#: The reader of stdout went away (`... | head`): what rich exits with when its tables meet
#: a closed pipe, so every command ends alike.
EXIT_BROKEN_PIPE = 1

#: Error types that mean "bad input or usage" (exit 2). Others are runtime failures (exit 3).
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    ArtifactError,
    UnknownComponentError,
    FileNotFoundError,
    ValueError,
)


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.func``; report input errors plainly instead of with a traceback."""
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Stop quietly; stdout points at /dev/null so that the interpreter's final flush
        # does not fail again.
        with contextlib.suppress(OSError, ValueError):  # stdout is no file (captured)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except INPUT_ERRORS as exc:
        print(f"llmdispatch {args.command}: error: {describe(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, OSError) as exc:
        print(f"llmdispatch {args.command}: failed: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def describe(exc: BaseException) -> str:
    """The error's message; a pydantic validation error as one line per problem (where, what),
    without pydantic's input dump and documentation link."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    problems = [
        f"{'.'.join(str(p) for p in err['loc']) or exc.title}: {err['msg']}" for err in exc.errors()
    ]
    return "invalid " + exc.title + ("\n  " + "\n  ".join(problems))
