"""`advprune sweep CONFIG` and `advprune report FOLDER`: a resumable grid of runs, and its report."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from advprune._signals import signals_raise
from advprune.cli.common import UsageError

# the flags a worker of --workers gets as they were given (--only, --out and --workers are handled apart;
# tests/test_sweep_workers.py fails while a flag of `advprune sweep` is neither here nor named there as not forwarded)
_WORKER_FLAGS = ("no_final", "rebuild_models", "mixed_machines", "mixed_configs", "quiet")


def sweep_command(args: argparse.Namespace) -> None:
    from advprune.sweep import load_sweep, run_sweep
    from advprune.sweep_workers import announce_worker, run_workers

    if args.rebuild_models and args.no_final:
        raise UsageError("--rebuild-models makes models for the [final] evaluations, which --no-final leaves out")
    if args.workers is not None and args.status:
        raise UsageError("--status runs nothing, so it takes no --workers")
    config = load_sweep(args.sweep_config)
    out = Path(args.out or f"sweeps/{Path(args.sweep_config).stem}")
    if args.status:
        from advprune.sweep_status import format_status, sweep_status

        print(format_status(sweep_status(config, out, args.only)))
        return
    log = (lambda _line: None) if args.quiet else _print_now  # a sweep's output is often a log file: line by line
    if args.workers is not None:
        run_workers(_worker_args(args, out), args.workers, out, log=log)
        print(f"all {args.workers} workers finished; advprune report {out} makes the table and plots")
        return
    if (line := announce_worker()) is not None:
        log(line)
    # SIGTERM unwinds the sweep, and subprocess.run kills the `advprune train` it waits on on the way out,
    # instead of leaving it training on without the sweep's claim on its folder
    with signals_raise(signal.SIGTERM):
        results = run_sweep(
            config,
            out,
            log=log,
            only=args.only,
            final=not args.no_final,
            mixed_machines=args.mixed_machines,
            mixed_configs=args.mixed_configs,
            rebuild_models=args.rebuild_models,
        )
    print(f"{len(results)} runs finished in {out}/results.jsonl; advprune report {out} makes the table and plots")


def _print_now(line: str) -> None:
    print(line, flush=True)


def _worker_args(args: argparse.Namespace, out: Path) -> list[str]:
    """The `advprune sweep` arguments of one worker: this call's, less --workers."""
    flags = ["--" + name.replace("_", "-") for name in _WORKER_FLAGS if getattr(args, name)]
    only = ["--only", ",".join(args.only)] if args.only else []
    return ["sweep", args.sweep_config, "--out", str(out), *only, *flags]


def report_command(args: argparse.Namespace) -> None:
    from advprune.report import References, report

    refs = References(random=args.random_ref, full=args.full_ref)
    text, plots = report(args.folder, machine=args.machine, refs=refs)
    print(text)
    print(f"wrote {Path(args.folder) / 'report.md'} and {', '.join(str(p) for p in plots)}")
