"""Input factories for the op tests: fresh random data, never zeros."""

from __future__ import annotations

import zlib

import pytest
import torch

# CUDA runs from the same parametrisation; without a GPU its cases show as skipped.
_NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=_NO_GPU)]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# One-channel convolutions (N, C, H, W, KH, KW, padding) for the first layer's kernels: the small CNN's layer, a
# channel count off the vector width, odd outputs (an unpooled last row and column), uneven kernels and
# paddings, a 1x1 kernel, and a padding larger than the kernel (the input then is smaller than the output)
ONE_CHANNEL_CONV_CASES = [
    (5, 32, 28, 28, 3, 3, (1, 1)),
    (3, 13, 7, 9, 3, 3, (0, 0)),
    (2, 3, 6, 5, 5, 3, (2, 1)),
    (4, 9, 4, 4, 1, 1, (0, 0)),
    (2, 17, 3, 5, 3, 3, (2, 3)),
]


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of a kernel against the float64 reference: 1e-6 for float32,
    two units of rounding for half types (the reference is rounded once too)."""
    return {
        torch.float64: 1e-12,
        torch.float32: 1e-6,
        torch.float16: 2 * 2.0**-11,
        torch.bfloat16: 2 * 2.0**-8,
    }[dtype]


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Elementwise |a - e| <= rel * (|e| + max |e|): relative to the values and their scale."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(scale, 1e-30), equal_nan=True)


def pgd_inputs(shape, dtype, device, *, generator: torch.Generator, memory_format=torch.contiguous_format):
    """x_nat in [0, 1], x_adv far outside the ball (every element must be written), grad ~ N(0, 1)."""
    x_nat = torch.rand(shape, generator=generator, dtype=torch.float64)
    x_adv = x_nat + 0.5 * torch.randn(shape, generator=generator, dtype=torch.float64)
    grad = torch.randn(shape, generator=generator, dtype=torch.float64)
    out = []
    for t in (x_adv, grad, x_nat):
        t = t.to(dtype=dtype, device=device)
        if memory_format is not torch.contiguous_format:
            t = t.contiguous(memory_format=memory_format)
        out.append(t)
    return tuple(out)


def poison_allocator(*shapes, device, dtype=torch.float32) -> None:
    """Frees NaN-filled blocks of the given shapes, so that outputs allocated next
    (by the CUDA caching allocator; by malloc on the CPU only sometimes) start
    as NaN: an element a kernel fails to write then fails the comparison."""
    blocks = [torch.full(shape, float("nan"), dtype=dtype, device=device) for shape in shapes]
    del blocks


def logits_and_labels(n, c, dtype, device, *, generator: torch.Generator, scale: float = 3.0):
    logits = (scale * torch.randn(n, c, generator=generator, dtype=torch.float64)).to(dtype=dtype, device=device)
    labels = torch.randint(0, c, (n,), generator=generator).to(device)
    return logits, labels


def stable_seed(*parts: object) -> int:
    """A seed from the test's parameters that every process computes the same (hash() of a str is salted
    per process, so a failure seen once could not be reproduced)."""
    return zlib.crc32(repr(parts).encode())
