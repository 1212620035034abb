"""The small CNN's fused blocks in the attacks. --block first (the default): the model as advprune builds it
(FirstConv2d and MaxPool2x2: with the weights frozen, as every attack runs, the convolution and pooling run as one
CPU kernel, forward and input gradient) against the same weights in an nn.Conv2d (oneDNN's convolution, then the
pooling). --block second: the model as built (the second block's input gradient from the pooled gradient in one
kernel, ops.conv_max_pool2x2) against the same model with that block's layers run in turn (a no-op hook on its
pooling, which turns the fusion off). In the early-exit PGD evaluation of one checkpoint on the first n test
images, float32, both memory layouts; median seconds over rounds that run the two in turn after a warm-up, each
round's ratio, and the robust accuracy of each. With --train, the Trainer's PGD-3 epoch (its defaults, the first
train_n training images) with each, in turn, from the checkpoint's weights.

    make run   # or any run folder of the small CNN on one-channel images
    python bench/first_conv.py --checkpoint runs/main/last.pt [--block second] [--n 500] [--steps 50] [--train]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
from pathlib import Path

import torch
from eval_pgd import interleaved_seconds  # bench/ is the script's folder: its first import path

from advprune import AttackConfig, OptimConfig, RunConfig, Trainer
from advprune.cli.common import tensors
from advprune.cli.factory import checkpoint_model
from advprune.data import from_arrays, make_loader
from advprune.data.readers import read_dataset
from advprune.evaluate import evaluate

BASELINES = {"first": "nn.Conv2d", "second": "layers in turn"}  # what advprune's block is timed against


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block", choices=("first", "second"), default="first", help="which fused block to time")
    parser.add_argument("--train", action="store_true", help="also time the Trainer's PGD-3 epoch with each")
    parser.add_argument("--train-n", type=int, default=5120)
    parser.add_argument("--out", default="bench/results/first_conv.json")
    args = parser.parse_args()

    model, meta = checkpoint_model(args.checkpoint)
    if type(model.body[0]).__name__ != "FirstConv2d":
        raise SystemExit(f"{args.checkpoint}: not the small CNN on one-channel images (its first layer is FirstConv2d)")
    x, y = tensors(read_dataset(meta["dataset"], None, train=False), range(args.n))
    plain = copy.deepcopy(model)
    if args.block == "first":
        plain.body[0] = plain.body[0].as_conv2d()
    else:
        plain.body[4].register_forward_hook(lambda *_: None)  # a hooked block runs its layers in turn
    baseline = BASELINES[args.block]
    models = {"advprune": model.eval(), baseline: plain.eval()}
    rows = []
    for layout, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
        xs = x.contiguous(memory_format=fmt)
        fns = {
            name: functools.partial(
                evaluate, m.to(memory_format=fmt), xs, y, attack="pgd", eps=meta["eps"], steps=args.steps
            )
            for name, m in models.items()
        }
        medians, results, rounds = interleaved_seconds(fns, args.repeats)
        row = {
            "layout": layout,
            "seconds": medians,
            "robust_acc": {name: r["robust_acc"] for name, r in results.items()},
            "ratio": medians["advprune"] / medians[baseline],
            "round_ratios": [r["advprune"] / r[baseline] for r in rounds],
        }
        rows.append(row)
        print(
            f"{layout:<14} {baseline} {medians[baseline]:.2f} s   advprune {medians['advprune']:.2f} s   "
            f"ratio {row['ratio']:.2f} (rounds {', '.join(f'{r:.2f}' for r in row['round_ratios'])})   "
            f"robust {row['robust_acc']}"
        )
    if args.train:
        rows.append(train_row(models, baseline, meta, args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {"block": args.block, "n": args.n, "steps": args.steps, "repeats": args.repeats}
    config["threads"] = torch.get_num_threads()
    out.write_text(json.dumps({"checkpoint": args.checkpoint, **config, "rows": rows}, indent=1))
    print(f"wrote {out}")


def trainer_epoch(model: torch.nn.Module, eps: float, loader) -> float:
    """One PGD-3 epoch of the Trainer with its defaults on a copy of the model; the trained weights' norm (the
    same batches and noise for both layers: nearly the same weights)."""
    trainer = Trainer(
        copy.deepcopy(model).train(),
        AttackConfig("pgd", eps=eps, step_size=eps / 4, steps=3),
        epochs=1,
        optim=OptimConfig(lr=0.05, schedule="constant"),
        run=RunConfig(device="cpu", seed=0, quiet=True),
    )
    trainer.fit(loader)
    return float(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]).norm())


def train_row(models: dict, baseline: str, meta: dict, args: argparse.Namespace) -> dict:
    """The Trainer's epoch with each model, in turn (the same batches and noise for both)."""
    data = read_dataset(meta["dataset"], None, train=True)
    train = from_arrays(data.images[: args.train_n].copy(), data.labels[: args.train_n].copy())
    loader = make_loader(train, backend="memory", batch_size=128, channels_last=True, seed=0)
    fns = {name: functools.partial(trainer_epoch, m, meta["eps"], loader) for name, m in models.items()}
    medians, results, rounds = interleaved_seconds(fns, args.repeats)
    row = {
        "layout": "training epoch",
        "seconds": medians,
        "weight_norm": results,
        "ratio": medians["advprune"] / medians[baseline],
        "round_ratios": [r["advprune"] / r[baseline] for r in rounds],
    }
    print(
        f"Trainer epoch  {baseline} {medians[baseline]:.2f} s   advprune {medians['advprune']:.2f} s   "
        f"ratio {row['ratio']:.2f} (rounds {', '.join(f'{r:.2f}' for r in row['round_ratios'])})   "
        f"weight norm {row['weight_norm']}"
    )
    return row


if __name__ == "__main__":
    main()
