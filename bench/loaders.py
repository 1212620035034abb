"""Images per second of advprune's loaders against torchvision's DataLoader, in one run.

50,000 random 32x32 colour images with training augmentation (random crop with
4 pixels of padding, horizontal flip): advprune's ffcv and in-memory backends,
and torchvision's DataLoader (PIL RandomCrop(32, padding=4) + RandomHorizontalFlip
+ ToTensor, num_workers=2). Median epoch time over a few epochs after a warm-up
epoch; and the time of a subset switch (set_indices) against an epoch.

    python bench/loaders.py [--n 50000] [--epochs 3] [--out bench/results/loaders.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def epoch_seconds(loader, epochs: int) -> tuple[float, int]:
    """Median seconds per epoch after one warm-up epoch, and the images served per epoch."""
    served = 0
    for _, _, ids in loader:  # warm-up (ffcv compiles its pipeline here)
        served += len(ids)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for _ in loader:
            pass  # every loader hands out materialised tensors
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), served


def torchvision_loader(images: np.ndarray, labels: np.ndarray, batch_size: int, workers: int):
    from PIL import Image
    from torchvision import transforms

    augment = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int):
            return augment(Image.fromarray(images[i])), int(labels[i]), i

    return torch.utils.data.DataLoader(
        Images(), batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )


def switch_seconds(loader, n: int, repeats: int = 5) -> float:
    """Median time of set_indices to a fresh random half of the ids."""
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats):
        new = rng.choice(n, n // 2, replace=False)
        t0 = time.perf_counter()
        loader.set_indices(new)
        len(loader)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    from advprune.data import from_arrays, make_loader, write_beton

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="torchvision DataLoader workers")
    parser.add_argument("--out", default="bench/results/loaders.json")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        beton = write_beton(Path(tmp) / "bench.beton", images, labels)
        # one at a time, each dropped before the next (no idle workers or threads left over)
        candidates = {
            "advprune memory": lambda: make_loader(
                from_arrays(images, labels), batch_size=args.batch_size, backend="memory"
            ),
            "advprune ffcv": lambda: make_loader(beton, batch_size=args.batch_size, backend="ffcv"),
            "torchvision DataLoader": lambda: torchvision_loader(images, labels, args.batch_size, args.workers),
        }
        for name, build in candidates.items():
            loader = build()
            seconds, served = epoch_seconds(loader, args.epochs)
            row = {"loader": name, "epoch_s": seconds, "images_per_s": served / seconds}
            if hasattr(loader, "set_indices"):
                row["switch_s"] = switch_seconds(loader, args.n)
                row["switch_fraction_of_epoch"] = row["switch_s"] / seconds
            rows.append(row)
            del loader
            gc.collect()
            print(f"{name:<24} {served / seconds:>10,.0f} images/s  epoch {seconds:.3f} s", flush=True)
    base = rows[-1]["images_per_s"]
    print(f"\n{'loader':<24} {'images/s':>10} {'x torchvision':>14} {'switch ms':>10} {'switch/epoch':>13}")
    for r in rows:
        r["speedup_vs_torchvision"] = r["images_per_s"] / base
        switch = f"{1e3 * r['switch_s']:.2f}" if "switch_s" in r else "-"
        frac = f"{100 * r['switch_fraction_of_epoch']:.2f}%" if "switch_s" in r else "-"
        speedup = r["speedup_vs_torchvision"]
        print(f"{r['loader']:<24} {r['images_per_s']:>10,.0f} {speedup:>13.1f}x {switch:>10} {frac:>13}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "batch_size": args.batch_size, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
