"""A sweep's options checked before its first run: each run's `advprune train` arguments parse and pass the
command's own checks, and the evaluations' AutoAttack stages exist, so that a typo anywhere in a grid of many
hours fails the sweep at once, naming the run and the option, not after the runs before it have trained."""

from __future__ import annotations

import contextlib
import io

from advprune.cli.common import UsageError


def check_train_arguments(run: str, argv: list[str]) -> None:
    """UsageError naming the run when `advprune train argv` would refuse its options (nothing is read or
    written: the data folder is the run's own business)."""
    from advprune.cli.factory import check_training_options
    from advprune.cli.parser import parse

    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            args = parse(argv)
        check_training_options(args)
    except SystemExit:  # argparse printed its one line
        message = printed.getvalue().strip().split(": error: ", 1)[-1].split(" (see ")[0]
        raise UsageError(f"run {run}: {message}") from None
    except (UsageError, ValueError) as exc:
        raise UsageError(f"run {run}: {exc}") from None


def check_stages(table: str, stages: str) -> None:
    """A table's autoattack_stages: "standard" or AutoAttack stage names joined by commas."""
    from advprune.autoattack import parse_stages

    if stages != "standard":
        try:
            parse_stages(stages, f"[{table}] autoattack_stages")
        except ValueError as exc:
            raise UsageError(str(exc)) from None


def check_sweep_options(runs: list[tuple[str, list[str]]], stages: dict[str, str]) -> None:
    """Every (run name, train arguments) and every (table, autoattack_stages) of a sweep config."""
    for table, names in stages.items():
        check_stages(table, names)
    for run, argv in runs:
        check_train_arguments(run, argv)


def check_same_machine(folder: str, rows: list[dict], device: str | None) -> None:
    """UsageError when a sweep folder's finished rows were timed on another kind of machine than this one (rows
    that recorded none are not judged): their wall times, and where `amp="auto"` picks another precision their
    accuracies, would not compare with this machine's."""
    from advprune.cli.common import resolve_device
    from advprune.machine import machine_kind, machine_record

    here = machine_kind(machine_record(str(resolve_device(device))))
    others = sorted({machine_kind(row.get("machine")) for row in rows} - {here, machine_kind(None)})
    if others:
        raise UsageError(
            f"{folder}/results.jsonl holds rows timed on {'; '.join(others)}, and this machine is {here}: their wall "
            "times (and, where amp='auto' picks another precision, their accuracies) do not compare. Sweep into "
            "another --out, or pass --mixed-machines (advprune report then reports one machine at a time)"
        )
