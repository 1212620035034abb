"""Optional dependencies: imported where they are needed, with a one-line error that names the
package and the pip extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependency(ImportError):
    """An optional package that a feature needs is not installed."""


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """import `module`, or MissingDependency saying which feature needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise MissingDependency(
            f"{purpose} needs {package}, which is not installed: pip install 'advprune[{extra}]' ({exc})"
        ) from exc
