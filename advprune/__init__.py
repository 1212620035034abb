"""advprune: fast adversarial training on pruned data."""

from __future__ import annotations

__version__ = "0.1.0"

from advprune import attacks, models, ops, pruning, scores
from advprune.cpu_allocator import tune_cpu_allocator
from advprune.ops import build_info
from advprune.train import AttackConfig, OptimConfig, RunConfig, Trainer, ValidationConfig

__all__ = [
    "AttackConfig",
    "OptimConfig",
    "RunConfig",
    "Trainer",
    "ValidationConfig",
    "__version__",
    "attacks",
    "build_info",
    "models",
    "ops",
    "pruning",
    "scores",
    "tune_cpu_allocator",
]
