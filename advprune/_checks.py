"""Argument checks of the ops in Python, for the fake kernels and the reference
fallback; they mirror csrc/common/checks.cpp, which guards the compiled kernels."""

from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
NORMS = ("linf", "l2")


def check_number(op: str, name: str, value: object) -> float:
    """A real Python number (or 0-d tensor) as float; TypeError naming the value otherwise."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype.is_floating_point:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def check_norm(op: str, norm: object) -> str:
    if norm not in NORMS:
        raise ValueError(f'{op}: norm must be "linf" or "l2", got {norm!r}')
    return norm  # type: ignore[return-value]


def check_pgd_scalars(op: str, eps: float, step_size: float | None, clip_min: float, clip_max: float) -> None:
    """eps and step_size finite and >= 0, clip_min <= clip_max."""
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{op}: eps must be finite and >= 0, got {eps}")
    if step_size is not None and not (math.isfinite(step_size) and step_size >= 0):
        raise ValueError(f"{op}: step_size must be finite and >= 0, got {step_size}")
    if not (clip_min <= clip_max):
        raise ValueError(f"{op}: clip_min must be <= clip_max, got clip_min={clip_min} and clip_max={clip_max}")


def check_pixel_eps(where: str, eps: float, norm: str) -> None:
    """An linf budget in [0, 1] pixel space: above 1 the ball holds every image, which is a 0-255 budget
    passed unscaled (8 meant as 8/255), not an attack anyone wants."""
    if norm == "linf" and eps > 1:
        raise ValueError(
            f"{where}: eps is in [0, 1] pixel space, and an linf eps of {eps:g} covers every image: "
            f"for {eps:g} on the 0-255 scale pass {eps:g}/255"
        )


def check_tensor_args(op: str, **tensors: object) -> None:
    """Each named argument is a tensor (the schema's own error would not say which op)."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")


def _check_float_tensor(op: str, name: str, t: object) -> torch.Tensor:
    check_tensor_args(op, **{name: t})
    if t.layout != torch.strided:
        raise TypeError(f"{op}: {name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    return t


def _check_like(op: str, name: str, t: object, x_adv: torch.Tensor) -> None:
    t = _check_float_tensor(op, name, t)
    if t.shape != x_adv.shape:
        raise ValueError(
            f"{op}: {name} has shape {list(t.shape)} but x_adv has shape {list(x_adv.shape)}; they must match"
        )
    if t.dtype != x_adv.dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype} but x_adv has dtype {x_adv.dtype}; they must match")
    if t.device != x_adv.device:
        raise ValueError(f"{op}: {name} is on {t.device} but x_adv is on {x_adv.device}")


def check_pgd(
    op: str,
    x_adv: object,
    grad: object | None,
    x_nat: object,
    eps: float,
    step_size: float | None,
    norm: object,
    clip_min: float,
    clip_max: float,
) -> None:
    """The checks of pgd_step_ (with grad) and project_ (grad None)."""
    check_norm(op, norm)
    x_adv = _check_float_tensor(op, "x_adv", x_adv)
    if x_adv.dim() == 0:
        raise ValueError(f"{op}: x_adv must have a batch dimension (dim 0), got a 0-d tensor")
    if grad is not None:
        _check_like(op, "grad", grad, x_adv)
    _check_like(op, "x_nat", x_nat, x_adv)
    check_pgd_scalars(op, eps, step_size, clip_min, clip_max)


def check_scores(logits: object, labels: object, *, check_values: bool = True) -> None:
    op = "advprune.sample_scores"
    logits = _check_float_tensor(op, "logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"{op}: logits must be 2-D [N, C], got shape {list(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"{op}: logits need at least 2 classes, got shape {list(logits.shape)}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{op}: labels must be an int64 tensor, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise TypeError(f"{op}: labels must be int64, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{op}: labels must have shape [{logits.shape[0]}] to match logits {list(logits.shape)}, "
            f"got {list(labels.shape)}"
        )
    if labels.device != logits.device:
        raise ValueError(f"{op}: labels are on {labels.device} but logits are on {logits.device}")
    if check_values and labels.numel() > 0:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= logits.shape[1]:
            raise ValueError(f"{op}: labels must lie in [0, {logits.shape[1]}), got values from {lo} to {hi}")


def check_kl(op: str, logits_p: object, logits_q: object) -> None:
    p = _check_float_tensor(op, "logits_p", logits_p)
    q = _check_float_tensor(op, "logits_q", logits_q)
    if p.dim() != 2:
        raise ValueError(f"{op}: logits_p must be 2-D [N, C], got shape {list(p.shape)}")
    if p.shape[1] < 2:
        raise ValueError(f"{op}: logits need at least 2 classes, got shape {list(p.shape)}")
    if q.shape != p.shape:
        raise ValueError(f"{op}: logits_q has shape {list(q.shape)} but logits_p has shape {list(p.shape)}")
    if q.dtype != p.dtype:
        raise TypeError(f"{op}: logits_q has dtype {q.dtype} but logits_p has dtype {p.dtype}")
    if q.device != p.device:
        raise ValueError(f"{op}: logits_q is on {q.device} but logits_p is on {p.device}")


def check_images_and_labels(where: str, x: object, y: object | None) -> None:
    """A batch as attacks and the Trainer take it: floating-point images [N, ...] in [0, 1] and int64
    class labels [N]; TypeError/ValueError naming what was received and what to do."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(
            f"{where}: images must be a floating-point tensor in [0, 1], got {got}: convert uint8 images "
            "with x.float() / 255 (advprune's loaders do this)"
        )
    if x.dim() < 2:
        raise ValueError(f"{where}: images must be a batch [N, ...], got shape {list(x.shape)}")
    if y is None:
        return
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64:
        got = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
        raise TypeError(f"{where}: labels must be an int64 tensor of class indices, got {got}: use y.long()")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{where}: labels must have shape [{x.shape[0]}] (one per image), got {list(y.shape)}")
