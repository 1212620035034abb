"""AutoAttack (Croce and Hein 2020), standard version, with the official settings, built from
torchattacks' implementations of its four attacks: APGD-CE and APGD-T (100 iterations, 9 target
classes), FAB-T (100 iterations, 9 target classes) and Square (5,000 queries, p_init 0.8, the
official schedule). Each stage attacks only the samples that every earlier stage left correctly
classified, as the official run_standard_evaluation does; robust accuracy is recorded per stage.

torchattacks.AutoAttack(version="standard") is not used: it runs its attacks with their 10-step
defaults and Square with a rescaled schedule, which overstates robustness.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from advprune._deps import require
from advprune.attacks import weights_frozen

STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
TARGET_CLASSES = 9  # the official standard version's APGD-T and FAB-T targets


def parse_stages(text: str, where: str) -> tuple[str, ...]:
    """Stage names joined by commas ("apgd-ce,apgd-t"), in order; ValueError naming `where` and each unknown one."""
    stages = tuple(s.strip() for s in text.split(","))
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"{where}: unknown {', '.join(unknown)} (choose from {', '.join(STAGES)})")
    return stages


def stage_attack(name: str, model: nn.Module, *, eps: float, norm: str, num_classes: int, seed: int):
    """The torchattacks attack of one stage, configured as the official standard version."""
    ta = require("torchattacks", extra="eval", purpose="AutoAttack")
    lp = {"linf": "Linf", "l2": "L2"}[norm]
    targets = min(TARGET_CLASSES, num_classes - 1)
    if name == "apgd-ce":
        attack = ta.APGD(model, norm=lp, eps=eps, steps=100, n_restarts=1, seed=seed, loss="ce", rho=0.75)
    elif name == "apgd-t":
        attack = ta.APGDT(model, norm=lp, eps=eps, steps=100, n_restarts=1, seed=seed, rho=0.75, n_classes=num_classes)
        attack.n_target_classes = targets
    elif name == "fab-t":
        attack = ta.FAB(
            model, norm=lp, eps=eps, steps=100, n_restarts=1, seed=seed, multi_targeted=True, n_classes=num_classes
        )
        attack.n_target_classes = targets
    else:
        attack = ta.Square(
            model, norm=lp, eps=eps, n_queries=5000, n_restarts=1, p_init=0.8, seed=seed, resc_schedule=False
        )
    return attack


def _within_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    delta = (x_adv - x).flatten(1).float()
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    return (size <= eps * (1 + 1e-5) + 1e-7) & (x_adv.flatten(1) >= 0).all(1) & (x_adv.flatten(1) <= 1).all(1)


@torch.no_grad()
def robust_flags(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    num_classes: int,
    stages: Sequence[str] = STAGES,
    seed: int = 0,
    batch_size: int = 250,
    on_stage: Callable[[str, torch.Tensor], None] | None = None,
    done: Sequence[tuple[str, torch.Tensor]] = (),
) -> tuple[torch.Tensor, dict[str, int]]:
    """(robust flag per sample, robust count after each stage, "clean" first) of `model` (eval mode)
    on x, y (on the model's device). A sample stays robust while every stage's example of it, checked
    to lie in the eps-ball and in [0, 1], is classified correctly. Batches of 250 (the official run's
    size) over the samples still robust: each attack reseeds per batch, so the same batches draw the
    same random starts, and a stage's outcome depends only on the flags it starts from. The global RNG
    is left as it was. on_stage(name, flags) after each stage run here. done: (stage, flags after it) of
    stages an earlier call ran on the same model, samples and settings, in order (a StageCache's): the
    first stages that match them are taken from there instead of run again."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown AutoAttack stages {unknown}: choose from {', '.join(STAGES)}")
    robust = torch.cat(
        [model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size] for i in range(0, len(y), batch_size)]
    )
    counts = {"clean": int(robust.sum())}
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), weights_frozen(model):  # torchattacks reseeds the global generators
        reused = reusable_stages(stages, done)
        for name, flags in reused:
            if flags.shape != robust.shape:
                raise ValueError(f"done: {name}'s flags are for {len(flags)} samples, not these {len(robust)}")
            robust = flags.to(robust.device) & robust
            counts[name] = int(robust.sum())
        for name in stages[len(reused) :]:
            attack = stage_attack(name, model, eps=eps, norm=norm, num_classes=num_classes, seed=seed)
            todo = torch.nonzero(robust).squeeze(1)
            for start in range(0, len(todo), batch_size):
                ids = todo[start : start + batch_size]
                with torch.enable_grad():
                    x_adv = attack(x[ids], y[ids])
                broken = (model(x_adv).argmax(1) != y[ids]) & _within_ball(x_adv, x[ids], eps, norm)
                robust[ids[broken]] = False
            counts[name] = int(robust.sum())
            if on_stage is not None:
                on_stage(name, robust.clone())
    return robust, counts


def reusable_stages(stages: Sequence[str], done: Sequence[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """The longest run of `done` that `stages` begins with: a stage's flags hold only after the same stages
    before it."""
    reused = []
    for name, (done_name, flags) in zip(stages, done, strict=False):
        if name != done_name:
            break
        reused.append((name, flags))
    return reused
