"""Builds advprune's torch extension: CPU kernels always, CUDA kernels whenever
torch is a CUDA build and a CUDA toolkit (nvcc) is found, with or without a GPU.

Environment knobs:
  ADVPRUNE_FORCE_CPU=1        skip the CUDA kernels
  ADVPRUNE_CPU_ISA=avx2|default  CPU instruction set of the kernels (default: avx2
                              when the build machine has it)
  CUDA_HOME / CUDA_PATH       the toolkit, when it is not in a standard place
  TORCH_CUDA_ARCH_LIST        CUDA architectures (default without a GPU: 8.0;9.0+PTX)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
sys.path.insert(0, str(ROOT / "build_tools"))
from cuda_env import find_cuda_home  # noqa: E402

DEFAULT_ARCHS = "8.0;9.0+PTX"


def cpu_isa() -> str:
    """avx2 when asked or when this machine has it (the kernels then need it at run time)."""
    wanted = os.environ.get("ADVPRUNE_CPU_ISA", "auto").lower()
    if wanted in ("avx2", "default"):
        return wanted
    if wanted != "auto":
        raise SystemExit(f"ADVPRUNE_CPU_ISA must be avx2, default or auto, got {wanted!r}")
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "default"
    return "avx2" if {"avx2", "fma", "f16c"} <= set(flags) else "default"


_force_cpu = os.environ.get("ADVPRUNE_FORCE_CPU", "0") not in ("", "0")
_cuda_home = None if _force_cpu else find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home  # before torch.utils.cpp_extension reads it

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

with_cuda = bool(_cuda_home) and torch.version.cuda is not None
if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS  # no GPU to ask: Ampere and Hopper, PTX for newer
isa = cpu_isa()

sources = sorted(
    str(p.relative_to(ROOT))
    for p in [ROOT / "csrc/advprune.cpp", *ROOT.glob("csrc/common/*.cpp"), *ROOT.glob("csrc/cpu/*.cpp")]
)
cxx_flags = ["-O3", "-fvisibility=hidden", "-fopenmp"]  # at::parallel_for is OpenMP inline code
if isa == "avx2":
    cxx_flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
extra = {"cxx": cxx_flags}
include_dirs = [str(ROOT / "csrc/include")]
if with_cuda:
    sources += sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("csrc/cuda/*.cu"))
    extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    ext = CUDAExtension(
        "advprune._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )
else:
    ext = CppExtension(
        "advprune._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )


class Build(BuildExtension):
    """Records what was built in advprune/_build_config.py, read by advprune.build_info(). The editable
    install and the wheel share one object folder (build/objects), so that the second build only relinks:
    ninja recompiles what changed (a source, a header or a flag)."""

    def finalize_options(self) -> None:
        chosen = self.build_temp  # --build-temp, when given
        super().finalize_options()
        self.build_temp = chosen or str(ROOT / "build" / "objects")

    def run(self) -> None:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""
        config = (
            "# Written by setup.py at build time: what the compiled extension contains.\n"
            f"TORCH_VERSION = {torch.__version__!r}\n"
            f"CUDA_COMPILED = {with_cuda!r}\n"
            f"CUDA_VERSION = {(torch.version.cuda if with_cuda else None)!r}\n"
            f"CUDA_ARCHS = {archs!r}\n"
            f"CPU_ISA = {isa!r}\n"
        )
        for target in {ROOT / "advprune", Path(self.build_lib) / "advprune"}:
            if target.is_dir():
                (target / "_build_config.py").write_text(config)
        super().run()


setup(ext_modules=[ext], cmdclass={"build_ext": Build.with_options(use_ninja=True)})
