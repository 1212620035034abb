"""One FGSM-RS training epoch over CIFAR-10 with the reproduction's small residual network, as `advprune train`
runs it with the CPU preset's settings (batch 512, eps 8/255, one-cycle to 0.2, random crops and flips, the
Trainer's defaults: bfloat16 where the CPU has it natively, channels_last), on every thread this process may
use: the median epoch after the first (which pays for warm-up), in seconds and images/s, with the machine and
the precision. Issue 11's floor: 90 s for an epoch over the training images on a 2-core CPU. Validation runs
once, after the last epoch, outside the epochs' seconds.

    python ../shared/data/cifar10/to_python_version.py data    # or the official python version
    python bench/cifar_epoch.py --data-dir data [--epochs 3] [--model small-resnet] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from advprune.machine import machine_kind, machine_record
from advprune.sweep import GridRun, load_sweep
from advprune.sweep import train_argv as sweep_train_argv
from advprune.train.amp import resolve_amp
from advprune.train.run_folder import epoch_records, read_run_metrics


def train_argv(args: argparse.Namespace, out: Path) -> list[str]:
    """`advprune train`'s arguments: the CPU preset's [train] table as its sweep passes it (its full-data run),
    on this machine's CPU with advprune's malloc tuning, validation only after the last epoch."""
    train = load_sweep("paper-cifar10-cpu")["train"] | {"data_dir": args.data_dir, "model": args.model}
    train |= {"epochs": args.epochs, "val_every": args.epochs, "device": "cpu", "default_malloc": False}
    train |= {"limit": args.limit} if args.limit else {}
    return sweep_train_argv(GridRun(spec=None, fraction=1.0, seed=0), train, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-10's python-version folder (or its parent)")
    parser.add_argument("--model", default="small-resnet")
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up; the median of the rest")
    parser.add_argument("--limit", type=int, default=None, help="the first N training images (a quick check)")
    parser.add_argument("--out", default="bench/results/cifar_epoch.json")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error(f"--epochs must be at least 2 (the first is warm-up), got {args.epochs}")
    with tempfile.TemporaryDirectory(prefix="advprune-cifar-epoch-") as work:
        run = Path(work) / "run"
        subprocess.run([sys.executable, "-m", "advprune", *train_argv(args, run)], check=True)
        epochs = epoch_records(read_run_metrics(run))
    seconds = [record["seconds"] for record in epochs]
    median = statistics.median(seconds[1:])
    precision = resolve_amp("auto", torch.device("cpu"))
    result = {
        "model": args.model,
        "images_per_epoch": epochs[0]["samples"],
        "epochs_s": seconds,
        "median_s": median,
        "images_per_s": epochs[0]["samples"] / median,
        "precision": str(precision or torch.float32).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "machine": machine_record("cpu"),
    }
    print(
        f"{args.model}: an FGSM-RS epoch over {result['images_per_epoch']:,} CIFAR-10 images in {median:.1f} s "
        f"(median of {len(seconds) - 1} after a warm-up epoch; {result['images_per_s']:.0f} images/s), "
        f"{result['precision']}, {result['threads']} threads, {machine_kind(result['machine'])}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
