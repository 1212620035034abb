"""Adversarial perturbations on the fused ops: PGD (linf, l2, restarts), FGSM with
a random start (Wong et al. 2020), and TRADES (Zhang et al. 2019).

Each attack step is one forward, one backward for the input gradient only
(torch.autograd.grad with respect to x_adv: no weight gradient is computed or
accumulated) and one fused ops.pgd_step_. Inputs are images in [0, 1]; eps and
step sizes are in that space. The attacks know nothing of data or training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from advprune import ops
from advprune._checks import check_images_and_labels, check_pixel_eps
from advprune.ids import KeyedNoise

LOSSES = ("ce", "margin")
Randomness = torch.Generator | KeyedNoise | None  # where random starts come from (KeyedNoise: by sample id)


@contextmanager
def weights_frozen(model: nn.Module) -> Iterator[None]:
    """The model's parameters without requires_grad inside, as they were after. The attacks need only the input's
    gradient: eager autograd.grad(loss, x) skips built-in layers' weight gradients anyway, but FAB's
    loss.backward() and custom autograd Functions (the small CNN's first convolution) compute them for every
    parameter that requires them (frozen, AutoAttack's FAB-T takes 0.79x the time: bench/autoattack_frozen.py)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def attacking(model: nn.Module, mode: str) -> Iterator[None]:
    """The block as an attack runs it: the model in `mode` (model_mode) with its weights frozen."""
    with model_mode(model, mode), weights_frozen(model):
        yield


@contextmanager
def model_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Runs the block with the model in "eval" or "train" mode ("keep": as it is), then restores it."""
    if mode not in ("eval", "train", "keep"):
        raise ValueError(f'mode must be "eval", "train" or "keep", got {mode!r}')
    was_training = model.training
    if mode != "keep":
        model.train(mode == "train")
    try:
        yield
    finally:
        model.train(was_training)


def _per_sample_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits.float(), y, reduction="none")
    # margin (CW): the best wrong logit minus the right one
    z = logits.float()
    z_y = z.gather(1, y[:, None])[:, 0]
    other = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - z_y


def input_gradient(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss: str = "ce"):
    """(per-sample loss, d loss / d x_adv): one forward, one backward to the input only."""
    _, per_sample, grad = _attack_pass(model, x_adv, y, loss)
    return per_sample, grad


def _attack_pass(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss: str):
    """(logits, per-sample loss, d loss / d x_adv), all detached: one forward, one backward to the input."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        per_sample = _per_sample_loss(logits, y, loss)
        grad = gradient_of(per_sample.sum(), x_adv)
    return logits.detach(), per_sample.detach(), grad


def _float16_autocast(device_type: str) -> bool:
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16


def gradient_of(total: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """d total / d x_adv, the input only. Under float16 autocast the backward runs in float16, where small
    input gradients underflow to 0 (sign 0: no step): the loss is scaled up first (2**16, or less where
    that overflows) and the gradient scaled back, as a GradScaler does for weights."""
    if not _float16_autocast(x_adv.device.type):
        return torch.autograd.grad(total, x_adv)[0]
    scale = 2.0**16
    while True:
        (grad,) = torch.autograd.grad(total * scale, x_adv, retain_graph=scale > 1)
        if scale == 1 or bool(torch.isfinite(grad).all()):
            return grad.div_(scale)
        scale = max(scale / 2**8, 1.0)


def uniform_noise(shape, source: Randomness, like: torch.Tensor) -> torch.Tensor:
    """U[0, 1) noise of `shape` on like's device and dtype, from a generator or by sample id (KeyedNoise)."""
    if isinstance(source, KeyedNoise):
        return source.rand(tuple(shape), device=like.device, dtype=like.dtype)
    return torch.rand(shape, generator=source, device=like.device, dtype=like.dtype)


def _normal(shape, source: Randomness, like: torch.Tensor) -> torch.Tensor:
    if isinstance(source, KeyedNoise):
        return source.randn(tuple(shape), device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=source, device=like.device, dtype=like.dtype)


def _rows(source: Randomness, index: torch.Tensor) -> Randomness:
    return source.rows(index) if isinstance(source, KeyedNoise) else source


def random_init(x: torch.Tensor, eps: float, norm: str, generator: Randomness = None) -> torch.Tensor:
    """A uniform point of the eps-ball around x (linf), or a random direction and radius (l2), clipped to [0, 1].
    generator: a torch.Generator, or KeyedNoise for noise that depends on each sample's id alone."""
    if norm == "linf":
        noise = uniform_noise(x.shape, generator, x).mul_(2 * eps).sub_(eps)
    else:
        noise = _normal(x.shape, generator, x)
        flat = noise.flatten(1).norm(dim=1).clamp_min(1e-12)
        radius = uniform_noise((x.shape[0], 1), generator, x)[:, 0] * eps
        noise.mul_((radius / flat).view(-1, *([1] * (x.dim() - 1))))
    x_adv = (x + noise).contiguous(memory_format=memory_format_of(x))
    return ops.project_(x_adv, x, eps=eps, norm=norm)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-d tensor laid out so (and not also contiguous), else the contiguous format."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    loss: str = "ce",
    mode: str = "eval",
    generator: Randomness = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """PGD-`steps` (Madry et al. 2018) from x; returns x_adv (detached).

    With restarts > 1, a sample counts as broken when any restart misclassifies it: each restart
    after the first attacks only the samples no restart has broken yet, a broken sample keeps the
    example that broke it, an unbroken one the example of its highest loss. `mode` is the model's
    mode while crafting ("eval" by default: BatchNorm uses its running statistics and they are not
    updated; "train" or "keep" otherwise); the caller's mode is restored. Works under autocast
    (float16 included) and with channels_last inputs. `start`: the first run's first iterate instead of
    its random start (projected into the ball first), e.g. the sample's example of the last epoch.
    """
    _check_pgd_options("attacks.pgd", x, y, loss, steps, restarts, eps, norm)
    x = x.detach()
    attack = dict(eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=random_start, loss=loss)
    with attacking(model, mode):
        best = _pgd_run(model, x, y, generator=generator, start=start, **attack)
        if restarts == 1:
            return best
        with torch.no_grad():
            logits = model(best)
        best_loss, broken = _per_sample_loss(logits, y, loss), logits.argmax(1) != y
        for _ in range(restarts - 1):
            todo = torch.nonzero(~broken).squeeze(1)
            if len(todo) == 0:
                break
            x_try = _pgd_run(model, x[todo], y[todo], generator=_rows(generator, todo), **attack)
            with torch.no_grad():
                logits = model(x_try)
            try_loss, try_broken = _per_sample_loss(logits, y[todo], loss), logits.argmax(1) != y[todo]
            better = try_broken | (try_loss > best_loss[todo])
            best[todo[better]] = x_try[better]
            best_loss[todo[better]] = try_loss[better]
            broken[todo[try_broken]] = True
    return best


def pgd_robust(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    restarts: int = 1,
    loss: str = "ce",
    generator: Randomness = None,
    correct: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which samples PGD-`steps` cannot misclassify (a bool per sample), with early exit: a sample is
    broken, and leaves the batch, as soon as any iterate of any restart (its random start included)
    is misclassified, and a sample misclassified as it is counts as broken without an attack. So the
    attack spends its steps on the samples still robust only, and is at least as strong as judging
    the last iterate (attacks.pgd and torchattacks.PGD). Each restart attacks the samples no earlier
    restart broke. The model is in eval mode while attacking; the caller's mode is restored.
    correct: which samples the model (in eval mode) classifies right as they are, when the caller has
    already computed that (a bool per sample; evaluate's clean count), so that it is not computed again."""
    _check_pgd_options("attacks.pgd_robust", x, y, loss, steps, restarts, eps, norm)
    _check_correct(correct, y)
    x = x.detach()
    with attacking(model, "eval"):
        if correct is None:
            with torch.no_grad():
                correct = model(x).argmax(1) == y
        robust = correct.clone()
        for _ in range(restarts):
            todo = torch.nonzero(robust).squeeze(1)
            if len(todo) == 0:
                break
            noise = _rows(generator, todo)
            broken = _broken_by_any_iterate(model, x[todo], y[todo], eps, step_size, steps, norm, loss, noise)
            robust[todo[broken]] = False
            if isinstance(generator, KeyedNoise):  # the next restart draws new noise
                generator.draws = noise.draws
    return robust


def _check_correct(correct: torch.Tensor | None, y: torch.Tensor) -> None:
    if correct is None:
        return
    if not isinstance(correct, torch.Tensor) or correct.dtype != torch.bool or correct.shape != y.shape:
        got = f"{correct.dtype} of shape {list(correct.shape)}" if isinstance(correct, torch.Tensor) else type(correct)
        raise ValueError(f"attacks.pgd_robust: correct must be a bool per sample (shape {list(y.shape)}), got {got}")
    if correct.device != y.device:
        raise ValueError(f"attacks.pgd_robust: correct is on {correct.device} but y on {y.device}")


def _broken_by_any_iterate(model, x, y, eps, step_size, steps, norm, loss, noise) -> torch.Tensor:
    """One PGD run from a random start in which each sample stops at its first misclassified iterate."""
    broken = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    left = torch.arange(len(y), device=y.device)  # the rows of x still attacked
    fmt = memory_format_of(x)
    x_adv = random_init(x, eps, norm, noise)
    for step in range(steps + 1):
        if step == steps:
            with torch.no_grad():
                logits = model(x_adv)
        else:
            logits, _, grad = _attack_pass(model, x_adv, y, loss)
        hit = logits.argmax(1) != y
        broken[left[hit]] = True
        hits = int(hit.sum())  # the step's one host read: how many samples just broke
        if step == steps or hits == len(y):
            break
        if hits:
            keep = ~hit
            left, y, grad = left[keep], y[keep], grad[keep]
            x, x_adv = x[keep].contiguous(memory_format=fmt), x_adv[keep].contiguous(memory_format=fmt)
        ops.pgd_step_(x_adv, grad, x, eps=eps, step_size=step_size, norm=norm)
    return broken


def check_pgd_runs(steps: int, restarts: int) -> None:
    """PGD's counts: steps >= 0 and restarts >= 1 (the attacks, and evaluate before its first batch)."""
    if steps < 0 or restarts < 1:
        raise ValueError(f"PGD needs steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")


def _check_pgd_options(where: str, x, y, loss: str, steps: int, restarts: int, eps: float, norm: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    check_pgd_runs(steps, restarts)
    check_images_and_labels(where, x, y)
    check_pixel_eps(where, eps, norm)


def _pgd_run(model, x, y, *, eps, step_size, steps, norm, random_start, loss, generator, start=None) -> torch.Tensor:
    """One PGD run from a (random or given) start: steps x [forward, input gradient, fused step]."""
    x_adv = _start(x, eps, norm, random_start, generator) if start is None else given_start(start, x, eps, norm)
    for _ in range(steps):
        _, grad = input_gradient(model, x_adv, y, loss)
        ops.pgd_step_(x_adv, grad, x, eps=eps, step_size=step_size, norm=norm)
    return x_adv


def _start(x: torch.Tensor, eps: float, norm: str, use_random: bool, generator) -> torch.Tensor:
    return random_init(x, eps, norm, generator) if use_random else x.clone(memory_format=memory_format_of(x))


def given_start(start: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """A caller's first iterate, checked against x and projected into the eps ball and [0, 1] (a copy)."""
    if start.shape != x.shape:
        raise ValueError(f"start has shape {list(start.shape)} but x has shape {list(x.shape)}; they must match")
    x_adv = start.detach().to(x.dtype).clone(memory_format=memory_format_of(x))
    return ops.project_(x_adv, x, eps=eps, norm=norm)


def fgsm_rs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float | None = None,
    mode: str = "keep",
    generator: Randomness = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """FGSM with a uniform random start in the linf ball and one signed step of
    step_size (default 1.25 * eps), projected back (Wong, Rice and Kolter 2020). `start`: the first
    iterate instead of the random start (e.g. the sample's example of the last epoch: ATTA)."""
    step_size = 1.25 * eps if step_size is None else step_size
    check_images_and_labels("attacks.fgsm_rs", x, y)
    check_pixel_eps("attacks.fgsm_rs", eps, "linf")
    x = x.detach()
    with attacking(model, mode):
        x_adv = random_init(x, eps, "linf", generator) if start is None else given_start(start, x, eps)
        _, grad = input_gradient(model, x_adv, y)
        return ops.pgd_step_(x_adv, grad, x, eps=eps, step_size=step_size)


def n_fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    noise: float | None = None,
    step_size: float | None = None,
    mode: str = "keep",
    generator: Randomness = None,
) -> torch.Tensor:
    """N-FGSM (de Jorge et al. 2022): a uniform start in the linf ball of radius `noise` (default 2 eps), one
    signed step of step_size (default eps), and no projection back into the eps ball (the example may lie
    noise + step_size from x; only [0, 1] clips). The stronger noise, not a clip, keeps single-step training
    from catastrophic overfitting, at the cost of FGSM-RS."""
    noise = 2 * eps if noise is None else noise
    step_size = eps if step_size is None else step_size
    check_images_and_labels("attacks.n_fgsm", x, y)
    check_pixel_eps("attacks.n_fgsm", eps, "linf")
    x = x.detach()
    with attacking(model, mode):
        x_adv = random_init(x, noise, "linf", generator)
        _, grad = input_gradient(model, x_adv, y)
        return ops.pgd_step_(x_adv, grad, x, eps=noise + step_size, step_size=step_size)  # a ball it cannot leave


def trades_perturb(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    mode: str = "eval",
    generator: Randomness = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """The TRADES inner maximisation: PGD on KL(softmax(f(x)) || softmax(f(x_adv))),
    started at x + 0.001 * N(0, 1) (or at `start`), with the clean prediction fixed."""
    check_images_and_labels("attacks.trades_perturb", x, None)
    check_pixel_eps("attacks.trades_perturb", eps, "linf")
    x = x.detach()
    with attacking(model, mode):
        with torch.no_grad():
            clean = model(x).float()
        x_adv = trades_start(x, eps, generator) if start is None else given_start(start, x, eps)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                grad = gradient_of(ops.kl_rows(clean, model(x_adv).float()).sum(), x_adv)
            x_adv = ops.pgd_step_(x_adv.detach(), grad, x, eps=eps, step_size=step_size)
    return x_adv


def trades_start(x: torch.Tensor, eps: float, generator: Randomness = None) -> torch.Tensor:
    """TRADES' first iterate: x + 0.001 * N(0, 1), projected into the eps ball and [0, 1]."""
    noise = _normal(x.shape, generator, x)
    return ops.project_((x + 0.001 * noise).contiguous(memory_format=memory_format_of(x)), x, eps=eps)


def trades_loss(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float = 6.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The TRADES objective: CE(f(x), y) + beta * KL(softmax(f(x)) || softmax(f(x_adv))), per
    sample, and its batch mean. Gradients reach both sets of logits."""
    clean = logits_clean.float()
    per_sample = F.cross_entropy(clean, y, reduction="none") + beta * ops.kl_rows(clean, logits_adv.float())
    return per_sample, per_sample.mean()
