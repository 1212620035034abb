"""The Trainer's checkpoint state: what a checkpoint holds, and how it is loaded back (read to the
CPU; load_state_dict copies each part to where it belongs, so that RNG states stay CPU tensors even
when the model is on a GPU)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from advprune.checkpoint import rng_state, set_rng_state
from advprune.train.config import AttackConfig

if TYPE_CHECKING:
    from advprune.train.trainer import Trainer


def trainer_state(t: Trainer) -> dict:
    """Everything a resumed run needs to continue exactly: weights, optimiser, scaler, RNGs, pruner and
    tracker states, the epoch, the best validation accuracy, the guard and the attack as it is now."""
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
        "guard": t.guard.state_dict(),
        "attack": dataclasses.asdict(t.attack),
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
    t.epoch, t.best_val = state["epoch"], state["best_val"]
    if not restoring:
        t.guard.load_state_dict(state["guard"])
        t.step.attack = AttackConfig(**state["attack"])
