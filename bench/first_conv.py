"""The small CNN's first convolution in the early-exit PGD evaluation: the model as advprune builds it
(FirstConv2d: with the weights frozen, as every attack runs, its input gradient comes from advprune's CPU kernel)
against the same weights in an nn.Conv2d (oneDNN's input gradient), on one checkpoint and the first n test
images, float32, both memory layouts; median seconds over rounds that run the two in turn after a warm-up, each
round's ratio, and the robust accuracy of each.

    make run   # or any run folder of the small CNN on one-channel images
    python bench/first_conv.py --checkpoint runs/main/last.pt [--n 500] [--steps 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
from pathlib import Path

import torch
from eval_pgd import interleaved_seconds  # bench/ is the script's folder: its first import path

from advprune.cli.common import tensors
from advprune.cli.factory import checkpoint_model
from advprune.data.readers import read_dataset
from advprune.evaluate import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/results/first_conv.json")
    args = parser.parse_args()

    model, meta = checkpoint_model(args.checkpoint)
    if type(model.body[0]).__name__ != "FirstConv2d":
        raise SystemExit(f"{args.checkpoint}: not the small CNN on one-channel images (its first layer is FirstConv2d)")
    x, y = tensors(read_dataset(meta["dataset"], None, train=False), range(args.n))
    plain = copy.deepcopy(model)
    plain.body[0] = plain.body[0].as_conv2d()
    models = {"advprune": model.eval(), "nn.Conv2d": plain.eval()}
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
            "ratio": medians["advprune"] / medians["nn.Conv2d"],
            "round_ratios": [r["advprune"] / r["nn.Conv2d"] for r in rounds],
        }
        rows.append(row)
        print(
            f"{layout:<14} nn.Conv2d {medians['nn.Conv2d']:.2f} s   advprune {medians['advprune']:.2f} s   "
            f"ratio {row['ratio']:.2f} (rounds {', '.join(f'{r:.2f}' for r in row['round_ratios'])})   "
            f"robust {row['robust_acc']}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {"n": args.n, "steps": args.steps, "repeats": args.repeats, "threads": torch.get_num_threads()}
    out.write_text(json.dumps({"checkpoint": args.checkpoint, **config, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
