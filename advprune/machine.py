"""Which machine a run was timed on: the CPU (name, family, model, and whether it computes bfloat16 natively,
which decides `amp="auto"`'s precision), the GPU when the run used one, and torch's version. Wall times and
bfloat16-trained accuracies from machines of different kinds are not comparable, so every run records its
machine and a sweep keeps its rows to one kind."""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def parse_cpuinfo(text: str) -> dict:
    """The first processor's name, family, model and the instruction sets that change speed and precision."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block ends: the others repeat it
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "cpu": fields.get("model name") or platform.processor() or "unknown CPU",
        "cpu_family": _int_or_none(fields.get("cpu family")),
        "cpu_model": _int_or_none(fields.get("model")),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def cpu_info() -> dict:
    """This machine's CPU as parse_cpuinfo reads it (unknowns where /proc/cpuinfo cannot be read)."""
    try:
        return parse_cpuinfo(CPUINFO.read_text(errors="replace"))
    except OSError:
        return parse_cpuinfo("")


def machine_record(device: str | None = "cpu") -> dict:
    """This machine as a run records it; device is the run's ("cuda", "cuda:1", "cpu"): a GPU's name only when
    the run trains on it."""
    import torch

    record = cpu_info()
    record["cpus"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    record["torch"] = torch.__version__
    if device is not None and str(device).startswith("cuda"):
        record["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return record


def machine_kind(record: dict | None) -> str:
    """What decides whether two runs' timings compare: the GPU a run trained on ("GPU NVIDIA H200"), else the
    CPU's name, family, model and native bfloat16 ("AMD EPYC (family 25, model 1), no avx512_bf16"). torch's
    version and the core count stay in the record, not in the kind (a sweep pins each run to one core)."""
    if not record:
        return "machine not recorded"
    if "several" in record:
        return "several machines: " + "; ".join(machine_kind(r) for r in record["several"])
    if record.get("gpu"):
        return f"GPU {record['gpu']}"
    kind = record.get("cpu", "unknown CPU")
    if record.get("cpu_family") is not None:
        kind += f" (family {record['cpu_family']}, model {record.get('cpu_model')})"
    if record.get("avx512_bf16") is not None:
        kind += ", avx512_bf16" if record["avx512_bf16"] else ", no avx512_bf16"
    return kind


def one_machine(records: list[dict]) -> dict | None:
    """The machine of a run from the machine records of its training calls (a fresh start and each resume):
    the record itself when every call ran on one kind, {"several": [...]} when they differ, None when no call
    recorded one."""
    kinds: dict[str, dict] = {}
    for record in records:
        kinds.setdefault(machine_kind(record), record)
    if not kinds:
        return None
    return next(iter(kinds.values())) if len(kinds) == 1 else {"several": list(kinds.values())}
