"""advprune.pruning: static selectors (scores in, kept ids out), dynamic pruners fed with the
training step's adversarial losses, in-run selection, a Sampler for any DataLoader, .npy selections,
and the Pruner protocol that says what a pruner offers a training loop."""

from advprune.ids import class_quotas
from advprune.pruning.dynamic import DynamicPruner, KeepHardPruner, LossMemory
from advprune.pruning.protocol import BatchObserver, Pruner, PrunerBase, ScoringRequest
from advprune.pruning.sampler import PrunedSampler, PrunerSampler, load_indices, save_indices
from advprune.pruning.select import METHODS, hardness, kept_count, select
from advprune.pruning.spec import PruneSpec, parse_spec
from advprune.pruning.warmup import WarmupSelector

__all__ = [
    "METHODS",
    "BatchObserver",
    "DynamicPruner",
    "KeepHardPruner",
    "LossMemory",
    "PruneSpec",
    "PrunedSampler",
    "Pruner",
    "PrunerBase",
    "PrunerSampler",
    "ScoringRequest",
    "WarmupSelector",
    "class_quotas",
    "hardness",
    "kept_count",
    "load_indices",
    "parse_spec",
    "save_indices",
    "select",
]
