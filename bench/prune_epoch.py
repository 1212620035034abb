"""Epoch wall time on pruned data against the full data, interleaved in one process:
PGD-3 training of the small CNN at eps 0.1 on 20,000 Fashion-MNIST images, batch 128
(the main job's setting). Each repetition runs a full epoch, an epoch of random:0.2 and an
epoch of dynamic:0.5 (a DynamicPruner fed by the previous epochs' losses, so its pruned
subset and weights are live), one after the other, so that the machine's drift hits all
three alike; the ratios are of the medians over the repetitions, after a warm-up epoch.

    python bench/prune_epoch.py [--limit 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from advprune import AttackConfig, OptimConfig, RunConfig, Trainer, models
from advprune.data import from_arrays, make_loader, read_fashion_mnist
from advprune.pruning import DynamicPruner, select
from advprune.train.epoch import run_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/prune_epoch.json")
    args = parser.parse_args()
    data = read_fashion_mnist()
    data = from_arrays(data.images[: args.limit], data.labels[: args.limit], data.classes)
    n = len(data)
    loader = make_loader(data, backend="memory", batch_size=128, seed=0, channels_last=True)
    torch.manual_seed(0)
    epochs = 2 + 3 * args.repeats
    dynamic = DynamicPruner(n, epochs=10 * epochs, ratio=0.5)  # never anneals within the bench
    trainer = Trainer(
        models.create("small-cnn"),
        AttackConfig("pgd", eps=0.1, step_size=0.025, steps=3),
        epochs=epochs,
        optim=OptimConfig(lr=0.05, schedule="constant"),
        run=RunConfig(quiet=True),
    )
    random_ids = select(n, 0.2, "random", seed=0)
    seconds: dict[str, list[float]] = {"full": [], "random:0.2": [], "dynamic:0.5": []}
    fraction: dict[str, list[float]] = {name: [] for name in seconds}
    epoch = 0

    def run(name: str, ids: torch.Tensor | None) -> None:
        """ids None: the dynamic pruner chooses the epoch's subset and weights (as in a --prune run);
        otherwise it only learns the losses of the epoch, as a tracker."""
        nonlocal epoch
        trainer.pruner, trainer.trackers = (dynamic, []) if ids is None else (None, [dynamic])
        if ids is not None:
            loader.set_indices(ids)
        record = run_epoch(trainer, loader, epoch)  # one epoch, timed by the trainer as in metrics.jsonl
        epoch += 1
        if name:
            seconds[name].append(record["seconds"])
            fraction[name].append(record["samples"] / n)
        print(
            json.dumps(
                {"variant": name or "warm-up", "seconds": round(record["seconds"], 2), "samples": record["samples"]}
            ),
            flush=True,
        )

    everything = torch.arange(n)
    run("", everything)  # warm-up; also feeds the dynamic pruner every sample's loss
    for _ in range(args.repeats):
        run("full", everything)
        run("random:0.2", random_ids)
        run("dynamic:0.5", None)
    full = statistics.median(seconds["full"])
    print("\n| epoch | share of the data | median seconds | vs full epoch | overhead over the share |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows = []
    for name in seconds:
        share, median = statistics.mean(fraction[name]), statistics.median(seconds[name])
        rows.append(
            {
                "variant": name,
                "share": share,
                "median_seconds": median,
                "ratio": median / full,
                "seconds": seconds[name],
            }
        )
        print(f"| {name} | {share:.3f} | {median:.2f} | {median / full:.3f} | {median / full - share:+.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"limit": n, "repeats": args.repeats, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
