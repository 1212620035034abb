"""The `advprune` command: prepare, train, score, eval. Bad input prints one line saying what was
wrong and how to fix it, and exits 2, without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from advprune._deps import MissingDependency
from advprune.cli.common import UsageError
from advprune.cli.parser import build_parser, parse

ONE_LINE_ERRORS = (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError, MissingDependency)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(argv)
    except SystemExit as exc:  # argparse: --help (0) or its one-line error (2)
        return int(exc.code or 0)
    except UsageError as exc:
        print(f"advprune: error: {exc}", file=sys.stderr)
        return 2
    try:
        args.run(args)
    except ONE_LINE_ERRORS as exc:
        print(f"advprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["UsageError", "build_parser", "main", "parse"]
