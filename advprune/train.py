"""Trainer: the thin loop that orchestrates loader, attack, optimiser, schedule,
pruner hook, checkpoints and metrics. It is the one place that knows them all.

A pruner (any object) may have:
  - epoch_indices(epoch, num_samples) -> ids or None: the subset to train on this epoch
    (the loader's set_indices receives it);
  - weights(ids) -> per-sample loss weights or None;
  - on_batch(ids, scores, adv_loss): ids, ops.sample_scores of the logits the step already
    computed, and the per-sample adversarial loss (no extra forward pass);
  - state_dict() / load_state_dict(state): saved in the checkpoints.
Trackers (e.g. scores.ForgettingTracker) get the same on_batch call and are saved too.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from advprune import attacks, ops
from advprune._files import write_atomic
from advprune.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from advprune.data.subset import epoch_generator
from advprune.schedules import LRSchedule

OBJECTIVES = ("pgd", "fgsm_rs", "trades", "clean")
AMP_MODES = ("auto", "bf16", "fp16", None)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf: the run stopped, its last good checkpoint is kept."""


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: CPUs that compute bfloat16 natively."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: "auto" is bfloat16 where the hardware computes it natively, else float32."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]


class _Subset:
    """What the trainer needs of data whose subset changes: set_indices, set_epoch, num_samples."""

    def __init__(self, owner, num_samples: int | None, set_epoch) -> None:
        self.set_indices, self.num_samples, self.set_epoch = owner.set_indices, num_samples, set_epoch


def _subset_of(train) -> _Subset | None:
    """An advprune loader, or a DataLoader over a PrunedSampler; None for other iterables."""
    if hasattr(train, "set_indices") and hasattr(train, "schedule"):
        return _Subset(train, train.schedule.n, lambda e: setattr(train.schedule, "epoch", e))
    sampler = getattr(train, "sampler", None)
    if hasattr(sampler, "set_indices") and hasattr(sampler, "set_epoch"):
        return _Subset(sampler, getattr(sampler, "num_samples", None), sampler.set_epoch)
    return None


