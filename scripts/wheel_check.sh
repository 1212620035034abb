#!/usr/bin/env bash
# The packaging check: builds advprune's wheel (as `pip install --no-build-isolation .` does), installs
# it with its eval extra into a fresh virtual environment outside the source tree, and there imports
# every module, trains one epoch on a few hundred Fashion-MNIST images and evaluates the checkpoint
# (PGD and an AutoAttack stage), so that an editable install can never hide a packaging hole again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
WORK=${WHEEL_CHECK_DIR:-/tmp/advprune-wheel-check}
rm -rf "$WORK" && mkdir -p "$WORK"

echo "== building the wheel"
.venv/bin/python -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps -w "$WORK/dist" .
wheel=$(ls "$WORK"/dist/advprune-*.whl)

echo "== installing $(basename "$wheel")[eval] into a fresh virtual environment ($WORK/venv)"
"$PYTHON" -m venv "$WORK/venv"
PIP=("$WORK/venv/bin/python" -m pip --disable-pip-version-check -q)
# shellcheck disable=SC2086
"${PIP[@]}" install $TORCH_SPEC
"${PIP[@]}" install "$wheel[eval]"

echo "== smoke test outside the source tree"
cd "$WORK"
export PYTHONPATH=  # nothing of the source tree
"$WORK/venv/bin/python" - <<'PY'
import importlib, pkgutil, sys
import advprune

assert advprune.__file__.startswith(sys.prefix), f"advprune imported from {advprune.__file__}, not the venv"
info = advprune.build_info()
assert info["extension_loaded"], info
names = [m.name for m in pkgutil.walk_packages(advprune.__path__, "advprune.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(f"imported {len(names)} modules of advprune {info['version']} from {advprune.__file__}")
PY
"$WORK/venv/bin/advprune" train --limit 300 --val-n 60 --epochs 1 --steps 1 --eval-n 100 --out "$WORK/run" --quiet
"$WORK/venv/bin/python" -m advprune eval --checkpoint "$WORK/run/best.pt" --attack autoattack --stages apgd-ce \
  --n 32 --quiet
echo "== wheel check passed"
