"""The Trainer: the thin loop that orchestrates data, attack, optimiser, schedule, pruner,
validation, checkpoints and metrics. It is the one place that knows them all; each part lives in
its own module (step, guard, run_folder, scoring, batches, config)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from advprune.cpu_allocator import tune_cpu_allocator
from advprune.distributed import World
from advprune.evaluate import evaluate
from advprune.pruning.protocol import BatchObserver, Pruner, missing_methods
from advprune.schedules import LRSchedule
from advprune.train.amp import resolve_amp
from advprune.train.batches import loader_batch_size, subset_control
from advprune.train.config import AttackConfig, OptimConfig, RunConfig, ValidationConfig
from advprune.train.epoch import run_epoch
from advprune.train.guard import OverfittingGuard
from advprune.train.placement import place
from advprune.train.run_folder import RunFolder
from advprune.train.state import load_trainer_state, resume_trainer, trainer_state
from advprune.train.step import AdversarialStep
from advprune.train.weight_average import WeightAverage


def _check_hooks(pruner: object | None, trackers: Sequence[object]) -> None:
    for hook, protocol, name in [(pruner, Pruner, "pruner"), *((t, BatchObserver, "tracker") for t in trackers)]:
        if hook is not None and not isinstance(hook, protocol):
            missing = ", ".join(missing_methods(hook, protocol))
            raise TypeError(
                f"the {name} {type(hook).__name__} lacks {missing} (see advprune.pruning.{protocol.__name__})"
            )


def _check_reuse(attack: AttackConfig, train: Iterable) -> None:
    """Perturbation memory needs each batch's crop and flip."""
    if attack.reuse is None:
        return
    if not getattr(train, "reports_augmentation", False):
        raise TypeError(
            f"reuse (perturbation memory) maps each stored perturbation through the batch's crop and flip, "
            f"which {type(train).__name__} does not report: serve the data with advprune's in-memory loader "
            "(make_loader(..., backend='memory'))"
        )


