"""A finished sweep run's model made again where its checkpoint is gone (a sweep folder copied or committed
without its .pt files), so that a [final] evaluation can still measure the very model its row measured.

The run trains once more, from its own options and seed, into REBUILDS/<run> beside the sweep's runs; its model
replaces nothing unless every epoch's training loss, adversarial accuracy, learning rate, sample count and
validation figures equal the run's own records exactly. A seeded run on one core reproduces itself bit for bit
on a machine of the same kind (checked: the Zen 4's and the Zen 5's runs of one preset log equal losses to the
last digit), so a difference means another model: it is named and the run's final evaluation waits.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from advprune._files import write_bytes_atomic
from advprune.train.run_folder import epoch_records, read_run_metrics

REBUILDS = "rebuilds"  # the sweep folder's subfolder where models are trained again
COMPARED = ("samples", "lr", "train_loss", "train_adv_acc", "val_clean_acc", "val_pgd_acc", "val_n")


def by_epoch(folder: Path) -> dict[int, dict]:
    """A run folder's per-epoch records by epoch (one each: a resume forgets the records past its checkpoint)."""
    return {record["epoch"]: record for record in epoch_records(read_run_metrics(folder))}


def first_difference(original: dict[int, dict], rebuilt: dict[int, dict]) -> str | None:
    """Where the rebuilt run's records first differ from the original's (epoch and field), None if nowhere."""
    if sorted(original) != sorted(rebuilt):
        return f"epochs {sorted(rebuilt)} against the run's {sorted(original)}"
    for epoch in sorted(original):
        for field in COMPARED:
            was, now = original[epoch].get(field), rebuilt[epoch].get(field)
            if was != now:
                return f"epoch {epoch} {field} {now!r} against the run's {was!r}"
    return None


def rebuild_model(
    run_folder: Path, scratch: Path, train: Callable[[Path], object], log: Callable[[str], object]
) -> bool:
    """Trains the run again into scratch (train(scratch): resumable, as the sweep trains its runs) and moves
    its last.pt into run_folder when every epoch record matches; writes run_folder/rebuilt.json saying how the
    model came back. False (logged, the rebuild kept for a look) when the records differ."""
    start = time.perf_counter()
    train(scratch)
    original = by_epoch(run_folder)
    difference = first_difference(original, by_epoch(scratch))
    if difference is not None:
        log(f"{run_folder.name}: the rebuilt model is another model ({difference}); its final evaluation waits "
            f"(the rebuild is in {scratch})")  # fmt: skip
        return False
    epochs = len(original)
    note = {
        "model": "trained again from the run's options and seed: every epoch record equal",
        "epochs_compared": epochs,
        "fields": list(COMPARED),
        "seconds": time.perf_counter() - start,  # not the run's wall time: that stays the original's
    }
    os.replace(scratch / "last.pt", run_folder / "last.pt")
    write_bytes_atomic(run_folder / "rebuilt.json", json.dumps(note).encode(), durable=True)
    shutil.rmtree(scratch)
    log(f"{run_folder.name}: model rebuilt ({epochs} epoch records equal)")
    return True
