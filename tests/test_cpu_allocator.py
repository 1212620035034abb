"""advprune.cpu_allocator: glibc's malloc options set once, and the Trainer applies them on the CPU only
when asked (the default)."""

from __future__ import annotations

import ctypes.util

import pytest

from advprune import AttackConfig, RunConfig, Trainer, cpu_allocator, models
from advprune.train import trainer as trainer_module


def _is_glibc() -> bool:
    name = ctypes.util.find_library("c")  # independent of the module's own lookup
    return name is not None and hasattr(ctypes.CDLL(name), "gnu_get_libc_version")


def test_tuning_sets_both_options_once(monkeypatch):
    calls = []

    def mallopt(option: int, value: int) -> int:
        calls.append((option, value))
        return 1

    monkeypatch.setattr(cpu_allocator, "_tuned", None)
    monkeypatch.setattr(cpu_allocator, "_glibc_mallopt", lambda: mallopt)
    assert cpu_allocator.tune_cpu_allocator() is True
    assert cpu_allocator.tune_cpu_allocator() is True
    assert calls == [(cpu_allocator.M_MMAP_THRESHOLD, 2**30), (cpu_allocator.M_TRIM_THRESHOLD, 2**31 - 1)]
    assert cpu_allocator.cpu_allocator_tuned()


def test_a_glibc_that_refuses_1_gib_gets_the_32_mib_cap(monkeypatch):
    calls = []

    def mallopt(option: int, value: int) -> int:
        calls.append((option, value))
        return int(option != cpu_allocator.M_MMAP_THRESHOLD or value <= 32 << 20)

    monkeypatch.setattr(cpu_allocator, "_tuned", None)
    monkeypatch.setattr(cpu_allocator, "_glibc_mallopt", lambda: mallopt)
    assert cpu_allocator.tune_cpu_allocator() is True
    threshold = cpu_allocator.M_MMAP_THRESHOLD
    assert calls == [(threshold, 2**30), (threshold, 32 << 20), (cpu_allocator.M_TRIM_THRESHOLD, 2**31 - 1)]


def test_a_refused_option_or_another_c_library_reports_untuned(monkeypatch):
    monkeypatch.setattr(cpu_allocator, "_tuned", None)
    monkeypatch.setattr(cpu_allocator, "_glibc_mallopt", lambda: lambda option, value: 0)
    assert cpu_allocator.tune_cpu_allocator() is False
    monkeypatch.setattr(cpu_allocator, "_tuned", None)
    monkeypatch.setattr(cpu_allocator, "_glibc_mallopt", lambda: None)
    assert cpu_allocator.tune_cpu_allocator() is False
    assert not cpu_allocator.cpu_allocator_tuned()


@pytest.mark.skipif(not _is_glibc(), reason="glibc only")
def test_glibc_accepts_the_tuning():
    mallopt = cpu_allocator._glibc_mallopt()
    assert mallopt is not None
    assert any(mallopt(cpu_allocator.M_MMAP_THRESHOLD, value) == 1 for value in cpu_allocator.MMAP_THRESHOLDS)
    assert mallopt(cpu_allocator.M_TRIM_THRESHOLD, cpu_allocator.NO_TRIM) == 1


@pytest.mark.parametrize("tune", [True, False])
def test_the_trainer_tunes_the_allocator_only_when_asked(monkeypatch, tune):
    calls = []
    monkeypatch.setattr(trainer_module, "tune_cpu_allocator", lambda: calls.append(1) or True)
    Trainer(models.create("small-cnn"), AttackConfig("pgd", eps=0.1, steps=1), epochs=1,
            run=RunConfig(device="cpu", quiet=True, tune_cpu_allocator=tune))  # fmt: skip
    assert calls == ([1] if tune else [])
