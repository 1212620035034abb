"""advprune's warnings: one category, so that the command can print each as one line."""

from __future__ import annotations

import warnings


class AdvpruneWarning(UserWarning):
    """Something was repaired or dropped, and the run went on: what, where, and what it means."""


def warn(message: str) -> None:
    warnings.warn(message, AdvpruneWarning, stacklevel=3)


def one_line_format(message, category, filename, lineno, line=None) -> str:
    """warnings.formatwarning for the command: advprune's own warnings as "advprune: warning: ..."."""
    if issubclass(category, AdvpruneWarning):
        return f"advprune: warning: {message}\n"
    return f"{filename}:{lineno}: {category.__name__}: {message}\n"
