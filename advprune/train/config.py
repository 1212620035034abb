"""The Trainer's options, grouped by what they configure: the training attack, the optimiser,
the per-epoch validation and the run itself. Each checks its values when made."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from advprune._checks import check_pixel_eps
from advprune.distributed import World

OBJECTIVES = ("pgd", "fgsm_rs", "n_fgsm", "trades", "clean")
SINGLE_STEP_NAMES = {"fgsm_rs": "FGSM-RS", "n_fgsm": "N-FGSM"}  # linf attacks of one signed step
SINGLE_STEP = tuple(SINGLE_STEP_NAMES)
NORMS = ("linf", "l2")
AMP_MODES = ("auto", "bf16", "fp16", None)
REUSE_STORAGES = ("int8", "bf16")  # how perturbation memory stores each perturbation


def _positive_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class AttackConfig:
    """The training attack. kind: pgd (Madry), fgsm_rs (Wong et al.), n_fgsm (de Jorge et al.: noise of 2 eps,
    no projection), trades (Zhang et al., with beta) or clean; eps and step_size in [0, 1] pixel space;
    step_size None takes each attack's usual step: 1.25 eps for fgsm_rs (Wong et al.), eps for n_fgsm,
    eps / 4 for pgd and trades. reuse: "int8" or "bf16" starts each
    sample's attack from its perturbation of the last epoch (ATTA; train/perturbation_memory.py, stored
    so), each sample drawing a fresh random start instead with probability reuse_refresh per epoch.
    eps_warmup: the training attack's eps and step ramp linearly from 0 over the first eps_warmup epochs
    (a curriculum: the young model first meets weaker perturbations); validation always uses the full eps."""

    kind: str = "pgd"
    eps: float = 8 / 255
    step_size: float | None = None
    steps: int = 10
    norm: str = "linf"
    beta: float = 6.0
    reuse: str | None = None
    reuse_refresh: float = 0.0
    eps_warmup: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ValueError(f"attack must be one of {OBJECTIVES}, got {self.kind!r}")
        if self.norm not in NORMS:
            raise ValueError(f'norm must be "linf" or "l2", got {self.norm!r}')
        if self.kind in SINGLE_STEP and self.norm != "linf":
            raise ValueError(f"{self.kind} is an linf attack: train l2 models with pgd or trades")
        _positive_number("eps", self.eps)
        check_pixel_eps("AttackConfig", self.eps, self.norm)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {self.steps!r}")
        if self.step_size is None:
            usual = {"fgsm_rs": 1.25 * self.eps, "n_fgsm": self.eps}
            object.__setattr__(self, "step_size", usual.get(self.kind, self.eps / 4))
        _positive_number("step_size", self.step_size)
        if self.reuse not in (*REUSE_STORAGES, None):
            raise ValueError(f"reuse must be one of {REUSE_STORAGES} or None, got {self.reuse!r}")
        if self.reuse is not None and self.kind == "clean":
            raise ValueError("reuse keeps each sample's adversarial perturbation: clean training has none")
        if self.reuse is not None and self.kind == "n_fgsm":
            raise ValueError("n_fgsm starts from fresh noise by design (and leaves the eps ball): reuse has no start")
        if not isinstance(self.reuse_refresh, (int, float)) or not 0 <= self.reuse_refresh <= 1:
            raise ValueError(f"reuse_refresh must be a probability in [0, 1], got {self.reuse_refresh!r}")
        _positive_number("eps_warmup", self.eps_warmup)

    def strength_at(self, progress: float) -> tuple[float, float]:
        """(eps, step_size) of the attack `progress` epochs into training (fractional: the step's place in its
        epoch counts): both scaled by progress / eps_warmup until the warm-up ends, then as configured."""
        if progress >= self.eps_warmup:
            return self.eps, self.step_size
        share = max(progress, 0.0) / self.eps_warmup
        return self.eps * share, self.step_size * share

    def safer(self) -> tuple[AttackConfig, str]:
        """The setting the overfitting guard switches to after a collapse, and what it did."""
        if self.kind in SINGLE_STEP:
            safer = replace(self, kind="pgd", steps=2, step_size=self.eps / 2)
            return safer, f"switched from {SINGLE_STEP_NAMES[self.kind]} to PGD-2"
        halved = replace(self, step_size=self.step_size / 2)
        return halved, f"halved the attack step to {halved.step_size:.5g}"


@dataclass(frozen=True)
class OptimConfig:
    """SGD (momentum, weight decay, Nesterov) and its learning-rate schedule (advprune.schedules). ema: keep
    an exponential moving average of the weights with this decay (e.g. 0.999; advprune.train.WeightAverage),
    saved in each checkpoint and evaluated by `advprune eval`; None: none."""

    lr: float = 0.1
    schedule: str = "piecewise"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    ema: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (0 < self.lr < math.inf):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        _positive_number("weight_decay", self.weight_decay)
        if isinstance(self.momentum, bool) or not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.ema is not None and (isinstance(self.ema, bool) or not 0 < self.ema < 1):
            raise ValueError(f"ema (the weight average's decay) must be in (0, 1), e.g. 0.999, got {self.ema!r}")

    def build(self, params) -> torch.optim.SGD:
        return torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, nesterov=self.nesterov
        )


@dataclass(frozen=True)
class ValidationConfig:
    """The check on the held-out data after each epoch: clean and PGD-steps accuracy (step eps / 4).
    It picks best.pt and guards against catastrophic overfitting: a fall of PGD accuracy by more than
    collapse_drop restores the last checkpoint and continues with a safer attack. every: validate
    every N epochs (and after the last)."""

    steps: int = 10
    every: int = 1
    collapse_drop: float = 0.2
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.steps < 1 or self.every < 1 or self.batch_size < 1:
            raise ValueError(f"validation steps, every and batch_size must be >= 1, got {self}")

    def due(self, epoch: int, epochs: int) -> bool:
        return (epoch + 1) % self.every == 0 or epoch + 1 == epochs


@dataclass(frozen=True)
class RunConfig:
    """Where and how the run executes. amp: "auto" (bfloat16 where the hardware computes it natively),
    "bf16", "fp16" or None. channels_last: None converts advprune's own models (in place) and leaves
    other models as they are, since a model that flattens with .view fails on channels_last
    activations; True or False decides for any model. out_dir: checkpoints and metrics.jsonl.

    world: the ranks (advprune.distributed.World; None: torchrun's environment, a single process
    without one). keyed_noise: the attacks' random starts drawn by sample id (ids.KeyedNoise), the
    same for a sample whatever the batch or rank; None: on under torch.distributed, so that N ranks
    give the one-process run with the same global batch. sync_batchnorm: BatchNorm statistics over
    the global batch under torch.distributed. tune_cpu_allocator: on a CPU device, keep freed memory in
    the process (advprune.cpu_allocator; glibc only) so that each step's temporaries are not page-faulted
    in again; the process then keeps its peak memory until it exits."""

    out_dir: str | Path | None = None
    seed: int = 0
    amp: str | None = "auto"
    channels_last: bool | None = None
    compile: bool = False
    device: str | torch.device | None = None
    quiet: bool = False
    meta: dict = field(default_factory=dict)
    world: World | None = None
    keyed_noise: bool | None = None
    sync_batchnorm: bool = False
    tune_cpu_allocator: bool = True

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
