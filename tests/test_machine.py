"""The machine a run records: /proc/cpuinfo's first processor, the kind that decides whether two runs' timings
compare, and one machine (or several) for a run trained over several calls."""

from __future__ import annotations

import torch

from advprune.machine import machine_kind, machine_record, one_machine, parse_cpuinfo

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: another processor
flags\t\t: fpu sse2 avx2
"""

ZEN4 = {"cpu": "AMD EPYC", "cpu_family": 25, "cpu_model": 17, "avx512_bf16": True, "torch": "2.14.1"}
ZEN3 = {"cpu": "AMD EPYC", "cpu_family": 25, "cpu_model": 1, "avx512_bf16": False, "torch": "2.14.1"}


def test_the_first_processor_is_read_with_the_flags_that_change_speed_and_precision():
    cpu = parse_cpuinfo(CPUINFO)
    assert cpu["cpu"] == "AMD EPYC 9R14" and cpu["cpu_family"] == 25 and cpu["cpu_model"] == 17
    assert cpu["avx2"] and cpu["avx512f"] and cpu["avx512_bf16"] and not cpu["amx_bf16"]
    older = parse_cpuinfo(CPUINFO.split("\n\n")[1])
    assert older["cpu"] == "another processor" and older["cpu_family"] == 23 and not older["avx512_bf16"]


def test_a_cpuinfo_without_the_fields_gives_unknowns_not_an_error():
    cpu = parse_cpuinfo("processor\t: 0\n")
    assert cpu["cpu"] and cpu["cpu_family"] is None and cpu["cpu_model"] is None and not cpu["avx2"]
    assert "family" not in machine_kind({"cpu": cpu["cpu"], "cpu_family": None})


def test_the_kind_tells_apart_what_changes_timings_and_ignores_what_does_not():
    assert machine_kind(ZEN4) == "AMD EPYC (family 25, model 17), avx512_bf16"
    assert machine_kind(ZEN3) == "AMD EPYC (family 25, model 1), no avx512_bf16"
    assert machine_kind({**ZEN4, "torch": "2.11.0", "cpus": 16}) == machine_kind(ZEN4)
    on_gpu = {machine_kind({**cpu, "gpu": "NVIDIA H200"}) for cpu in (ZEN3, ZEN4)}  # the GPU decides, not its host
    assert on_gpu == {"GPU NVIDIA H200"}
    assert machine_kind(None) == machine_kind({}) == "machine not recorded"


def test_a_run_trained_over_calls_on_two_kinds_records_both():
    assert one_machine([ZEN3, {**ZEN3, "cpus": 16}]) == ZEN3
    several = one_machine([ZEN3, ZEN4, ZEN3])
    assert several == {"several": [ZEN3, ZEN4]}
    assert machine_kind(several) == f"several machines: {machine_kind(ZEN3)}; {machine_kind(ZEN4)}"
    assert one_machine([]) is None


def test_this_machine_records_its_cpu_and_torch_and_no_gpu_for_a_cpu_run():
    record = machine_record("cpu")
    assert record["cpu"] and record["torch"] == torch.__version__ and record["cpus"] >= 1
    assert "gpu" not in record and machine_kind(record).startswith(record["cpu"])
