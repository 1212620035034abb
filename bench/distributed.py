"""One process against N under torchrun, the same global batch and the same work: epoch time of the
main job's setting (small CNN, PGD-3, Fashion-MNIST) with 1 process of N threads and with N
processes of 1 thread each (batch / N per rank, gloo on the CPU; nccl where GPUs are), medians of
the epochs after the first, per phase: the collectives live in the update phase (DDP's gradient
all-reduce) and the scoring phase (one all-gather of the per-sample results per step). Both runs use
keyed noise, so they train the same model up to the order of float sums; the final weights are
compared too, but over hundreds of steps any change of summation order (even 1 thread against 2 in one
process) flips the sign of some near-zero PGD gradients and the runs drift apart: compare the
accuracies (tests/test_distributed.py checks the weights over a short run, where they agree).

    python bench/distributed.py [--ranks 2] [--limit 20000] [--epochs 4] [--batch-size 128] [--amp none]
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

from advprune.checkpoint import load_checkpoint
from advprune.train.run_folder import epoch_records, read_run_metrics


def phase_medians(records: list[dict]) -> dict[str, float]:
    """Median seconds per epoch of the whole epoch and of each phase (the collectives live in `update`, DDP's
    gradient all-reduce, and `scoring`, the all-gather of per-sample results)."""
    names = {"seconds": "epoch", **{k: k.removesuffix("_seconds") for k in records[0] if k.endswith("_seconds")}}
    return {name: statistics.median(r[key] for r in records) for key, name in names.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--limit", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--amp", default="auto", help="the command's --amp (auto: bfloat16 where native)")
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
        "--amp",
        args.amp,
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
    one, many = (
        epoch_records(read_run_metrics(single))[1:],
        epoch_records(read_run_metrics(ranked))[1:],
    )  # the first epoch warms up
    a, b = load_checkpoint(single / "last.pt")["model"], load_checkpoint(ranked / "last.pt")["model"]
    worst = max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in a)
    result = {
        "ranks": args.ranks,
        "global_batch": args.batch_size,
        "samples": args.limit,
        "amp": args.amp,
        "one_process": phase_medians(one),
        "ranks_1_thread_each": phase_medians(many),
        "ratio": phase_medians(many)["epoch"] / phase_medians(one)["epoch"],
        "weights_max_relative_difference": worst,
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
