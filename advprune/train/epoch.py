"""One epoch of the Trainer: the pruner's subset handed to the data (after the scoring pass it asked
for, if any), then every batch through the adversarial step, with the per-epoch record of metrics."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from advprune.data.augmentation import Augmentation
from advprune.ids import KeyedNoise, epoch_generator
from advprune.schedules import progress_in_epochs
from advprune.train.batches import check_batch_values, loader_batch_size, subset_control, unpack_batch
from advprune.train.scoring import run_scoring_pass

if TYPE_CHECKING:
    from advprune.train.trainer import Trainer


def select_subset(trainer: Trainer, train: Iterable, epoch: int) -> float:
    """Hands the pruner's ids of `epoch` to the data; returns the seconds of the scoring pass it asked for."""
    subset, pruner = subset_control(train), trainer.pruner
    if pruner is None or subset is None:
        return 0.0
    seconds = 0.0
    request = pruner.scoring_request(epoch)
    if request is not None:
        start = time.perf_counter()
        num_samples = subset.num_samples or int(request.ids.max()) + 1
        scores = run_scoring_pass(
            trainer.world,
            trainer.model,
            train,
            subset,
            request,
            num_samples=num_samples,
            attack=trainer.attack,
            autocast=trainer.step.autocast(),
            epoch=epoch,
            seed=trainer.run.seed,
            device=trainer.device,
        )
        pruner.set_scores(scores)
        seconds = time.perf_counter() - start
    ids = pruner.epoch_indices(epoch, subset.num_samples)
    if ids is not None:
        subset.set_indices(ids)
    return seconds


def _progress(train: Iterable, epoch: int, total: int | None, quiet: bool) -> Iterable:
    if quiet or not sys.stderr.isatty():
        return train
    from tqdm import tqdm

    return tqdm(train, total=total, desc=f"epoch {epoch}", leave=False)


def _noise(trainer: Trainer, generator: torch.Generator, ids: torch.Tensor, epoch: int):
    """The attack's random starts: the epoch's generator, or noise keyed by sample id (ids.KeyedNoise)."""
    return KeyedNoise(ids, trainer.run.seed, epoch) if trainer.keyed_noise else generator


def _augmentation(trainer: Trainer, train: Iterable, x: torch.Tensor, subset) -> Augmentation | None:
    """The batch's crop and flip as the loader reports it, when perturbation memory needs it (the memory is
    made at the first batch, for the loader's ids and the batch's padded frame). fit has checked that the
    loader reports its augmentation, and such a loader (the in-memory one) knows its number of ids."""
    if trainer.attack.reuse is None:
        return None
    trainer.step.ensure_memory(subset.num_samples, x, train.last_augmentation)
    return train.last_augmentation


def run_epoch(trainer: Trainer, train: Iterable, epoch: int) -> dict:
    """Trains one epoch; returns its record (samples, loss, adversarial accuracy, seconds by phase), over all
    ranks (sums; seconds: the slowest rank's). The learning rate follows the step's progress in epochs; data
    of unknown length use the previous epoch's step count (the first epoch keeps its start rate)."""
    scoring_pass_seconds = select_subset(trainer, train, epoch)
    subset = subset_control(train)
    if subset is not None:
        subset.set_epoch(epoch)  # the order follows the epoch, also after a resume
    t = trainer
    generator = epoch_generator(t.run.seed, epoch, t.device)
    timing = {"data": 0.0, "attack": 0.0, "update": 0.0, "scoring": 0.0}
    steps_in_epoch = len(train) if hasattr(train, "__len__") else t.steps_per_epoch
    observers = [h for h in (t.pruner, *t.trackers) if h is not None]
    batch_size, lr = loader_batch_size(train), t.schedule.lr_at(epoch)
    memory_format = t.memory_format or torch.preserve_format
    samples, steps = 0, 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=t.device)  # kept on the device: read once per epoch
    correct = torch.zeros((), dtype=torch.int64, device=t.device)
    start = tick = time.perf_counter()
    for steps, batch in enumerate(_progress(train, epoch, steps_in_epoch, t.folder.quiet), start=1):
        x, y, ids = unpack_batch(batch)
        x = x.to(t.device, memory_format=memory_format, non_blocking=True)
        y, ids = y.to(t.device, non_blocking=True), ids.to(t.device, non_blocking=True)
        if steps == 1:
            check_batch_values(t.model, x, y)
        timing["data"] += time.perf_counter() - tick
        lr = t.schedule.apply(t.optimizer, epoch, steps - 1, steps_in_epoch)
        t.step.progress = progress_in_epochs(epoch, steps - 1, steps_in_epoch)
        weights = t.pruner.weights(ids) if t.pruner is not None else None
        augmentation = _augmentation(t, train, x, subset)
        per_sample, logits = t.step(
            x,
            y,
            ids,
            generator=_noise(t, generator, ids, epoch),
            weights=weights,
            batch_size=batch_size,
            observers=observers,
            timing=timing,
            epoch=epoch,
            augmentation=augmentation,
        )
        samples += len(y)
        loss_sum += per_sample.sum(dtype=torch.float64)
        correct += (logits.argmax(1) == y).sum()
        tick = time.perf_counter()
    if steps == 0:
        raise ValueError(f"the training data served no batch in epoch {epoch}: an empty loader or subset")
    t.step.check_finite(epoch)
    if t.step.memory is not None:
        t.step.memory.share_ranks(t.world)
    t.steps_per_epoch = steps or t.steps_per_epoch
    elapsed = [time.perf_counter() - start, scoring_pass_seconds, *timing.values()]
    seconds = t.world.max(torch.tensor(elapsed, dtype=torch.float64)).tolist()
    totals = torch.tensor([samples, float(loss_sum), int(correct)], dtype=torch.float64)
    samples, loss_sum, correct = t.world.sum(totals).tolist()
    record = {
        "epoch": epoch,
        "seconds": seconds[0],
        "samples": int(samples),
        "lr": lr,
        "train_loss": loss_sum / max(samples, 1),
        "train_adv_acc": correct / max(samples, 1),
        **{f"{k}_seconds": v for k, v in zip(timing, seconds[2:], strict=True)},
    }
    if scoring_pass_seconds:
        record["scoring_pass_seconds"] = seconds[1]
    return record
