"""`advprune sweep CONFIG --status`: where each run of a sweep folder stands (finished, running, stopped part way,
not started; its [final] evaluation done, running or waiting, and for what), read while sweep processes run.
It writes nothing and takes no claim: a claim taken even for a moment could make a starting sweep process
skip the run, so a run's claim is looked up in the kernel's lock table instead."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from advprune._files import readable_records
from advprune.sweep import REBUILDS, grid_runs, matching_runs, run_options, select_runs, train_epochs
from advprune.train.run_folder import epoch_records, read_run_metrics

LOCK_TABLE = Path("/proc/locks")


@dataclass(frozen=True)
class RunStatus:
    """One run's state: its grid step and its [final] evaluation ("" where the run is not a final one)."""

    name: str
    grid: str
    final: str


def sweep_status(config: dict, out: str | Path, only: list[str] | None = None) -> list[RunStatus]:
    """Each grid run's status (those matching `only`), in the grid's order, from the sweep folder `out`."""
    out = Path(out)
    runs = select_runs(grid_runs(config["grid"]), only)
    results, finals = _lines(out / "results.jsonl"), _lines(out / "final.jsonl")
    final_names = {run.name for run in matching_runs(runs, config.get("final", {}).get("runs", []))}
    statuses = []
    for run in runs:
        folder = out / "runs" / run.name
        claimed = is_locked(folder / "sweep.lock")
        epochs = train_epochs(run_options(run, config["train"]))
        grid = _grid_status(folder, results.get(run.name), claimed, epochs)
        final = ""
        if run.name in final_names:
            final = _final_status(run.name, out, finals.get(run.name), run.name in results, claimed, epochs)
        statuses.append(RunStatus(run.name, grid, final))
    return statuses


def _grid_status(folder: Path, result: dict | None, claimed: bool, epochs: int) -> str:
    """The grid step: its figures once done, else how far its training got and whether a process has it."""
    if result is not None:
        return f"done: AutoAttack {result['autoattack_acc']:.1%}, PGD {result['pgd_acc']:.1%}"
    if not folder.is_dir():
        return "not started"
    trained = _epochs_trained(folder)
    if claimed:
        return "running: evaluating" if trained >= epochs else f"running: {trained} of {epochs} epochs"
    if trained >= epochs:
        return "stopped in its evaluation (resumes)"
    return f"stopped after {trained} of {epochs} epochs (resumes)" if trained else "not started"


def _final_status(name: str, out: Path, final: dict | None, grid_done: bool, claimed: bool, epochs: int) -> str:
    """The [final] evaluation: its figure once done, else what it waits for (a model that is not here is
    trained again only by a sweep with --rebuild-models)."""
    if final is not None:
        return f"done: AutoAttack {final['autoattack_acc']:.1%} ({final['autoattack_version']})"
    if not grid_done:
        return "after its grid run"
    has_model = (out / "runs" / name / "last.pt").exists()
    if claimed:
        rebuilt = _epochs_trained(out / REBUILDS / name)
        return "running" if has_model else f"running: rebuilding its model, {rebuilt} of {epochs} epochs"
    return "waiting (its model is here)" if has_model else "waiting for its model (--rebuild-models)"


def format_status(statuses: list[RunStatus]) -> str:
    """The statuses as an aligned table, then one line that counts them."""
    width = max([len("run"), *(len(s.name) for s in statuses)])
    grid_width = max([len("grid"), *(len(s.grid) for s in statuses)])
    lines = [f"{'run':<{width}}  {'grid':<{grid_width}}  final"]
    lines += [f"{s.name:<{width}}  {s.grid:<{grid_width}}  {s.final or '-'}".rstrip() for s in statuses]
    return "\n".join([*lines, "", summary(statuses)])


def summary(statuses: list[RunStatus]) -> str:
    """How many runs stand where, grid and final apart."""
    grid = _count([s.grid for s in statuses], GRID_STATES)
    line = f"grid, {len(statuses)} runs: {grid}"
    finals = [s.final for s in statuses if s.final]
    return line + (f"; final evaluations, {len(finals)}: {_count(finals, FINAL_STATES)}" if finals else "")


GRID_STATES = {"done": "done", "running": "running", "stopped": "stopped", "not started": "not started"}
FINAL_STATES = {
    "done": "done",
    "running": "running",
    "waiting (its model": "waiting with their model",
    "waiting for its model": "waiting for their model",
    "after its grid run": "after their grid run",
}


def _count(states: list[str], kinds: dict[str, str]) -> str:
    """'3 done, 1 running': how many states begin with each kind's prefix, named by its label, in order."""
    counts = [(sum(state.startswith(prefix) for state in states), label) for prefix, label in kinds.items()]
    return ", ".join(f"{n} {label}" for n, label in counts if n)


def _epochs_trained(folder: Path) -> int:
    """The epochs a run folder's metrics log records (0 for a folder without one)."""
    if not (folder / "metrics.jsonl").exists():
        return 0
    records = epoch_records(read_run_metrics(folder))
    return records[-1]["epoch"] + 1 if records else 0


def _lines(path: Path) -> dict[str, dict]:
    """A results file's lines by run, read as they are (no lock, no repair: a torn last line is dropped)."""
    return {line["run"]: line for line in readable_records(path)} if path.exists() else {}


def is_locked(path: Path) -> bool:
    """Whether a process holds a flock on the file, from /proc/locks (Linux); False where it cannot tell."""
    try:
        stat, table = path.stat(), LOCK_TABLE.read_text()
    except OSError:
        return False
    key = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    return any("FLOCK" in fields and key in fields for fields in (line.split() for line in table.splitlines()))
