"""Pruning specs as the command line writes them: `random:0.2`, `balanced:0.2`,
`el2n:0.4`, `ccs:0.3`, `forgetting:0.5`, `dynamic:0.5`, `keep-hard:0.5`, `resample:0.2`, the seed paper's
`low:0.4`, `high:0.4` and `low+high:0.4` (by the adversarial loss), and the general
`hardest:0.4:SCORE`, `easiest:0.4:SCORE`, `both-ends:0.4:SCORE`, `ccs:0.3:SCORE`."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

# names of scores that rank hardest-first by themselves (files from `advprune score` or a training run)
SCORE_NAMES = (
    *("el2n", "grand", "loss", "entropy", "forgetting", "deepfool"),
    *("adv_el2n", "adv_grand", "adv_loss", "adv_entropy"),
)
STATIC = ("random", "balanced", "hardest", "easiest", "both-ends", "ccs")
# the seed paper's names (Kaufmann et al. 2022), ranked by the adversarial loss unless a score is given
PAPER_NAMES = {"low": "easiest", "high": "hardest", "low+high": "both-ends"}
DYNAMIC = ("dynamic", "keep-hard", "resample")
EXAMPLES = "random:0.2, balanced:0.2, el2n:0.4, ccs:0.3, forgetting:0.5, dynamic:0.5, keep-hard:0.5, resample:0.2"


@dataclass(frozen=True)
class PruneSpec:
    """method: a static selector or dynamic / keep-hard / resample; fraction: the share kept (for dynamic:
    the share of below-mean-loss samples dropped each epoch); score: the score a selector ranks by."""

    method: str
    fraction: float
    score: str | None = None

    @property
    def needs_scores(self) -> bool:
        return self.score is not None

    @property
    def is_dynamic(self) -> bool:
        return self.method in DYNAMIC


def parse_spec(text: str) -> PruneSpec:
    """A PruneSpec from `METHOD:FRACTION[:SCORE]`; ValueError naming what is wrong."""
    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"a prune spec is METHOD:FRACTION (e.g. {EXAMPLES}), got {text!r}")
    name, value = parts[0].lower(), parts[1]
    try:
        fraction = float(Fraction(value))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"prune spec {text!r}: {value!r} is not a number") from None
    if name == "dynamic":
        if not 0 <= fraction < 1:
            raise ValueError(f"dynamic:R drops a share R of the below-mean-loss samples: R in [0, 1), got {fraction}")
    elif not 0 < fraction <= 1:
        raise ValueError(f"prune spec {text!r}: the kept fraction must be in (0, 1], got {fraction}")
    score = parts[2].lower() if len(parts) == 3 else None
    if name in SCORE_NAMES:
        if score is not None:
            raise ValueError(f"prune spec {text!r}: {name} is the score already; write hardest:{value}:{score}")
        return PruneSpec("hardest", fraction, name)
    if name in PAPER_NAMES:
        name, score = PAPER_NAMES[name], score or "adv_loss"
    if name not in STATIC + DYNAMIC:
        known = ", ".join((*STATIC, *PAPER_NAMES, *DYNAMIC, *SCORE_NAMES))
        raise ValueError(f"prune spec {text!r}: unknown method {name!r} (known: {known})")
    if name in ("random", "balanced", *DYNAMIC):
        if score is not None:
            raise ValueError(f"prune spec {text!r}: {name} takes no score")
        return PruneSpec(name, fraction)
    score = score or "el2n"
    if score not in (*SCORE_NAMES, "margin", "confidence"):
        raise ValueError(f"prune spec {text!r}: unknown score {score!r} (known: {', '.join(SCORE_NAMES)})")
    return PruneSpec(name, fraction, score)
