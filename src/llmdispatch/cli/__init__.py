"""The ``llmdispatch`` command: one subcommand per module in this package.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func`` (taking the parsed arguments, returning an exit code). Modules import heavy
dependencies inside their command functions, so ``llmdispatch --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from llmdispatch import __version__
from llmdispatch.cli.errors import EXIT_USAGE, run_command

#: Command modules, in the order ``--help`` lists them.
COMMAND_MODULES = ("data", "train", "route", "bench", "serve", "demo", "encoders")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="llmdispatch",
        description="Multi-LLM routing and cascading: train, measure, serve.",
    )
    parser.add_argument("--version", action="version", version=f"llmdispatch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"llmdispatch.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"llmdispatch.cli.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
