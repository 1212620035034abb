"""The `advprune` command: prepare, train, score, eval. A mistake of the caller prints one line saying
what was wrong and how to fix it, and exits 2; a fault of the run (a full disk, a busy run folder, a
diverged loss, a failed writer) prints one line saying what happened and what to do, and exits 1.
Warnings (a repaired or dropped file) are one line each."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence

from advprune._deps import MissingDependency
from advprune._files import DiskFull
from advprune._process_group import GroupFailed
from advprune._warn import one_line_format
from advprune.cli.common import UsageError
from advprune.cli.parser import build_parser, parse

MISTAKES = (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError, MissingDependency)


def _faults() -> tuple[type[BaseException], ...]:
    from advprune.distributed import RankFailure
    from advprune.sweep import RunFailed
    from advprune.sweep_workers import WorkersFailed
    from advprune.train import TrainingDiverged
    from advprune.train.folder_lock import RunFolderBusy

    return (DiskFull, RunFolderBusy, TrainingDiverged, GroupFailed, RankFailure, RunFailed, WorkersFailed)


def main(argv: Sequence[str] | None = None) -> int:
    warnings.formatwarning = one_line_format
    try:
        args = parse(argv)
    except SystemExit as exc:  # argparse: --help (0) or its one-line error (2)
        return int(exc.code or 0)
    except UsageError as exc:
        print(f"advprune: error: {exc}", file=sys.stderr)
        return 2
    try:
        args.run(args)
    except BrokenPipeError:  # the reader of the output went away (advprune report ... | head): end quietly,
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # with no second error at the flush,
        return 128 + 13  # and the status of a process that SIGPIPE ended, as head's other writers get
    except _faults() as exc:
        print(f"advprune {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except MISTAKES as exc:
        print(f"advprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["UsageError", "build_parser", "main", "parse"]
