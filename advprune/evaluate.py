"""Evaluation: clean accuracy, PGD-K with restarts, and AutoAttack (standard: APGD-CE,
APGD-T, FAB-T, Square) through torchattacks, on the first n samples of a set."""

from __future__ import annotations

import json
from collections.abc import Iterable

import torch
from torch import nn

from advprune import attacks

ATTACKS = ("clean", "pgd", "autoattack")


def _batches(x: torch.Tensor, y: torch.Tensor, n: int | None, batch_size: int) -> Iterable[tuple]:
    n = len(y) if n is None else min(n, len(y))
    for i in range(0, n, batch_size):
        yield x[i : min(i + batch_size, n)], y[i : min(i + batch_size, n)]


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((model(x).argmax(dim=1) == y).sum())


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: str = "pgd",
    eps: float,
    step_size: float | None = None,
    steps: int = 20,
    restarts: int = 1,
    norm: str = "linf",
    n: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Clean and robust accuracy (fractions in [0, 1]) of `model` on the first n samples of (x, y).

    attack: "clean", "pgd" (PGD-steps, step size eps/4 by default, with restarts) or
    "autoattack" (torchattacks' standard AutoAttack). The model is put in eval mode.
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    model.eval()
    device = next(model.parameters()).device
    step_size = eps / 4 if step_size is None else step_size
    generator = torch.Generator(device=device).manual_seed(seed)
    autoattack = None
    if attack == "autoattack":
        import torchattacks

        num_classes = model(x[:1].to(device)).shape[1]
        autoattack = torchattacks.AutoAttack(
            model, norm="Linf" if norm == "linf" else "L2", eps=eps, version="standard", n_classes=num_classes,
            seed=seed,
        )  # fmt: skip
    total = clean = robust = 0
    batches = list(_batches(x, y, n, batch_size))
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"eval {attack}", leave=False)
    for xb, yb in batches:
        xb, yb = xb.to(device), yb.to(device)
        total += len(yb)
        clean += _correct(model, xb, yb)
        if attack == "pgd":
            x_adv = attacks.pgd(model, xb, yb, eps=eps, step_size=step_size, steps=steps, norm=norm,
                                restarts=restarts, generator=generator)  # fmt: skip
            robust += _correct(model, x_adv, yb)
        elif autoattack is not None:
            robust += _correct(model, autoattack(xb, yb), yb)
            model.zero_grad(set_to_none=True)  # some of its attacks leave weight gradients behind
    result = {"n": total, "clean_acc": clean / max(total, 1), "attack": attack}
    if attack != "clean":
        result.update(robust_acc=robust / max(total, 1), eps=eps, norm=norm)
        if attack == "pgd":
            result.update(steps=steps, step_size=step_size, restarts=restarts)
    return result


def format_result(result: dict) -> str:
    """A short table of an evaluate() result, and its JSON."""
    lines = [f"{'samples':<10} {result['n']}", f"{'clean':<10} {100 * result['clean_acc']:.2f}%"]
    if "robust_acc" in result:
        name = f"PGD-{result['steps']}" if result["attack"] == "pgd" else "AutoAttack"
        lines.append(f"{name:<10} {100 * result['robust_acc']:.2f}%")
    return "\n".join(lines) + "\n" + json.dumps(result)
