#!/usr/bin/env bash
# Sets up everything advprune needs on a fresh machine, idempotently: the system
# packages FFCV builds against (and Fashion-MNIST), a virtual environment in
# .venv, torch and torchvision through pip, FFCV and the development tools, and
# the compiled extension (CPU, and CUDA when nvcc exists).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(pkg-config libturbojpeg0-dev libopencv-dev dataset-fashion-mnist)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "advprune needs these system packages: ${missing[*]} (apt-get install them as root)" >&2
    exit 1
  fi
  echo "== apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

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

echo "== installing FFCV, build and test tools"
"${PIP[@]}" install "setuptools>=64" wheel ninja "cmake>=3.27,<4" numpy tqdm "pytest>=8" pytest-xdist hypothesis ruff \
  "ffcv==1.0.2" "torchattacks==3.5.1" matplotlib scipy

echo "== building advprune (pip install --no-build-isolation -e .)"
"${PIP[@]}" install --no-build-isolation --no-deps -e .
"$VENV/bin/python" -c "import advprune, json; print(json.dumps(advprune.build_info()))"
