#!/usr/bin/env bash
# Prints the folder of the decoded CIFAR-10 (JPEG copy) that the real-data tests read through
# ADVPRUNE_CIFAR10_DIR, decoding the copy once into a cache (an interrupted decode leaves nothing behind).
# An ADVPRUNE_CIFAR10_DIR already set (e.g. a user's official python version) is printed as it is. Where
# no copy is found it prints nothing and says so on stderr: those tests then skip.
#   ADVPRUNE_CIFAR10_JPEG   the folder with cifar10-jpeg.npz and to_python_version.py (default: ../shared/data/cifar10
#                           beside the checkout, or /work/shared/data/cifar10 where this project's machines keep it)
#   ADVPRUNE_CACHE          where to decode (default: ~/.cache/advprune)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${ADVPRUNE_CIFAR10_DIR:-}" ]; then
  echo "$ADVPRUNE_CIFAR10_DIR"
  exit 0
fi
PY=${PY:-.venv/bin/python}
if [ -n "${ADVPRUNE_CIFAR10_JPEG:-}" ] && [ ! -f "$ADVPRUNE_CIFAR10_JPEG/cifar10-jpeg.npz" ]; then
  echo "cifar10_cache: ADVPRUNE_CIFAR10_JPEG=$ADVPRUNE_CIFAR10_JPEG holds no cifar10-jpeg.npz" >&2
  exit 1
fi
source_dir=
for candidate in "${ADVPRUNE_CIFAR10_JPEG:-}" ../shared/data/cifar10 /work/shared/data/cifar10; do
  if [ -n "$candidate" ] && [ -f "$candidate/to_python_version.py" ] && [ -f "$candidate/cifar10-jpeg.npz" ]; then
    source_dir=$candidate
    break
  fi
done
if [ -z "$source_dir" ]; then
  echo "cifar10_cache: no CIFAR-10 JPEG copy (set ADVPRUNE_CIFAR10_JPEG or ADVPRUNE_CIFAR10_DIR);" \
    "the real CIFAR-10 tests will skip" >&2
  exit 0
fi
cache=${ADVPRUNE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/advprune}/cifar10-jpeg
if [ ! -f "$cache/cifar-10-batches-py/test_batch" ]; then
  mkdir -p "$(dirname "$cache")"
  partial=$(mktemp -d "$cache.partial.XXXXXX")
  trap 'rm -rf "$partial"' EXIT
  echo "cifar10_cache: decoding $source_dir into $cache" >&2
  "$PY" "$source_dir/to_python_version.py" "$partial" >&2
  rm -rf "$cache"
  mv "$partial" "$cache"
fi
echo "$cache"
