"""The run folder: metrics.jsonl (one JSON object per line: one per epoch, plus setup and event
records), last.pt (after every epoch) and best.pt (the best robust validation accuracy so far).
Checkpoints are written atomically and read to the CPU (the Trainer moves what belongs on its device)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from advprune._files import write_atomic
from advprune.checkpoint import load_checkpoint, save_checkpoint


def _finite(record: dict) -> dict:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()}


class RunFolder:
    """Paths and files of one run; `None` as the folder keeps nothing (metrics are only printed)."""

    def __init__(self, path: str | Path | None, quiet: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.quiet = quiet

    def file(self, name: str) -> Path | None:
        return self.path / name if self.path is not None else None

    @property
    def last(self) -> Path | None:
        return self.file("last.pt")

    def has_checkpoint(self) -> bool:
        return self.last is not None and self.last.is_file()

    def append(self, record: dict) -> None:
        """One line of metrics.jsonl (NaN and Inf written as null), and its short form on screen."""
        clean = _finite(record)
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(json.dumps(clean) + "\n")
        if not self.quiet:
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in clean.items() if "seconds" not in k}
            print(json.dumps(shown), flush=True)

    def forget_metrics_from(self, epoch: int) -> None:
        """Drops the epoch records from `epoch` on (a killed run may have logged one past its checkpoint)."""
        path = self.file("metrics.jsonl")
        if path is None or not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("epoch", -1) < epoch]
        write_atomic(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))

    def save(self, state: dict, *, best: bool) -> None:
        """last.pt, and best.pt when this state is the best so far."""
        if self.path is None:
            return
        save_checkpoint(self.path / "last.pt", state)
        if best:
            save_checkpoint(self.path / "best.pt", state)

    @staticmethod
    def load(path: str | Path) -> dict:
        return load_checkpoint(path, map_location="cpu")
