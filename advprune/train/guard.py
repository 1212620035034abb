"""The catastrophic-overfitting guard (Wong et al. 2020: FGSM training can lose all PGD robustness
within an epoch): watches the robust validation accuracy and, when it falls by more than `drop`
from one validation to the next, says to restore the last checkpoint and continue with a safer
attack. An epoch is retried twice at most."""

from __future__ import annotations

from dataclasses import dataclass

from advprune.train.config import AttackConfig

MAX_RETRIES = 2


@dataclass(frozen=True)
class Collapse:
    """What the guard decided: the attack to continue with, the event to log, and whether to restore."""

    attack: AttackConfig
    event: str
    restore: bool


class OverfittingGuard:
    def __init__(self, drop: float) -> None:
        self.drop = drop
        self.last_val: float | None = None
        self.events: list[str] = []

    def check(self, epoch: int, robust: float, attack: AttackConfig, *, can_restore: bool) -> Collapse | None:
        """None when the robust accuracy held; else the Collapse (recorded in events)."""
        previous = self.last_val
        if previous is None or previous - robust <= self.drop or attack.kind == "clean":
            self.last_val = robust
            return None
        safer, change = attack.safer()
        retries = sum(e.startswith(f"epoch {epoch}:") for e in self.events)
        restore = can_restore and retries < MAX_RETRIES
        event = (
            f"epoch {epoch}: PGD accuracy fell from {previous:.3f} to {robust:.3f}; "
            f"{'restored the last checkpoint and ' if restore else ''}{change}"
        )
        self.events.append(event)
        if not restore:
            self.last_val = robust
        return Collapse(safer, event, restore)

    def state_dict(self) -> dict:
        return {"last_val": self.last_val, "events": list(self.events)}

    def load_state_dict(self, state: dict) -> None:
        self.last_val, self.events = state["last_val"], list(state["events"])
