"""torch.compile against eager: the Trainer's PGD-AT epoch (its defaults: bfloat16 where native, channels_last)
with RunConfig(compile=True), as `advprune train --compile` runs it, on the same model, data and seed, in one
run: median epoch seconds after the first (which pays for compilation) and that first epoch's extra time.

    python bench/compile_epoch.py [--n 5000] [--epochs 4] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from advprune import AttackConfig, OptimConfig, RunConfig, Trainer, models
from advprune.data import from_arrays, make_loader, read_fashion_mnist
from advprune.train.run_folder import epoch_records, read_run_metrics


def epoch_seconds(data, *, compile: bool, epochs: int, steps: int, out: Path) -> list[float]:
    torch.manual_seed(0)
    trainer = Trainer(
        models.create("small-cnn"),
        AttackConfig("pgd", eps=0.1, step_size=0.025, steps=steps),
        epochs=epochs,
        optim=OptimConfig(lr=0.05, schedule="cosine"),
        run=RunConfig(out_dir=out, quiet=True, compile=compile),
    )
    trainer.fit(make_loader(data, batch_size=128, seed=0))
    return [r["seconds"] for r in epoch_records(read_run_metrics(out))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="bench/results/compile_epoch.json")
    args = parser.parse_args()
    fashion = read_fashion_mnist()
    data = from_arrays(fashion.images[: args.n].copy(), fashion.labels[: args.n].copy())
    work = Path(tempfile.mkdtemp(prefix="advprune-compile-"))
    result = {"n": args.n, "steps": args.steps, "epochs": args.epochs}
    for name, compiled in (("eager", False), ("compile", True)):
        seconds = epoch_seconds(data, compile=compiled, epochs=args.epochs, steps=args.steps, out=work / name)
        result[name] = {"epochs_s": seconds, "median_s": statistics.median(seconds[1:])}
        result[name]["first_epoch_extra_s"] = seconds[0] - result[name]["median_s"]
    result["ratio"] = result["compile"]["median_s"] / result["eager"]["median_s"]
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
