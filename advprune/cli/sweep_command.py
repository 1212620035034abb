"""`advprune sweep CONFIG` and `advprune report FOLDER`: a resumable grid of runs, and its report."""

from __future__ import annotations

import argparse
from pathlib import Path

from advprune.cli.common import UsageError


def sweep_command(args: argparse.Namespace) -> None:
    from advprune.sweep import load_sweep, run_sweep

    if args.rebuild_models and args.no_final:
        raise UsageError("--rebuild-models makes models for the [final] evaluations, which --no-final leaves out")
    config = load_sweep(args.sweep_config)
    out = Path(args.out or f"sweeps/{Path(args.sweep_config).stem}")
    if args.status:
        from advprune.sweep_status import format_status, sweep_status

        print(format_status(sweep_status(config, out, args.only)))
        return
    log = (lambda _line: None) if args.quiet else print
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


def report_command(args: argparse.Namespace) -> None:
    from advprune.report import report

    text, plots = report(args.folder, machine=args.machine)
    print(text)
    print(f"wrote {Path(args.folder) / 'report.md'} and {', '.join(str(p) for p in plots)}")
