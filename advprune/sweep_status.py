"""`advprune sweep CONFIG --status`: where each run of a sweep folder stands (finished, running, stopped part way,
not started; its [final] evaluation done, running or waiting, and for what), read while sweep processes run.
It writes nothing and takes no claim: a claim taken even for a moment could make a starting sweep process
skip the run, so a run's claim is looked up in the kernel's lock table instead."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from advprune._files import readable_records
from advprune.sweep import REBUILDS, epochs_trained, grid_runs, matching_runs, run_options, select_runs, train_epochs

LOCK_TABLE = Path("/proc/locks")


GRID_KINDS = ("done", "running", "stopped", "not started")
FINAL_KINDS = ("done", "running", "waiting with their model", "waiting for their model", "after their grid run")


@dataclass(frozen=True)
class RunStatus:
    """One run's state: its grid step and its [final] evaluation ("" where the run is not a final one), each
    as text and as its kind (one of GRID_KINDS and FINAL_KINDS), which the counts use."""

    name: str
    grid: str
    final: str
    grid_kind: str
    final_kind: str = ""


def sweep_status(config: dict, out: str | Path, only: list[str] | None = None) -> list[RunStatus]:
    """Each grid run's status (those matching `only`), in the grid's order, from the sweep folder `out`."""
    out = Path(out)
    runs = select_runs(grid_runs(config["grid"]), only)
    results, finals = _lines(out / "results.jsonl"), _lines(out / "final.jsonl")
    final_names = {run.name for run in matching_runs(runs, config.get("final", {}).get("runs", []))}
    held = held_locks()  # the lock table, read once
    statuses = []
    for run in runs:
        folder = out / "runs" / run.name
        claimed = lock_key(folder / "sweep.lock") in held
        epochs = train_epochs(run_options(run, config["train"]))
        grid_kind, grid = _grid_status(folder, results.get(run.name), claimed, epochs)
        final_kind, final = "", ""
        if run.name in final_names:
            final_kind, final = _final_status(run.name, out, finals.get(run.name), run.name in results, claimed, epochs)
        statuses.append(RunStatus(run.name, grid, final, grid_kind, final_kind))
    return statuses


def _grid_status(folder: Path, result: dict | None, claimed: bool, epochs: int) -> tuple[str, str]:
    """The grid step's kind and text: its figures once done, else how far its training got and whether a
    process has it."""
    if result is not None:
        return "done", f"done: AutoAttack {result['autoattack_acc']:.1%}, PGD {result['pgd_acc']:.1%}"
    trained = epochs_trained(folder)
    if claimed:
        return "running", "running: evaluating" if trained >= epochs else f"running: {trained} of {epochs} epochs"
    if trained >= epochs:
        return "stopped", "stopped in its evaluation (resumes)"
    if trained:
        return "stopped", f"stopped after {trained} of {epochs} epochs (resumes)"
    return "not started", "not started"


def _final_status(
    name: str, out: Path, final: dict | None, grid_done: bool, claimed: bool, epochs: int
) -> tuple[str, str]:
    """The [final] evaluation's kind and text: its figure once done, else what it waits for (a model that is
    not here is trained again only by a sweep with --rebuild-models)."""
    if final is not None:
        return "done", f"done: AutoAttack {final['autoattack_acc']:.1%} ({final['autoattack_version']})"
    if not grid_done:
        return "after their grid run", "after its grid run"
    has_model = (out / "runs" / name / "last.pt").exists()
    if claimed:
        rebuilt = epochs_trained(out / REBUILDS / name)
        return "running", "running" if has_model else f"running: rebuilding its model, {rebuilt} of {epochs} epochs"
    if has_model:
        return "waiting with their model", "waiting (its model is here)"
    return "waiting for their model", "waiting for its model (--rebuild-models)"


def format_status(statuses: list[RunStatus]) -> str:
    """The statuses as an aligned table, then one line that counts them."""
    width = max([len("run"), *(len(s.name) for s in statuses)])
    grid_width = max([len("grid"), *(len(s.grid) for s in statuses)])
    lines = [f"{'run':<{width}}  {'grid':<{grid_width}}  final"]
    lines += [f"{s.name:<{width}}  {s.grid:<{grid_width}}  {s.final or '-'}".rstrip() for s in statuses]
    return "\n".join([*lines, "", summary(statuses)])


def summary(statuses: list[RunStatus]) -> str:
    """How many runs stand where, grid and final apart."""
    line = f"grid, {len(statuses)} runs: {_count([s.grid_kind for s in statuses], GRID_KINDS)}"
    finals = [s.final_kind for s in statuses if s.final_kind]
    return line + (f"; final evaluations, {len(finals)}: {_count(finals, FINAL_KINDS)}" if finals else "")


def _count(kinds: list[str], order: tuple[str, ...]) -> str:
    """'3 done, 1 running': how many of each kind, in the order given, those that occur."""
    return ", ".join(f"{kinds.count(kind)} {kind}" for kind in order if kind in kinds)


def _lines(path: Path) -> dict[str, dict]:
    """A results file's lines by run, read as they are (no lock, no repair: a torn last line is dropped)."""
    return {line["run"]: line for line in readable_records(path)} if path.exists() else {}


def held_locks() -> set[str]:
    """The files some process holds a flock on, as lock_key gives them, from /proc/locks (Linux; none where
    it cannot be read)."""
    try:
        table = LOCK_TABLE.read_text()
    except OSError:
        return set()
    return {fields[-3] for fields in (line.split() for line in table.splitlines()) if "FLOCK" in fields}


def lock_key(path: Path) -> str | None:
    """The file as /proc/locks names it (device major:minor:inode); None for a file that is not there."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"


def is_locked(path: Path) -> bool:
    """Whether a process holds a flock on the file; False where the lock table cannot tell."""
    key = lock_key(path)
    return key is not None and key in held_locks()