class Trainer:
    """Adversarial training of `model` (see AttackConfig, OptimConfig, RunConfig, ValidationConfig).

    With channels_last (RunConfig: by default for advprune's own models) the model is converted in
    place: the caller's object becomes channels_last too. A user optimiser keeps its parameter groups;
    the schedule scales each group's own rate. pruner: advprune.pruning.Pruner; trackers: BatchObservers.
    """

    def __init__(
        self,
        model: nn.Module,
        attack: AttackConfig | None = None,
        *,
        epochs: int,
        optim: OptimConfig | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        run: RunConfig | None = None,
        validation: ValidationConfig | None = None,
        pruner: Pruner | None = None,
        trackers: Sequence[BatchObserver] = (),
    ) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        _check_hooks(pruner, trackers)
        attack, optim, self.run = attack or AttackConfig(), optim or OptimConfig(), run or RunConfig()
        self.validation = validation or ValidationConfig()
        self.world = self.run.world or World.from_environment()
        placed = place(model, self.run, self.world)
        self.model, self.device, self.memory_format = placed.model, placed.device, placed.memory_format
        if self.device.type == "cpu" and self.run.tune_cpu_allocator:
            tune_cpu_allocator()
        self.optimizer = optimizer or optim.build(self.model.parameters())
        base_lr = self.optimizer.param_groups[0]["lr"] if optimizer is not None else optim.lr
        self.epochs, self.schedule = epochs, LRSchedule(optim.schedule, base_lr, epochs)
        amp_dtype = resolve_amp(self.run.amp, self.device)
        self.step = AdversarialStep(self.model, placed.attack_forward, placed.train_forward, attack, self.optimizer,
                                    amp_dtype, self.device, self.world)  # fmt: skip
        if optim.ema is not None:
            self.step.average = WeightAverage(self.model, optim.ema)
        self.keyed_noise = self.world.distributed if self.run.keyed_noise is None else self.run.keyed_noise
        self.pruner, self.trackers = pruner, list(trackers)
        self.guard = OverfittingGuard(self.validation.collapse_drop)
        self.folder = RunFolder(self.run.out_dir, self.run.quiet or not self.world.is_main, writer=self.world.is_main)
        self.epoch, self.best_val, self.best_epoch, self.steps_per_epoch = 0, -1.0, None, None

    @property
    def attack(self) -> AttackConfig:
        """The training attack now (the overfitting guard may have made it safer)."""
        return self.step.attack

    @property
    def final_model(self) -> nn.Module:
        """The weights to evaluate: their average (OptimConfig.ema) when kept, else the model's own."""
        return self.step.average.model if self.step.average is not None else self.model

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self.step.amp_dtype

    def log(self, record: dict) -> None:
        """Appends a record that is not an epoch (e.g. {"phase": "setup", ...}) to metrics.jsonl."""
        self.folder.append(record)

    def fit(
        self,
        train: Iterable,
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        resume: bool = False,
        resume_from: str | Path | None = None,
    ):
        """Trains for the remaining epochs. train yields (x, y, ids) batches (an advprune loader, a DataLoader
        over advprune.data.with_ids(dataset), ...); val is held-out data (x, y), never trained on, for the
        per-epoch check (best.pt, the overfitting guard). resume=True continues from out_dir/last.pt (or from
        the checkpoint resume_from). The run folder is this process's alone while it trains (RunFolderBusy)."""
        subset = subset_control(train)
        if subset is None and (self.pruner is not None or self.world.distributed):
            need = "each rank serves its share of" if self.world.distributed else "the pruner chooses"
            raise TypeError(
                f"{need} each epoch's samples, but the training data ({type(train).__name__}) cannot change its "
                "subset: use an advprune loader (make_loader) or a DataLoader with "
                "sampler=advprune.pruning.PrunedSampler(..., num_samples=N)"
            )
        _check_reuse(self.attack, train)
        if self.world.distributed:
            subset.set_shard(self.world.rank, self.world.size, loader_batch_size(train) or 1)
        resume = resume or resume_from is not None
        self.folder.open(resume=resume)
        try:
            if resume:
                resume_trainer(self, resume_from)
            self._train(train, val)
        finally:
            self.folder.close()
        return self

    def _train(self, train: Iterable, val: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        while self.epoch < self.epochs:
            epoch = self.epoch
            record = run_epoch(self, train, epoch)
            if val is not None and self.validation.due(epoch, self.epochs):
                record.update(self._validate(val))
                can_restore = self.folder.has_checkpoint()
                collapse = self.guard.check(epoch, record["val_pgd_acc"], self.attack, can_restore=can_restore)
                if collapse is not None:
                    self.folder.append({**record, "event": collapse.event})
                    self.step.attack = collapse.attack
                    if collapse.restore:
                        load_trainer_state(self, self.folder.load(self.folder.last), restoring=True)
                        continue  # the epoch runs again, safer
            self.epoch = epoch + 1
            self._save(record)

    def _validate(self, val: tuple[torch.Tensor, torch.Tensor]) -> dict:
        """Clean and PGD accuracy on the held-out data (each rank its share, the counts summed)."""
        x, y = val
        a, v = self.attack, self.validation
        result = evaluate(
            self.model,
            x,
            y,
            attack="pgd",
            eps=a.eps,
            step_size=a.eps / 4,
            steps=v.steps,
            norm=a.norm,
            batch_size=v.batch_size,
            seed=self.run.seed,
            world=self.world,
            memory_format=self.memory_format,
        )
        return {"val_clean_acc": result["clean_acc"], "val_pgd_acc": result["robust_acc"], "val_n": result["n"]}

    # ----------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        return trainer_state(self)

    def _save(self, record: dict) -> None:
        self.folder.append(record)
        robust = record.get("val_pgd_acc")
        is_best = robust is not None and robust > self.best_val  # early stopping by robust accuracy (Rice)
        if is_best:
            self.best_val, self.best_epoch = robust, self.epoch
        # rank 0 writes; alone, on a worker thread while the next epoch trains (a restore waits for it); under
        # torch.distributed before the barrier, so that no rank reads a checkpoint that rank 0 is still writing
        self.folder.save(self.state_dict(), best=is_best, background=not self.world.distributed)
        self.world.barrier()
