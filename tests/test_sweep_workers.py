"""`advprune sweep --workers N`: the CPUs shared out among pinned workers, every run trained once across them,
a failed worker named with its error, and a stop that ends the workers and the runs they train."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advprune.cli import main
from advprune.data.readers import FASHION_MNIST_DIR
from advprune.sweep_workers import WORKER_ENV, plan_workers, worker_env

needs_fashion = pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is missing")
needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="this process may use one CPU")

TINY = """
[train]
dataset = "fashion-mnist"
limit = 256
epochs = {epochs}
steps = 1
batch_size = 64
val_n = 32
val_steps = 1
eval_n = 0
[grid]
specs = {specs}
fractions = [0.5]
seeds = {seeds}
[eval]
n = 16
pgd_steps = 2
autoattack_stages = "apgd-ce"
"""


def _config(tmp_path: Path, epochs: int, specs: str, seeds: str) -> str:
    path = tmp_path / "sweep.toml"
    path.write_text(TINY.format(epochs=epochs, specs=specs, seeds=seeds))
    return str(path)


def _failing_config(tmp_path: Path) -> str:
    """A sweep whose one run fails at once: its data folder does not exist."""
    path = tmp_path / "bad.toml"
    path.write_text('[train]\ndataset = "cifar10"\ndata_dir = "no-such-folder"\n[grid]\nspecs = ["none"]\nseeds = [0]')
    return str(path)


def test_each_worker_gets_an_equal_share_of_the_cpus_in_order_and_a_remainder_stays_idle(tmp_path):
    workers = plan_workers(3, [7, 1, 3, 0, 5, 2, 6, 4], tmp_path)
    assert [w.cpus for w in workers] == [(0, 1), (2, 3), (4, 5)]
    assert [w.log for w in workers] == [tmp_path / f"worker-{k}.log" for k in range(3)]
    env = worker_env(workers[1], 3, {"PATH": "/bin", "OMP_NUM_THREADS": "16"})
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", WORKER_ENV: "1 of 3"}


def test_more_workers_than_cpus_or_none_is_refused_naming_the_cpus(tmp_path):
    with pytest.raises(ValueError, match=r"--workers 3 needs 3 CPUs, but this process may use 2 \(4, 9\)"):
        plan_workers(3, [9, 4], tmp_path)
    with pytest.raises(ValueError, match="at least 1, got 0"):
        plan_workers(0, [0, 1], tmp_path)


def test_workers_with_status_or_too_many_are_one_line_errors_before_anything_starts(tmp_path, capsys):
    config = _config(tmp_path, 1, '["none"]', "[0]")
    out = tmp_path / "out"
    assert main(["sweep", config, "--out", str(out), "--status", "--workers", "2"]) == 2
    assert "--status runs nothing, so it takes no --workers" in capsys.readouterr().err
    too_many = len(os.sched_getaffinity(0)) + 1
    assert main(["sweep", config, "--out", str(out), "--workers", str(too_many)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--workers {too_many} needs {too_many} CPUs" in err
    assert not out.exists()


def test_every_sweep_flag_but_workers_and_status_reaches_each_worker(tmp_path):
    """A flag added to `advprune sweep` must reach the workers too: this fails until _WORKER_FLAGS names it (or
    this test names it as one a worker must not get)."""
    from advprune.cli.parser import build_parser
    from advprune.cli.sweep_command import _worker_args

    parser = build_parser()
    argv = ["sweep", "grid.toml", "--out", str(tmp_path), "--only", "full-*,random-0.2-*"]
    for action in parser.subcommands["sweep"]._actions:
        if action.option_strings and action.dest not in {"help", "workers", "status", "out", "only"}:
            assert action.nargs == 0, f"--{action.dest} takes a value: give it one in this test"
            argv.append(action.option_strings[0])
    args = parser.parse_args(argv)
    assert vars(parser.parse_args(_worker_args(args, tmp_path))) == vars(args)


@needs_fashion
@needs_two_cpus
def test_two_pinned_workers_train_every_run_once(tmp_path, capsys):
    config = _config(tmp_path, 1, '["none", "random:{fraction}"]', "[0, 1]")
    out = tmp_path / "out"
    assert main(["sweep", config, "--out", str(out), "--workers", "2", "--no-final"]) == 0
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    names = ["full-seed0", "random-0.5-seed0", "full-seed1", "random-0.5-seed1"]
    assert sorted(line["run"] for line in lines) == sorted(names)
    for name in names:  # one training: one setup record in the run's metrics log
        records = [json.loads(r) for r in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        assert sum(r.get("phase") == "setup" for r in records) == 1
    cpus = sorted(os.sched_getaffinity(0))
    for k in range(2):  # each worker says, from inside, the CPU it was pinned to and its one thread
        first = (out / f"worker-{k}.log").read_text().splitlines()[0]
        assert first == f"sweep worker {k} of 2: CPUs {cpus[k]}, OMP_NUM_THREADS=1"
    said = capsys.readouterr().out
    assert f"worker 1: CPUs {cpus[1]}, 1 thread(s), log {out / 'worker-1.log'}" in said
    assert "all 2 workers finished" in said


def test_a_failed_worker_is_one_line_with_its_own_error(tmp_path, capsys):
    bad = _failing_config(tmp_path)
    assert main(["sweep", bad, "--out", str(tmp_path / "out"), "--workers", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 of 1 workers failed: worker 0 exit 1" in err
    assert "full-seed0: advprune train failed (exit 2)" in err and "no cifar-10-batches-py folder" in err


def _processes_naming(text: str) -> list[int]:
    """The pids of the processes whose command line holds text."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:  # gone meanwhile
                pass
    return pids


