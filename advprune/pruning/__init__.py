"""advprune.pruning: static selectors (scores in, kept ids out), dynamic pruners fed with
the training step's adversarial losses, a Sampler for any DataLoader, and .npy selections."""

from advprune.pruning.dynamic import DynamicPruner, KeepHardPruner, LossMemory
from advprune.pruning.sampler import PrunedSampler, load_indices, save_indices
from advprune.pruning.select import METHODS, class_quotas, hardness, kept_count, select
from advprune.pruning.spec import PruneSpec, parse_spec
from advprune.pruning.warmup import WarmupSelector

__all__ = [
    "METHODS",
    "DynamicPruner",
    "KeepHardPruner",
    "LossMemory",
    "PruneSpec",
    "PrunedSampler",
    "WarmupSelector",
    "class_quotas",
    "hardness",
    "kept_count",
    "load_indices",
    "parse_spec",
    "save_indices",
    "select",
]
