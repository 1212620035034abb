"""`advprune sweep CONFIG --status`: each run's grid step and final evaluation as the folder shows them, read
without writing anything or taking a run's claim."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from advprune.cli import main
from advprune.sweep_status import format_status, is_locked, summary, sweep_status

CONFIG = {
    "train": {"dataset": "fashion-mnist", "epochs": 3},
    "grid": {"specs": ["none", "random:{fraction}"], "fractions": [0.5], "seeds": [0, 1]},
    "final": {"runs": ["full-*", "random-0.5-seed0"]},
}
TOML = """
[train]
dataset = "fashion-mnist"
epochs = 3
[grid]
specs = ["none", "random:{fraction}"]
fractions = [0.5]
seeds = [0, 1]
[final]
runs = ["full-*", "random-0.5-seed0"]
"""


def _write_lines(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _metrics(folder: Path, epochs: int) -> None:
    """A run folder's metrics log: the setup line, then `epochs` epoch records and an event line."""
    records = [{"phase": "setup"}] + [{"epoch": e, "train_loss": 2.0 - e} for e in range(epochs)]
    _write_lines(folder / "metrics.jsonl", [*records, {"epoch": epochs - 1, "event": "checkpoint"}])


def _result(run: str, autoattack: float, pgd: float) -> dict:
    return {"run": run, "autoattack_acc": autoattack, "pgd_acc": pgd}


@pytest.fixture
def folder(tmp_path):
    """A sweep folder part way: full-seed0 done with its final row, random-0.5-seed0 done without its model,
    full-seed1 stopped after 2 of 3 epochs, random-0.5-seed1 never started."""
    out = tmp_path / "sweep"
    _write_lines(out / "results.jsonl", [_result("full-seed0", 0.311, 0.353), _result("random-0.5-seed0", 0.25, 0.3)])
    final = {"run": "full-seed0", "autoattack_acc": 0.309, "autoattack_version": "standard"}
    _write_lines(out / "final.jsonl", [final])
    for name in ("full-seed0", "random-0.5-seed0"):
        _metrics(out / "runs" / name, 3)
    (out / "runs" / "full-seed0" / "last.pt").write_bytes(b"model")
    _metrics(out / "runs" / "full-seed1", 2)
    return out


def _states(out: Path) -> dict[str, tuple[str, str]]:
    return {s.name: (s.grid, s.final) for s in sweep_status(CONFIG, out)}


def _files(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in out.rglob("*")}


def test_each_run_says_where_its_grid_step_and_final_evaluation_stand(folder):
    before = _files(folder)
    assert _states(folder) == {
        "full-seed0": ("done: AutoAttack 31.1%, PGD 35.3%", "done: AutoAttack 30.9% (standard)"),
        "random-0.5-seed0": ("done: AutoAttack 25.0%, PGD 30.0%", "waiting for its model (--rebuild-models)"),
        "full-seed1": ("stopped after 2 of 3 epochs (resumes)", "after its grid run"),
        "random-0.5-seed1": ("not started", ""),
    }
    assert _files(folder) == before  # nothing written, no lock file made, no sweep.json


def test_a_claimed_run_is_running_and_its_claim_is_left_alone(folder):
    """Another process's claim shows as running (training, evaluating, rebuilding a final model), and the
    status never takes it: the claimant's lock stays the only one."""
    claims = []
    for name in ("full-seed1", "random-0.5-seed0"):
        fd = os.open(folder / "runs" / name / "sweep.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        claims.append(fd)
    _metrics(folder / "rebuilds" / "random-0.5-seed0", 1)
    try:
        states = _states(folder)
        assert states["full-seed1"] == ("running: 2 of 3 epochs", "after its grid run")
        assert states["random-0.5-seed0"][1] == "running: rebuilding its model, 1 of 3 epochs"
        _metrics(folder / "runs" / "full-seed1", 3)
        assert _states(folder)["full-seed1"][0] == "running: evaluating"
        (folder / "runs" / "random-0.5-seed0" / "last.pt").write_bytes(b"model")
        assert _states(folder)["random-0.5-seed0"][1] == "running"
    finally:
        for fd in claims:
            os.close(fd)
    states = _states(folder)
    assert states["full-seed1"][0] == "stopped in its evaluation (resumes)"
    assert states["random-0.5-seed0"][1] == "waiting (its model is here)"


def test_the_summary_counts_grid_steps_and_final_evaluations_apart(folder):
    statuses = sweep_status(CONFIG, folder)
    assert summary(statuses) == (
        "grid, 4 runs: 2 done, 1 stopped, 1 not started; "
        "final evaluations, 3: 1 done, 1 waiting for their model, 1 after their grid run"
    )
    lines = format_status(statuses).splitlines()
    assert lines[0].split() == ["run", "grid", "final"] and lines[-1] == summary(statuses)
    assert lines[4].split()[:3] == ["random-0.5-seed1", "not", "started"] and lines[4].endswith("-")


def test_a_folder_not_made_yet_has_every_run_not_started_and_stays_unmade(tmp_path):
    statuses = sweep_status(CONFIG, tmp_path / "nothing")
    assert {s.grid for s in statuses} == {"not started"} and not (tmp_path / "nothing").exists()
    assert summary(statuses).startswith("grid, 4 runs: 4 not started; final evaluations, 3: 3 after")


def test_the_lock_table_tells_a_held_lock_from_a_free_one(tmp_path):
    path = tmp_path / "sweep.lock"
    assert not is_locked(path)  # no file: nobody holds it
    path.touch()
    assert not is_locked(path)
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert is_locked(path) and not is_locked(tmp_path)  # the directory's inode is another
    finally:
        os.close(fd)
    assert not is_locked(path)


def test_the_command_prints_the_runs_only_names_and_runs_nothing(folder, tmp_path, capsys):
    config = tmp_path / "grid.toml"
    config.write_text(TOML)
    before = _files(folder)
    assert main(["sweep", str(config), "--out", str(folder), "--status", "--only", "full-*"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["full-seed0", "full-seed1"]
    assert lines[-1] == "grid, 2 runs: 1 done, 1 stopped; final evaluations, 2: 1 done, 1 after their grid run"
    assert _files(folder) == before
