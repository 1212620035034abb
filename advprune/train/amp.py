"""Mixed precision: which autocast dtype a run uses. "auto" is bfloat16 only where the hardware
computes it natively (emulated bfloat16 is slower than float32, not faster)."""

from __future__ import annotations

import torch

from advprune.machine import cpu_info
from advprune.train.config import AMP_MODES


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: CPUs that compute bfloat16 natively."""
    cpu = cpu_info()
    return cpu["avx512_bf16"] or cpu["amx_bf16"]


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Ampere (compute capability 8.0) and newer; torch.cuda.is_bf16_supported() also counts emulation."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: "auto" is bfloat16 where the hardware computes it natively, else None (float32)."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if cuda_has_native_bf16(device) else None
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]
