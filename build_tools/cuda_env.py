"""Finds the CUDA toolkit and the nvrtc library for the builds (setup.py, CMake).

The nvcc on PATH may be a wrapper script (as on this project's machines), from
which torch guesses a wrong CUDA_HOME, so the root is looked for here: a real
nvcc binary with headers and libcudart beside it. Run as a script, it prints
shell assignments for scripts/cmake_test.sh.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from pathlib import Path


def is_toolkit(root: Path) -> bool:
    """A real toolkit: an nvcc binary (not a wrapper script), headers and libcudart."""
    nvcc = root / "bin" / "nvcc"
    if not nvcc.is_file():
        return False
    with open(nvcc, "rb") as f:
        if f.read(2) == b"#!":
            return False
    libs = ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")
    has_lib = any(glob.glob(str(root / d / "libcudart.so*")) for d in libs)
    return (root / "include" / "cuda_runtime.h").is_file() and has_lib


def _wrapped_nvcc_roots(nvcc: str) -> list[str]:
    """Roots named inside a wrapper script such as `exec /usr/local/cuda-13.0/bin/nvcc "$@"`."""
    try:
        text = Path(nvcc).read_text(errors="ignore")[:4096]
    except OSError:
        return []
    return [str(Path(m).parent.parent) for m in re.findall(r"(/[^\s\"']+)/bin/nvcc\b", text)]


def find_cuda_home() -> str | None:
    """The CUDA toolkit root, or None when there is none."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
        candidates += _wrapped_nvcc_roots(nvcc)
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if c and is_toolkit(Path(c).resolve()):
            return str(Path(c).resolve())
    return None


def find_nvrtc(cuda_home: str | None) -> str | None:
    """libnvrtc, which torch's CMake config links: in the toolkit, or in the pip nvidia wheels."""
    roots = [cuda_home] if cuda_home else []
    try:
        import nvidia  # the namespace package of the pip CUDA wheels

        roots += [str(Path(p) / sub) for p in nvidia.__path__ for sub in ("cu13", "cu12", "cuda_nvrtc")]
    except ImportError:
        pass
    for root in roots:
        for lib in ("lib64", "lib"):
            found = sorted(glob.glob(str(Path(root) / lib / "libnvrtc.so*")))
            found = [f for f in found if "builtins" not in f and ".alt." not in f]
            if found:
                return found[0]
    return None


if __name__ == "__main__":
    home = find_cuda_home()
    print(f"CUDA_HOME={home or ''}")
    print(f"NVRTC_LIBRARY={find_nvrtc(home) or ''}")
