#!/usr/bin/env bash
# Sets up everything advprune needs on a fresh machine, idempotently:
# a virtual environment in .venv, torch and torchvision through pip, the
# development tools, and the compiled extension (CPU, and CUDA when nvcc exists).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "== installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  "${PIP[@]}" install $TORCH_SPEC
fi

echo "== installing build and test tools"
"${PIP[@]}" install "setuptools>=64" wheel ninja "cmake>=3.27,<4" numpy tqdm "pytest>=8" hypothesis ruff

echo "== building advprune (pip install --no-build-isolation -e .)"
"${PIP[@]}" install --no-build-isolation --no-deps -e .
"$VENV/bin/python" -c "import advprune, json; print(json.dumps(advprune.build_info()))"