@needs_fashion
def test_a_stopped_sweep_ends_its_workers_and_the_runs_they_train(tmp_path):
    """SIGTERM to `advprune sweep --workers 1` reaches the worker, which ends its `advprune train` (no run
    trains on without the claim on its folder), and the claim is free again."""
    config = _config(tmp_path, 200, '["none"]', "[0]")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "advprune", "sweep", config, "--out", str(out), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a log file buffers as it would
    sweep = subprocess.Popen(command, env=env)
    try:
        _stop_while_training(sweep, out)
    finally:  # a failure leaves no process behind
        for pid in _processes_naming(str(out)):
            os.kill(pid, signal.SIGKILL)


def _stop_while_training(sweep: subprocess.Popen, out: Path) -> None:
    run = out / "runs" / "full-seed0"
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() or "epoch" not in (run / "metrics.jsonl").read_text():
        assert time.monotonic() < deadline and sweep.poll() is None, "the run never started training"
        time.sleep(0.2)
    trainers = [pid for pid in _processes_naming(str(run)) if pid != sweep.pid]
    assert trainers, "no advprune train process for the run"
    # the worker's lines are in its log as they are said, not when it exits (a file would buffer them)
    assert (out / "worker-0.log").read_text().startswith("sweep worker 0 of 1: CPUs ")
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 30
    while _processes_naming(str(out)):
        assert time.monotonic() < deadline, f"still running: {_processes_naming(str(out))}"
        time.sleep(0.2)
    import fcntl

    with open(run / "sweep.lock", "a") as lock:  # the worker's claim ended with it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_sweep_called_from_another_thread_runs_without_its_signal_handler(tmp_path, capsys):
    """Only the main thread may set signal handlers: main() from a worker thread still runs the sweep (here
    to its run's own failure, exit 1) instead of failing on the handler."""
    import threading

    bad = _failing_config(tmp_path)
    codes = []
    argv = ["sweep", bad, "--out", str(tmp_path / "out"), "--quiet"]
    thread = threading.Thread(target=lambda: codes.append(main(argv)))
    thread.start()
    thread.join()
    assert codes == [1] and "full-seed0: advprune train failed (exit 2)" in capsys.readouterr().err
