"""Fault points for the crash tests: with ADVPRUNE_FAULT=NAME (or NAME@COUNT) in the environment, the
process kills itself with SIGKILL when it reaches the point NAME (when the point's count is COUNT), as
a scheduler, a preemption or the OOM killer would. Unset, a point costs one dictionary lookup."""

from __future__ import annotations

import os
import signal


def armed(name: str, count: int | None = None) -> bool:
    """Whether the fault at this point (and this count, e.g. the epoch) is asked for."""
    wanted = os.environ.get("ADVPRUNE_FAULT")
    if not wanted:
        return False
    point, _, at = wanted.partition("@")
    return point == name and (not at or (count is not None and int(at) == count))


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def fault_point(name: str, count: int | None = None) -> None:
    if armed(name, count):
        die()
