"""The Trainer's checkpoint state: what a checkpoint holds, and how it is loaded back (read to the
CPU; load_state_dict copies each part to where it belongs, so that RNG states stay CPU tensors even
when the model is on a GPU)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from advprune.checkpoint import rng_state, set_rng_state
from advprune.train.config import AttackConfig
from advprune.train.perturbation_memory import PerturbationMemory

if TYPE_CHECKING:
    from advprune.train.trainer import Trainer


def trainer_state(t: Trainer) -> dict:
    """Everything a resumed run needs to continue exactly: weights (and their average), optimiser, scaler,
    RNGs, pruner and tracker states, the epoch, the best validation accuracy, the guard and the attack as it
    is now, the perturbation memory."""
    return {
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "schedule": t.schedule.state_dict(),
        "scaler": t.step.scaler.state_dict(),
        "rng": rng_state(),
        "pruner": t.pruner.state_dict() if t.pruner is not None else None,
        "trackers": [tracker.state_dict() for tracker in t.trackers],
        "epoch": t.epoch,
        "best_val": t.best_val,
        "best_epoch": t.best_epoch,
        "guard": t.guard.state_dict(),
        "attack": dataclasses.asdict(t.attack),
        "perturbations": t.step.memory.state_dict() if t.step.memory is not None else None,
        "ema": t.step.average.state_dict() if t.step.average is not None else None,
        "meta": t.run.meta,
    }


def load_trainer_state(t: Trainer, state: dict, *, restoring: bool) -> None:
    """Loads a checkpoint's state into the trainer. A restore after a collapse (restoring=True) keeps the
    guard's record and the safer attack it chose."""
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.step.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    if state.get("pruner") is not None and t.pruner is not None:
        t.pruner.load_state_dict(state["pruner"])
    for tracker, saved in zip(t.trackers, state.get("trackers") or [], strict=False):
        if saved is not None:
            tracker.load_state_dict(saved)
    t.epoch, t.best_val, t.best_epoch = state["epoch"], state["best_val"], state.get("best_epoch")
    if state.get("perturbations") is not None:
        t.step.memory = PerturbationMemory.from_state(state["perturbations"], t.device, t.world.distributed)
    if state.get("ema") is not None and t.step.average is not None:
        t.step.average.load_state_dict(state["ema"])
    if not restoring:
        t.guard.load_state_dict(state["guard"])
        t.step.attack = AttackConfig(**state["attack"])


def resume_trainer(t: Trainer, path: str | Path | None = None) -> None:
    """Continues a run from its last.pt (or the checkpoint `path`): its state, best.pt checked against what
    last.pt records (and rebuilt where it can be), the metrics past the checkpoint dropped. A resume with
    another number of epochs is logged: the learning-rate schedule spans the new number from here on."""
    if t.folder.last is None:
        raise ValueError("resume=True needs the out_dir (RunConfig) of the run to continue")
    state = t.folder.load(path)
    load_trainer_state(t, state, restoring=False)
    if not t.folder.check_best(state):
        t.best_val, t.best_epoch = -1.0, None
    t.folder.forget_metrics_from(t.epoch)  # first: a torn last line must not swallow the next record
    saved_epochs = state["schedule"]["epochs"]
    if saved_epochs != t.epochs:
        t.log(
            {
                "event": f"resumed with {t.epochs} epochs (the run was started with {saved_epochs}): the "
                f"learning-rate schedule spans {t.epochs} epochs from here on"
            }
        )