class Trainer:
    """Adversarial training of `model` with one of the objectives pgd (Madry), fgsm_rs (Wong),
    trades (Zhang, with beta) or clean. eps and step sizes are in [0, 1] pixel space."""

    def __init__(
        self,
        model: nn.Module,
        *,
        attack: str = "pgd",
        eps: float,
        step_size: float,
        steps: int,
        epochs: int,
        optimizer: torch.optim.Optimizer | None = None,
        lr: float = 0.1,
        lr_schedule: str = "piecewise",
        weight_decay: float = 5e-4,
        beta: float = 6.0,
        amp: str | None = "auto",
        channels_last: bool = True,
        compile: bool = False,
        device: str | torch.device | None = None,
        out_dir: str | Path | None = None,
        seed: int = 0,
        pruner: object | None = None,
        trackers: Sequence[object] = (),
        val_steps: int = 10,
        collapse_drop: float = 0.2,
        quiet: bool = False,
        meta: dict | None = None,
    ) -> None:
        if attack not in OBJECTIVES:
            raise ValueError(f"attack must be one of {OBJECTIVES}, got {attack!r}")
        if epochs < 1 or steps < 0:
            raise ValueError(f"epochs must be >= 1 and steps >= 0, got epochs={epochs}, steps={steps}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.forward = torch.compile(self.model) if compile else self.model
        self.attack, self.eps, self.step_size, self.steps = attack, eps, step_size, steps
        self.epochs, self.beta, self.seed = epochs, beta, seed
        self.optimizer = optimizer or torch.optim.SGD(
            self.model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True
        )
        base_lr = self.optimizer.param_groups[0]["lr"] if optimizer is not None else lr
        self.schedule = LRSchedule(lr_schedule, base_lr, epochs)
        self.amp_dtype = resolve_amp(amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.pruner = pruner
        self.trackers = list(trackers)
        self.val_steps = val_steps
        self.collapse_drop = collapse_drop
        self.quiet = quiet
        self.meta = dict(meta or {})  # saved in checkpoints: what `advprune eval` needs to rebuild the model
        self.epoch = 0
        self.best_val = -1.0
        self.last_val = None
        self.events: list[str] = []

    # ------------------------------------------------------------ one step

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        kw = dict(eps=self.eps, generator=generator)
        with self._autocast():
            if self.attack == "pgd":
                return attacks.pgd(self.forward, x, y, step_size=self.step_size, steps=self.steps, **kw)
            if self.attack == "fgsm_rs":
                return attacks.fgsm_rs(self.forward, x, y, step_size=self.step_size, **kw)
            if self.attack == "trades":
                return attacks.trades_perturb(self.forward, x, step_size=self.step_size, steps=self.steps, **kw)
        return x

    def train_step(
        self, x, y, ids, generator: torch.Generator, timing: dict, batch_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on the adversarial batch; returns (per-sample loss, logits). The loss is
        the sum over the batch divided by batch_size (the loader's, default len(y)), so that a short last
        batch (common on pruned data) moves the weights in proportion to its samples, not as a full one."""
        t0 = time.perf_counter()
        x_adv = self._perturb(x, y, generator)
        t1 = time.perf_counter()
        self.model.train()
        with self._autocast():
            logits = self.forward(x_adv)
            if self.attack == "trades":
                per_sample, _ = attacks.trades_loss(self.forward(x), logits, y, self.beta)
            else:
                per_sample = F.cross_entropy(logits.float(), y, reduction="none")
        weights = self.pruner.weights(ids) if hasattr(self.pruner, "weights") else None
        weighted = per_sample * weights.to(per_sample) if weights is not None else per_sample
        loss = weighted.sum() / max(batch_size or 0, len(y))
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss.item()} at epoch {self.epoch}: lower the learning rate or "
                "use amp=None; the last good checkpoint is kept"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        t2 = time.perf_counter()
        hooks = [h for h in (self.pruner, *self.trackers) if hasattr(h, "on_batch")]
        if hooks:
            scores, adv_loss = ops.sample_scores(logits.detach(), y), per_sample.detach()
            for hook in hooks:
                hook.on_batch(ids, scores, adv_loss)
        t3 = time.perf_counter()
        timing["attack"] += t1 - t0
        timing["update"] += t2 - t1
        timing["scoring"] += t3 - t2
        return per_sample.detach(), logits.detach()

    # --------------------------------------------------------------- epochs

    def fit(self, train: Iterable, val: tuple[torch.Tensor, torch.Tensor] | None = None, *, resume: bool = False):
        """Trains for the remaining epochs. train yields (x, y, ids) batches (an advprune loader,
        or any iterable); val is a fixed held-out batch (x, y) for clean and PGD accuracy.
        resume=True continues from out_dir/last.pt."""
        if hasattr(self.pruner, "epoch_indices") and _subset_of(train) is None:
            raise TypeError(
                f"the pruner chooses each epoch's samples, but the training data ({type(train).__name__}) cannot "
                "change its subset: use an advprune loader (make_loader) or a DataLoader with "
                "sampler=advprune.pruning.PrunedSampler(..., num_samples=N)"
            )
        if resume:
            if self._path("last.pt") is None:
                raise ValueError("resume=True needs the out_dir of the run to continue")
            self.load(self._path("last.pt"))
            self._forget_metrics_from(self.epoch)
        while self.epoch < self.epochs:
            epoch = self.epoch
            record = self._run_epoch(train, epoch)
            if val is not None:
                record.update(self._validate(val))
                if self._collapsed(record):
                    continue  # restored the state before this epoch; it runs again, safer
            self.epoch = epoch + 1
            self._save(record)
        return self

    def _run_epoch(self, train: Iterable, epoch: int) -> dict:
        subset = _subset_of(train)
        if hasattr(self.pruner, "epoch_indices") and subset is not None:
            ids = self.pruner.epoch_indices(epoch, subset.num_samples)
            if ids is not None:
                subset.set_indices(ids)
        if subset is not None:
            subset.set_epoch(epoch)  # the order follows the epoch, also after a resume
        generator = epoch_generator(self.seed, epoch, self.device)
        timing = {"data": 0.0, "attack": 0.0, "update": 0.0, "scoring": 0.0}
        steps_in_epoch = len(train) if hasattr(train, "__len__") else 0
        samples, loss_sum, correct = 0, 0.0, 0
        batch_size = getattr(getattr(train, "schedule", None), "batch_size", None) or getattr(train, "batch_size", None)
        start = time.perf_counter()
        tick = start
        batches = train if self.quiet else self._progress(train, epoch, steps_in_epoch)
        for step, (x, y, ids) in enumerate(batches):
            x = x.to(self.device, memory_format=self.memory_format, non_blocking=True)
            y, ids = y.to(self.device, non_blocking=True), ids.to(self.device, non_blocking=True)
            timing["data"] += time.perf_counter() - tick
            lr = self.schedule.apply(self.optimizer, epoch, step, steps_in_epoch or step + 1)
            per_sample, logits = self.train_step(x, y, ids, generator, timing, batch_size)
            samples += len(y)
            loss_sum += float(per_sample.sum())
            correct += int((logits.argmax(1) == y).sum())
            tick = time.perf_counter()
        seconds = time.perf_counter() - start
        return {
            "epoch": epoch,
            "seconds": seconds,
            "samples": samples,
            "lr": lr if samples else self.schedule.lr_at(epoch),
            "train_loss": loss_sum / max(samples, 1),
            "train_adv_acc": correct / max(samples, 1),
            **{f"{k}_seconds": v for k, v in timing.items()},
        }

    def _progress(self, train, epoch: int, total: int):
        import sys

        if not sys.stderr.isatty():
            return train
        from tqdm import tqdm

        return tqdm(train, total=total or None, desc=f"epoch {epoch}", leave=False)

    @torch.no_grad()
    def _validate(self, val: tuple[torch.Tensor, torch.Tensor]) -> dict:
        x, y = (t.to(self.device) for t in val)
        x = x.contiguous(memory_format=self.memory_format)
        self.model.eval()
        clean = float((self.model(x).argmax(1) == y).float().mean())
        with torch.enable_grad():
            x_adv = attacks.pgd(self.model, x, y, eps=self.eps, step_size=self.eps / 4, steps=self.val_steps,
                                generator=torch.Generator(device=self.device).manual_seed(self.seed))  # fmt: skip
        robust = float((self.model(x_adv).argmax(1) == y).float().mean())
        return {"val_clean_acc": clean, "val_pgd_acc": robust}

    def _collapsed(self, record: dict) -> bool:
        """Catastrophic overfitting (a drop of more than collapse_drop in PGD accuracy): restore
        the last checkpoint and continue with a safer setting; recorded in the metrics."""
        previous = self.last_val
        now = record["val_pgd_acc"]
        if previous is None or previous - now <= self.collapse_drop or self.attack == "clean":
            self.last_val = now
            return False
        if self.attack == "fgsm_rs":
            self.attack, self.steps, self.step_size = "pgd", 2, self.eps / 2
            change = "switched from FGSM-RS to PGD-2"
        else:
            self.step_size /= 2
            change = f"halved the attack step to {self.step_size:.5g}"
        last = self._path("last.pt")
        retries = sum(e.startswith(f"epoch {record['epoch']}:") for e in self.events)
        restore = last is not None and last.is_file() and retries < 2  # an epoch is retried twice at most
        event = (
            f"epoch {record['epoch']}: PGD accuracy fell from {previous:.3f} to {now:.3f}; "
            f"{'restored the last checkpoint and ' if restore else ''}{change}"
        )
        self.events.append(event)
        self._append_metrics({**record, "event": event})
        if not restore:
            self.last_val = now
            return False
        attack, steps, step_size = self.attack, self.steps, self.step_size
        self.load(last)
        self.attack, self.steps, self.step_size = attack, steps, step_size
        return True

    # ---------------------------------------------------------- checkpoints

    def _path(self, name: str) -> Path | None:
        return self.out_dir / name if self.out_dir is not None else None

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "pruner": self.pruner.state_dict() if hasattr(self.pruner, "state_dict") else None,
            "trackers": [t.state_dict() if hasattr(t, "state_dict") else None for t in self.trackers],
            "epoch": self.epoch,
            "best_val": self.best_val,
            "last_val": self.last_val,
            "attack": {"kind": self.attack, "steps": self.steps, "step_size": self.step_size},
            "meta": self.meta,
        }

    def load(self, path: str | Path) -> None:
        """Continues from a checkpoint written by this trainer."""
        state = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule = LRSchedule.from_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        if state.get("pruner") is not None and hasattr(self.pruner, "load_state_dict"):
            self.pruner.load_state_dict(state["pruner"])
        for tracker, saved in zip(self.trackers, state.get("trackers") or [], strict=False):
            if saved is not None and hasattr(tracker, "load_state_dict"):
                tracker.load_state_dict(saved)
        self.epoch, self.best_val, self.last_val = state["epoch"], state["best_val"], state["last_val"]
        attack = state["attack"]
        self.attack, self.steps, self.step_size = attack["kind"], attack["steps"], attack["step_size"]

    def _save(self, record: dict) -> None:
        self._append_metrics(record)
        robust = record.get("val_pgd_acc")
        is_best = robust is not None and robust > self.best_val  # early stopping by robust accuracy (Rice)
        if is_best:
            self.best_val = robust
        if self.out_dir is None:
            return
        state = self.state_dict()
        save_checkpoint(self.out_dir / "last.pt", state)
        if is_best:
            save_checkpoint(self.out_dir / "best.pt", state)

    def _forget_metrics_from(self, epoch: int) -> None:
        """Drops the metrics of epochs from `epoch` on (a killed run may have logged one past its checkpoint)."""
        path = self._path("metrics.jsonl")
        if path is None or not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("epoch", -1) < epoch]
        write_atomic(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))

    def log(self, record: dict) -> None:
        """Appends a record that is not an epoch (e.g. {"phase": "scoring", "scoring_seconds": ...})."""
        self._append_metrics(record)

    def _append_metrics(self, record: dict) -> None:
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()}
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(clean) + "\n")
        if not self.quiet:
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in clean.items() if "seconds" not in k}
            print(json.dumps(shown), flush=True)
