"""Optional dependencies: imported where they are needed, with a one-line error that names the
package and the pip extra that installs it."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingDependency(ImportError):
    """An optional package that a feature needs is not installed."""


def load_toml(text: str, *, purpose: str) -> dict:
    """TOML text as a dict: tomllib, or tomli on Python 3.10 (the `toml` extra)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = require("tomli", extra="toml", purpose=f"{purpose} on Python 3.10")
    return tomllib.loads(text)


def require_installed(package: str, *, extra: str, purpose: str) -> None:
    """MissingDependency (as require) unless `package` is installed, without importing it: for a process
    that only hands the work to a child (importing ffcv here starts numba's TBB layer, whose teardown at
    exit could hang this process forever once a signal had cut its child short)."""
    if importlib.util.find_spec(package) is None:
        raise MissingDependency(f"{purpose} needs {package}, which is not installed: pip install 'advprune[{extra}]'")


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """import `module`, or MissingDependency saying which feature needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise MissingDependency(
            f"{purpose} needs {package}, which is not installed: pip install 'advprune[{extra}]' ({exc})"
        ) from exc
