"""The run folder: metrics.jsonl (one JSON object per line: one per epoch, plus setup and event
records), last.pt (after every epoch) and best.pt (the best robust validation accuracy so far).

What it guarantees after any crash (a kill, a full disk, a damaged file):
- one process at a time (folder_lock), and a fresh run never mixes its log with an old one (the old
  log is kept under another name);
- last.pt records the best epoch and is written before best.pt; a resume checks best.pt against it
  and rebuilds it from last.pt when the crash fell between the two writes;
- unreadable metrics lines (a torn last line, garbage) are dropped on resume with a warning naming
  the file and the line; temporary files left by a killed write are removed;
- checkpoints are read to the CPU (the Trainer moves what belongs on its device).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path

from advprune._faults import armed, die, fault_point
from advprune._files import ensure_room, readable_records, temporaries, write_atomic
from advprune._warn import warn
from advprune.checkpoint import (
    CheckpointError,
    checkpoint_bytes,
    load_checkpoint,
    save_checkpoint,
    write_checkpoint_bytes,
)
from advprune.train import folder_lock
from advprune.train.background_write import BackgroundWrite


def epoch_records(records: list[dict]) -> list[dict]:
    """The per-epoch records of a metrics log (not the setup, pruning or event lines)."""
    return [r for r in records if "epoch" in r and "event" not in r]


def read_run_metrics(folder: str | Path) -> list[dict]:
    """The readable records of a run folder's metrics.jsonl, read without taking the folder (a sweep, a report)."""
    return RunFolder(folder, quiet=True, writer=False).read_metrics()


def _write_last_then_best(folder: Path, data: memoryview, *, best: bool, epoch: int | None) -> None:
    """last.pt, then best.pt when this state is the best so far (the crash tests can stop the process between)."""
    write_checkpoint_bytes(folder / "last.pt", data)
    fault_point("between-checkpoints", epoch)
    if best:
        write_checkpoint_bytes(folder / "best.pt", data)


def _finite(record: dict) -> dict:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()}


class RunFolder:
    """Paths and files of one run; `None` as the folder keeps nothing (metrics are only printed). Only a
    writer (rank 0 under torch.distributed) locks, cleans, writes and prints; every rank reads."""

    def __init__(self, path: str | Path | None, quiet: bool = False, writer: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.quiet = quiet or not writer
        self.writer = writer
        self._open = False
        self._writes = BackgroundWrite()  # a checkpoint still being written (save(..., background=True))

    def file(self, name: str) -> Path | None:
        return self.path / name if self.path is not None else None

    @property
    def last(self) -> Path | None:
        return self.file("last.pt")

    def has_checkpoint(self) -> bool:
        self._writes.wait()
        return self.last is not None and self.last.is_file()

    # ------------------------------------------------------------- start and end

    def open(self, *, resume: bool) -> None:
        """Takes the folder (RunFolderBusy if another process has it), removes temporary files of killed
        writes, and for a fresh run sets an old log aside; refuses a fresh run over a checkpoint."""
        if self.path is None or self._open or not self.writer:
            return
        folder_lock.acquire(self.path)
        self._open = True
        for tmp, pid in temporaries(self.path):
            if pid != os.getpid():
                tmp.unlink(missing_ok=True)
        if resume:
            return
        if self.has_checkpoint():
            raise ValueError(f"{self.path} holds a run already (last.pt): resume it, or choose another folder")
        log = self.file("metrics.jsonl")
        if log.is_file():
            kept = log.with_name(f"metrics.before-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
            log.rename(kept)
            warn(f"{log} held the log of an earlier run without a checkpoint: kept as {kept.name}, a new log starts")

    def close(self) -> None:
        """Waits for a checkpoint still being written (raising its error), then lets the folder go."""
        try:
            self._writes.wait()
        finally:
            if self._open:
                folder_lock.release(self.path)
                self._open = False

    # -------------------------------------------------------------------- metrics

    def append(self, record: dict) -> None:
        """One line of metrics.jsonl (NaN and Inf written as null), in one write, and its short form on screen."""
        clean = _finite(record)
        if self.path is not None and self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
            line = (json.dumps(clean) + "\n").encode()
            fd = os.open(self.path / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if armed("torn-metrics-line", record.get("epoch")):  # the crash tests: a write cut short
                    os.write(fd, line[: len(line) // 2])
                    die()
                os.write(fd, line)
            finally:
                os.close(fd)
        if not self.quiet:
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in clean.items() if "seconds" not in k}
            print(json.dumps(shown), flush=True)

    def read_metrics(self) -> list[dict]:
        """The records of metrics.jsonl; an unreadable line (torn, garbage, binary) is dropped with a warning."""
        path = self.file("metrics.jsonl")
        return readable_records(path) if path is not None and path.is_file() else []

    def forget_metrics_from(self, epoch: int) -> None:
        """Keeps the readable records of epochs before `epoch` (a killed run may have logged one past its
        checkpoint) and the records that are not epochs."""
        path = self.file("metrics.jsonl")
        if path is None or not path.is_file() or not self.writer:
            return
        kept = [r for r in self.read_metrics() if r.get("epoch", -1) < epoch]
        write_atomic(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept)))

    # ---------------------------------------------------------------- checkpoints

    def save(self, state: dict, *, best: bool, background: bool = False) -> None:
        """last.pt, then best.pt when this state is the best so far. last.pt records the best epoch, so a
        crash between the two writes is seen, and repaired, on resume. The state is serialised at once (a
        snapshot); background=True writes it on a worker thread while the caller goes on, and the next save,
        read or close waits for it and raises its error. A disk without room for it fails here, at once."""
        if self.path is None or not self.writer:
            return
        data = checkpoint_bytes(state)
        self._writes.wait()
        self.path.mkdir(parents=True, exist_ok=True)
        ensure_room(self.path / "last.pt", len(data))
        write = functools.partial(_write_last_then_best, self.path, data, best=best, epoch=state.get("epoch"))
        if background:
            self._writes.start(write)
        else:
            write()

    def load(self, path: str | Path | None = None) -> dict:
        """A checkpoint of this run (default last.pt), read to the CPU; for an unreadable one, an error
        that says what to do."""
        self._writes.wait()
        path = Path(path) if path is not None else self.last
        try:
            return load_checkpoint(path, map_location="cpu")
        except CheckpointError as exc:
            best = self.file("best.pt")
            other = f"resume from {best} instead (--resume-from {best}), or " if best and path != best else ""
            raise CheckpointError(f"{exc}: {other}start over with another --out") from None

    def check_best(self, state: dict) -> bool:
        """Whether best.pt holds the epoch that `state` (just loaded from last.pt) records as the best;
        rebuilds it from last.pt when that is the best (a crash came between the two writes). False when
        best.pt is lost and cannot be rebuilt: the caller forgets the best accuracy, so a later epoch
        writes a new best.pt."""
        self._writes.wait()
        best_epoch = state.get("best_epoch")
        best = self.file("best.pt")
        if best is None or best_epoch is None or not self.writer:
            return True
        try:
            ok = best.is_file() and load_checkpoint(best)["epoch"] == best_epoch
        except CheckpointError:
            ok = False
        if ok:
            return True
        if best_epoch == state["epoch"]:
            save_checkpoint(best, state)
            warn(f"{best} did not hold epoch {best_epoch}, which {self.last} records as the best: rebuilt from it")
            return True
        warn(f"{best} is missing or damaged and its epoch's state is gone: the next validated epoch writes a new one")
        return False
