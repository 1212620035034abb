"""advprune.train: the Trainer and its parts (one step, the epoch loop, the overfitting guard, the
run folder, checkpoint state), and the configs that group its options."""

from advprune.train.amp import cpu_has_native_bf16, resolve_amp
from advprune.train.config import OBJECTIVES, AttackConfig, OptimConfig, RunConfig, ValidationConfig
from advprune.train.step import TrainingDiverged
from advprune.train.trainer import Trainer
from advprune.train.weight_average import WeightAverage

__all__ = [
    "OBJECTIVES",
    "AttackConfig",
    "OptimConfig",
    "RunConfig",
    "Trainer",
    "TrainingDiverged",
    "ValidationConfig",
    "WeightAverage",
    "cpu_has_native_bf16",
    "resolve_amp",
]
