"""advprune: fast adversarial training on pruned data."""

from __future__ import annotations

__version__ = "0.1.0"

from advprune import ops
from advprune.ops import build_info

__all__ = ["__version__", "build_info", "ops"]
