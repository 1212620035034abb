"""Prepares gpu-carry/, what a GPU machine without internet needs for `make gpu-check` (carried beside the
checkout, under 64 MiB): the CIFAR-10 JPEG copy and its decoder from ../shared/data/cifar10, a small
Fashion-MNIST (the first 2,048 training and 1,000 test images, in the official idx format) for the CUDA
tests of the Trainer, and the pure-Python wheels the check installs without an index (torchattacks).

    python scripts/gpu_carry.py [--shared ../shared] [--out gpu-carry]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import struct
import subprocess
import sys
from pathlib import Path

FASHION = Path("/usr/share/datasets/fashion-mnist")
WHEELS = ("torchattacks==3.5.1",)


def truncated_idx(source: Path, target: Path, count: int) -> None:
    """The first `count` items of an idx file (gzip), with the header's count set to match."""
    raw = gzip.decompress(source.read_bytes())
    dims = raw[3]
    shape = struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims])
    item = 1
    for size in shape[1:]:
        item *= size
    header = raw[:4] + struct.pack(f">{dims}I", count, *shape[1:])
    target.write_bytes(gzip.compress(header + raw[4 + 4 * dims : 4 + 4 * dims + count * item]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared", help="the folder that holds data/cifar10")
    parser.add_argument("--out", default="gpu-carry")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    cifar = Path(args.shared) / "data" / "cifar10"
    for name in ("cifar10-jpeg.npz", "to_python_version.py"):
        if not (cifar / name).exists():
            sys.exit(f"gpu_carry: {cifar / name} is missing: point --shared at the folder that holds data/cifar10")
        shutil.copyfile(cifar / name, out / name)
    fashion = out / "fashion-mnist"
    fashion.mkdir(exist_ok=True)
    for split, count in (("train", 2048), ("t10k", 1000)):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            name = f"{split}-{kind}.gz"
            truncated_idx(FASHION / name, fashion / name, count)
    wheels = out / "wheels"
    wheels.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *WHEELS], check=True)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"gpu_carry: {out}/ holds {total / 2**20:.1f} MiB: carry it with the checkout (run's carry: [{str(out)!r}])")


if __name__ == "__main__":
    main()
