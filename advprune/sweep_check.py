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


def check_same_config(folder: str, old: dict | None, new: dict, finished: set[str]) -> None:
    """UsageError when a sweep folder's finished rows (run names) were made with other [train] or [eval] settings
    than `new` (its sweep.json is `old`), or when a finished run's name now stands for another run of the grid:
    the table would mix settings under one name. New specs, fractions and seeds, [final], and where the data lives
    may change."""
    if old is None or not finished:
        return
    changes = _table_changes(old, new, "train", ignored={"data_dir"}) + _table_changes(old, new, "eval")
    changes += _redefined_runs(old["grid"], new["grid"], finished) if "grid" in old else []
    if changes:
        raise UsageError(
            f"{folder}/sweep.json differs from this config where its {len(finished)} finished rows would not "
            f"compare: {'; '.join(changes)}. Sweep into another --out, or pass --mixed-configs if the change "
            "alters nothing a run computes or times"
        )


def _table_changes(old: dict, new: dict, table: str, ignored: frozenset | set = frozenset()) -> list[str]:
    """ "[table] key: old -> new" for each option that differs ("unset" where a side lacks it)."""
    before, after = old.get(table, {}), new.get(table, {})
    keys = sorted((set(before) | set(after)) - set(ignored))
    return [
        f"[{table}] {key}: {_shown(before, key)} -> {_shown(after, key)}"
        for key in keys
        if before.get(key, _UNSET) != after.get(key, _UNSET)
    ]


_UNSET = object()


def _shown(options: dict, key: str) -> str:
    return repr(options[key]) if key in options else "unset"


def _redefined_runs(old_grid: dict, new_grid: dict, finished: set[str]) -> list[str]:
    """ "run NAME: ... -> ..." for each finished run whose grid entry (prune spec, own train options) changed."""
    from advprune.sweep import grid_runs

    before = {run.name: run for run in grid_runs(old_grid)}
    return [
        f"run {run.name}: {_described(before[run.name])} -> {_described(run)}"
        for run in grid_runs(new_grid)
        if run.name in finished and run.name in before and _described(before[run.name]) != _described(run)
    ]


def _described(run) -> str:
    """A grid run's prune spec and own train options (its name holds its seed; fraction is the spec's)."""
    return f"prune {run.spec or 'none'}" + (f" with {dict(run.train)}" if run.train else "")
