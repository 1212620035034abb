"""Evaluation: clean accuracy, PGD-K with restarts, and AutoAttack (standard, the official
settings: advprune.autoattack) on the first n samples of a set.

A sample counts as robust only if no attack broke it: with PGD, no iterate of any restart may
misclassify it (attacks.pgd_robust, which stops attacking a sample once it is broken); with
AutoAttack, every stage must leave it correctly classified.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from advprune import attacks, autoattack
from advprune._checks import check_pixel_eps
from advprune._deps import require
from advprune.distributed import World
from advprune.stage_cache import StageCache, model_digest, tensor_digest

ATTACKS = ("clean", "pgd", "autoattack")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _batches(n: int, batch_size: int):
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))


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
    batch_size: int = 250,
    seed: int = 0,
    stages: Sequence[str] = autoattack.STAGES,
    progress: bool = False,
    world: World | None = None,
    memory_format: torch.memory_format | None = None,
    stage_cache: str | Path | None = None,
) -> dict:
    """Clean and robust accuracy (fractions in [0, 1]) of `model` on the first n samples of (x, y),
    computed on the model's device (x and y are moved there batch by batch).

    attack: "clean", "pgd" (PGD-steps, step size eps/4 by default, with restarts) or "autoattack"
    (the official standard version; `stages` picks a subset, with per-stage robust accuracy in
    the result). The model is put in eval mode. world: under torch.distributed each rank evaluates
    its share (every world.size-th sample) and the counts are summed. memory_format: the layout the
    images are put in (the model's, e.g. torch.channels_last; None: as they come). stage_cache: a folder where
    AutoAttack keeps each finished stage (advprune.stage_cache): an evaluation of the same model, samples and
    settings takes the stages it shares with an earlier one from there ("reused_stages" in the result).
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_pixel_eps("evaluate", eps, norm)
    if attack == "pgd":
        attacks.check_pgd_runs(steps, restarts)
    n = len(y) if n is None else min(n, len(y))
    if n < 1:
        raise ValueError(f"nothing to evaluate: n must be >= 1 (the first n samples), got n={n} of {len(y)} samples")
    world = world or World()
    model.eval()
    x, y = x[:n][world.rank :: world.size], y[:n][world.rank :: world.size]
    if memory_format is not None and x.dim() == 4:
        x = x.contiguous(memory_format=memory_format)
    result = {"n": n, "attack": attack}
    if attack == "autoattack":
        cache = None
        if stage_cache is not None:
            cache = StageCache(stage_cache, _stage_key(model, x, y, eps, norm, seed, batch_size, world))
        counts, reused = _autoattack_counts(
            model, x, y, eps, norm, stages, seed, batch_size, progress and world.is_main, cache
        )
        summed = dict(
            zip(counts, world.sum(torch.tensor(list(counts.values()), dtype=torch.float64)).tolist(), strict=True)
        )
        return {**result, **_autoattack_result(summed, n, eps, norm, stages), "reused_stages": reused}
    step_size = eps / 4 if step_size is None else step_size
    clean, robust = _pgd_counts(model, x, y, attack, eps, step_size, steps, norm, restarts, batch_size, seed, progress)
    clean, robust = world.sum(torch.tensor([clean, robust], dtype=torch.float64)).tolist()
    result["clean_acc"] = clean / max(n, 1)
    if attack == "pgd":
        result.update(
            robust_acc=robust / max(n, 1), eps=eps, norm=norm, steps=steps, step_size=step_size, restarts=restarts
        )
    return result


def _pgd_counts(model, x, y, attack, eps, step_size, steps, norm, restarts, batch_size, seed, progress):
    """(correctly classified, robust to PGD) counts of (x, y), batch by batch."""
    device = model_device(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    clean = robust = 0
    batches = list(_batches(len(y), batch_size))
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"eval {attack}", leave=False)
    for part in batches:
        xb, yb = x[part].to(device), y[part].to(device)
        with torch.no_grad():
            correct = model(xb).argmax(1) == yb
        clean += int(correct.sum())
        if attack == "pgd":
            flags = attacks.pgd_robust(
                model,
                xb,
                yb,
                eps=eps,
                step_size=step_size,
                steps=steps,
                norm=norm,
                restarts=restarts,
                generator=generator,
                correct=correct,
            )
            robust += int(flags.sum())
    return clean, robust


def _stage_key(model, x, y, eps, norm, seed, batch_size, world: World) -> dict:
    """All that decides AutoAttack's flags on (x, y): the StageCache's key."""
    torchattacks = require("torchattacks", extra="eval", purpose="AutoAttack")
    return {
        "model": model_digest(model),
        "samples": tensor_digest([("x", x), ("y", y)]),
        "layout": "channels_last" if attacks.memory_format_of(x) == torch.channels_last else "contiguous",
        "eps": eps,
        "norm": norm,
        "seed": seed,
        "batch_size": batch_size,
        "rank": [world.rank, world.size],
        "device": model_device(model).type,
        "torch": torch.__version__,
        "torchattacks": torchattacks.__version__,
    }


def _autoattack_counts(model, x, y, eps, norm, stages, seed, batch_size, progress, cache: StageCache | None):
    """(the correctly classified count, then the robust count after each stage; the stages taken from cache)."""
    device = model_device(model)
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    done = cache.start(stages) if cache is not None else []
    reused = [name for name, _ in done]
    if progress and reused:
        print(f"AutoAttack {', '.join(reused)}: taken from {cache.path}", flush=True)

    def report(stage: str, robust: torch.Tensor) -> None:
        if cache is not None:
            cache.add(stage, robust)
        if progress:
            print(f"AutoAttack {stage}: {100 * int(robust.sum()) / max(len(y), 1):.2f}% robust", flush=True)

    _, counts = autoattack.robust_flags(
        model,
        x,
        y,
        eps=eps,
        norm=norm,
        num_classes=num_classes,
        stages=stages,
        seed=seed,
        batch_size=batch_size,
        on_stage=report,
        done=done,
    )
    return counts, reused


def _autoattack_result(counts: dict[str, float], n: int, eps: float, norm: str, stages: Sequence[str]) -> dict:
    n = max(n, 1)
    return {
        "clean_acc": counts["clean"] / n,
        "robust_acc": counts[stages[-1]] / n if stages else counts["clean"] / n,
        "stages": {name: counts[name] / n for name in stages},
        "eps": eps,
        "norm": norm,
        "version": "standard" if tuple(stages) == autoattack.STAGES else "custom: " + ", ".join(stages),
    }


def format_result(result: dict) -> str:
    """A short table of an evaluate() result, and its JSON."""
    lines = [f"{'samples':<12} {result['n']}", f"{'clean':<12} {100 * result['clean_acc']:.2f}%"]
    for stage, acc in result.get("stages", {}).items():
        lines.append(f"{'  ' + stage:<12} {100 * acc:.2f}%")
    if "robust_acc" in result:
        name = f"PGD-{result['steps']}" if result["attack"] == "pgd" else "AutoAttack"
        lines.append(f"{name:<12} {100 * result['robust_acc']:.2f}%")
    return "\n".join(lines) + "\n" + json.dumps(result)
