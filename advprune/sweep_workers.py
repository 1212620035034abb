"""`advprune sweep CONFIG --workers N`: N sweep processes on one folder, each pinned to its own share of the
CPUs this process may use, with one OpenMP thread per CPU of its share. Their run claims share out the grid,
as with sweep processes started by hand under `taskset`; wall times stay those of a run on its own CPUs.

The workers start a few seconds apart (two torch processes started in the same second once failed to load
MKL here), each writes to FOLDER/worker-K.log, and a SIGINT or SIGTERM to this process reaches every worker,
which ends the run it trains (resumable from its last checkpoint)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from advprune._signals import signals_raise
from advprune.sweep import last_line

STAGGER_S = 3.0  # seconds between two workers' starts
WORKER_ENV = "ADVPRUNE_SWEEP_WORKER"  # "K of N" in a worker's environment: it names itself in its log


class WorkersFailed(RuntimeError):
    """One or more workers exited with an error: each one's exit code and the last line of its log."""


@dataclass(frozen=True)
class Worker:
    """One sweep process: its number, the CPUs it is pinned to, the file its output goes to."""

    index: int
    cpus: tuple[int, ...]
    log: Path


def plan_workers(count: int, cpus: Iterable[int], out: Path) -> list[Worker]:
    """count workers over equal shares of cpus (in order; a remainder stays idle), each logging into out."""
    cpus = sorted(cpus)
    if count < 1:
        raise ValueError(f"--workers must be at least 1, got {count}")
    if count > len(cpus):
        raise ValueError(
            f"--workers {count} needs {count} CPUs, but this process may use {len(cpus)} "
            f"({', '.join(map(str, cpus))}): give at most {len(cpus)}"
        )
    share = len(cpus) // count
    return [Worker(k, tuple(cpus[k * share : (k + 1) * share]), out / f"worker-{k}.log") for k in range(count)]


def worker_env(worker: Worker, count: int, base: dict[str, str]) -> dict[str, str]:
    """base, with one OpenMP/MKL thread per CPU of the worker's share and the worker's name."""
    threads = str(len(worker.cpus))
    return {**base, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, WORKER_ENV: f"{worker.index} of {count}"}


def announce_worker() -> str | None:
    """In a worker: the line that opens its log (its name, the CPUs it may use, its threads); else None."""
    name = os.environ.get(WORKER_ENV)
    if name is None:
        return None
    cpus = ", ".join(map(str, sorted(os.sched_getaffinity(0))))
    return f"sweep worker {name}: CPUs {cpus}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"


def run_workers(sweep_args: list[str], count: int, out: Path, log: Callable[[str], None] = print) -> None:
    """Runs `advprune SWEEP_ARGS` as count pinned workers and waits for all of them; WorkersFailed names
    each worker that failed."""
    workers = plan_workers(count, os.sched_getaffinity(0), out)
    out.mkdir(parents=True, exist_ok=True)
    started: list[tuple[Worker, subprocess.Popen]] = []
    with signals_raise(signal.SIGINT, signal.SIGTERM):
        try:
            for worker in workers:
                if started:
                    time.sleep(STAGGER_S)
                started.append((worker, _start(worker, count, sweep_args)))
                cpus = ", ".join(map(str, worker.cpus))
                log(f"worker {worker.index}: CPUs {cpus}, {len(worker.cpus)} thread(s), log {worker.log}")
            codes = [(worker, process.wait()) for worker, process in started]
        except BaseException:  # a signal here (or any error) ends every worker before it goes on
            _end_all(started)
            raise
    failed = [f"worker {w.index} exit {code}: {last_line(w.log)}" for w, code in codes if code != 0]
    if failed:
        raise WorkersFailed(f"{len(failed)} of {count} workers failed: " + "; ".join(failed))


def _start(worker: Worker, count: int, sweep_args: list[str]) -> subprocess.Popen:
    """The worker's process, pinned to its CPUs before it runs anything (threads it starts inherit them)."""
    with worker.log.open("a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "advprune", *sweep_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=worker_env(worker, count, dict(os.environ)),
            preexec_fn=lambda: os.sched_setaffinity(0, worker.cpus),
        )


def _end_all(started: list[tuple[Worker, subprocess.Popen]]) -> None:
    """SIGTERM to each worker still running, then wait for every one of them."""
    for _, process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for _, process in started:
        process.wait()
