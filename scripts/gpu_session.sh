#!/bin/bash
# One device call on a lent GPU machine: `make gpu-check`, then a sweep preset's rows or the CIFAR-10 perturbation
# reuse benchmark (both resumable), with the small results packed into $OUT (a device call brings back at most 8
# files). Carry gpu-carry/ (`make gpu-carry`).
#
#   CHECK_S=300 SWEEP_S=240 PRESET=paper-cifar10-gpu-seeds ONLY='full-seed2,random-0.2-seed2' bash scripts/gpu_session.sh
#   CHECK_S=220 SWEEP_S=0 REUSE_S=200 REUSE_SEEDS='0 1 2' bash scripts/gpu_session.sh
#   CHECK_ONLY=cuda,op SWEEP_S=0 bash scripts/gpu_session.sh     # the build, the CUDA tests and the op benchmark only
#
# The reuse benchmark writes gpu-check-out/reuse-cifar10 (packed as $OUT/reuse.tgz); a later call on a fresh
# machine goes on from its finished rows when that folder, unpacked here, is carried.
# SKIP_CHECK=1 runs only the sweep (a second call on the same warm machine). A run cut short in training by an
# earlier call is started over, not resumed (a resumed run's wall time undercounts); finished runs are kept.
set -u
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
OUT=${OUT:-gpu-check-out/session}
PRESET=${PRESET:-paper-cifar10-gpu-seeds}
SWEEP=gpu-check-out/sweeps/$PRESET  # ignored: a warm machine keeps it from one call to the next
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv >"$OUT/session.log" 2>&1
if [ "${SKIP_CHECK:-0}" != 1 ]; then
  OUT=/tmp/gpu-check timeout "${CHECK_S:-300}" make gpu-check GPU_PY=python3 GPU_CHECK_ONLY="${CHECK_ONLY:-}" \
    >"$OUT/gpu_check.log" 2>&1
  echo "gpu-check exit $?" >>"$OUT/gpu_check.log"
  cp /tmp/gpu-check/{gpu_check.json,gpu_check.md,ops.json,cuda_tests.log} "$OUT/" 2>/dev/null  # 8 files in all
fi
# a fresh machine called with SKIP_CHECK=1 has no build yet
python3 -c "import advprune._C" 2>/dev/null || python3 -m pip install -q --no-build-isolation --no-deps -e . >>"$OUT/session.log" 2>&1
python3 -c "import advprune; print(advprune.build_info())" >>"$OUT/session.log" 2>&1
decoded=/tmp/advprune-gpu-check-cifar10/cifar-10-batches-py  # where the check decodes the carried copy
if [ ! -d data/cifar-10-batches-py ] && { [ "${SWEEP_S:-300}" != 0 ] || [ "${REUSE_S:-0}" != 0 ]; }; then
  mkdir -p data  # only what trains reads it
  if [ -d $decoded ]; then ln -s $decoded data/; else python3 gpu-carry/to_python_version.py data >>"$OUT/session.log" 2>&1; fi
fi
if [ "${SWEEP_S:-300}" != 0 ]; then
  python3 - "$PRESET" "$SWEEP" >>"$OUT/session.log" 2>&1 <<'PY'
import shutil, sys
from pathlib import Path
from advprune.sweep import is_trained, load_sweep, train_epochs
epochs = train_epochs(load_sweep(sys.argv[1])["train"])
for folder in sorted(Path(sys.argv[2], "runs").glob("*")):
    if not is_trained(folder, epochs):
        print("starting over:", folder)
        shutil.rmtree(folder)
PY
  only=()
  [ -n "${ONLY:-}" ] && only=(--only "$ONLY")
  timeout "${SWEEP_S:-300}" python3 -m advprune sweep "$PRESET" --out "$SWEEP" --no-final "${only[@]}" >>"$OUT/session.log" 2>&1
  echo "sweep exit $?" >>"$OUT/session.log"
  tar czf "$OUT/sweep.tgz" --exclude='*.pt' --exclude='*.npz' --exclude='*.npy' --exclude='*.lock' "$SWEEP"
fi
if [ "${REUSE_S:-0}" != 0 ]; then
  # shellcheck disable=SC2086  # the seeds are separate arguments
  timeout "$REUSE_S" python3 bench/reuse.py --setting cifar10 --seeds ${REUSE_SEEDS:-0 1 2} \
    --out gpu-check-out/reuse-cifar10 >>"$OUT/session.log" 2>&1
  echo "reuse exit $?" >>"$OUT/session.log"
  tar czf "$OUT/reuse.tgz" --exclude='*.pt' --exclude='*.npz' --exclude='*.npy' gpu-check-out/reuse-cifar10
  cat gpu-check-out/reuse-cifar10/*/result.json 2>/dev/null | grep -E 'variant|seed|autoattack|train_wall'
fi
tail -3 "$OUT/gpu_check.log" 2>/dev/null
cat /tmp/gpu-check/gpu_check.md 2>/dev/null
tail -8 "$OUT/session.log"

