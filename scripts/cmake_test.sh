#!/usr/bin/env bash
# Builds csrc/ against libtorch with CMake (CUDA kernels too when a toolkit is
# found) and runs the C++ unit tests with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BUILD=${BUILD:-cmake-build}
PY="$VENV/bin/python"

eval "$("$PY" build_tools/cuda_env.py)"
args=(-DPython3_EXECUTABLE="$PWD/$PY")
if [ -n "$CUDA_HOME" ] && [ -n "$NVRTC_LIBRARY" ] && "$PY" -c "import torch, sys; sys.exit(torch.version.cuda is None)"; then
  # torch's CMake config wants the toolkit and nvrtc even for CPU code
  args+=(-DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" -DCUDAToolkit_ROOT="$CUDA_HOME"
         -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" -DCUDA_nvrtc_LIBRARY="$NVRTC_LIBRARY"
         -DADVPRUNE_CUDA="${ADVPRUNE_CMAKE_CUDA:-ON}")
  # one architecture: this build proves that the kernels compile through CMake (setup.py builds them all)
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0"}
fi
"$VENV/bin/cmake" -S . -B "$BUILD" "${args[@]}" > "$BUILD.configure.log" 2>&1 || { cat "$BUILD.configure.log"; exit 1; }
"$VENV/bin/cmake" --build "$BUILD" -j "$(nproc)"
"$VENV/bin/ctest" --test-dir "$BUILD" --output-on-failure
