"""One process against N under torchrun, the same global batch and the same work: epoch time of the
main job's setting (small CNN, PGD-3, Fashion-MNIST) with 1 process of N threads and with N
processes of 1 thread each (batch / N per rank, gloo on the CPU; nccl where GPUs are), and the
share of the distributed epoch spent outside the computation (collectives, waiting for the slowest
rank): the difference of the two epoch times. Both runs use keyed noise, so they train the same
model; the final weights are compared too.

    python bench/distributed.py [--ranks 2] [--limit 20000] [--epochs 3] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from advprune.checkpoint import load_checkpoint


def epoch_seconds(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in records if "epoch" in r and "event" not in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--limit", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--out", default="bench/results/distributed.json")
    args = parser.parse_args()
    common = [
        "train",
        "--limit",
        str(args.limit),
        "--epochs",
        str(args.epochs),
        "--steps",
        "3",
        "--eps",
        "0.1",
        "--val-n",
        "0",
        "--eval-n",
        "100",
        "--quiet",
        "--keyed-noise",
    ]
    work = Path(tempfile.mkdtemp(prefix="advprune-dist-"))
    single, ranked = work / "single", work / "ranks"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.ranks)}
    subprocess.run(
        [sys.executable, "-m", "advprune", *common, "--batch-size", str(args.batch_size), "--out", str(single)],
        check=True,
        env=env,
    )
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={args.ranks}",
            "-m",
            "advprune",
            *common,
            "--batch-size",
            str(args.batch_size // args.ranks),
            "--out",
            str(ranked),
        ],
        check=True,
        env=env,
    )
    one, many = epoch_seconds(single)[1:], epoch_seconds(ranked)[1:]  # the first epoch warms up
    a, b = load_checkpoint(single / "last.pt")["model"], load_checkpoint(ranked / "last.pt")["model"]
    worst = max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in a)
    result = {
        "ranks": args.ranks,
        "global_batch": args.batch_size,
        "samples": args.limit,
        "one_process_epoch_s": statistics.median(one),
        "ranks_epoch_s": statistics.median(many),
        "ratio": statistics.median(many) / statistics.median(one),
        "weights_max_relative_difference": worst,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
