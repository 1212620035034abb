"""DeepFool scoring (`deepfool:F`'s pass over the training images): advprune.deepfool.deepfool_distance, which
judges each iterate with a forward without gradients and steps only the samples not yet flipped, against the
loop it replaced (one forward with gradients and C - 1 backward passes over every sample left, flipped or
not), on one checkpoint and the first n training images, float32, in one run: median seconds over rounds
that run the two in turn after a warm-up, each round's ratio, the share of samples the model already
misclassifies (distance 0: the first iterate's savings) and the largest difference of the distances.

    python bench/deepfool.py --checkpoint RUN/last.pt [--n 1024] [--batch-size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from eval_pgd import interleaved_seconds  # bench/ is the script's folder: its first import path

from advprune.attacks import model_mode
from advprune.cli.common import tensors
from advprune.cli.factory import checkpoint_model
from advprune.data.readers import read_dataset
from advprune.deepfool import _nearest_boundary_step, deepfool_distance


def deepfool_one_pass(model, x, y, *, max_iter: int = 50, overshoot: float = 0.02) -> torch.Tensor:
    """The baseline: advprune's DeepFool loop before 2026-12-06, which took the step's C - 1 backward passes
    over every sample left, flipped or not, and kept the rows not flipped: the same distances at more cost."""
    distance = torch.full((len(y),), float("inf"))
    total = torch.zeros_like(x)
    left = torch.arange(len(y))
    with model_mode(model, "eval"), torch.enable_grad():
        for _ in range(max_iter + 1):
            x_try = (x[left] + (1 + overshoot) * total[left]).requires_grad_(True)
            logits = model(x_try).float()
            flipped = logits.argmax(1) != y[left]
            distance[left[flipped]] = total[left[flipped]].flatten(1).norm(dim=1)
            keep = ~flipped
            if not bool(keep.any()):
                break
            step = _nearest_boundary_step(logits, x_try, y[left])  # each row's step is its own
            left = left[keep]
            total[left] += step[keep]
    return distance


def batched(fn, model, x, y, batch_size: int) -> torch.Tensor:
    """fn's distances of every sample, batch by batch (as a scoring pass calls it)."""
    return torch.cat([fn(model, x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=None, help="where the checkpoint's dataset lives (default: its reader's)")
    parser.add_argument("--out", default="bench/results/deepfool.json")
    args = parser.parse_args()

    model, meta = checkpoint_model(args.checkpoint)
    model.eval()
    x, y = tensors(read_dataset(meta["dataset"], args.data_dir, train=True), range(args.n))
    medians, results, rounds = interleaved_seconds(
        {
            "one_pass": lambda: batched(deepfool_one_pass, model, x, y, args.batch_size),
            "advprune": lambda: batched(deepfool_distance, model, x, y, args.batch_size),
        },
        args.repeats,
    )
    ours, theirs = results["advprune"], results["one_pass"]
    finite = torch.isfinite(ours) & torch.isfinite(theirs)
    summary = {
        "checkpoint": args.checkpoint,
        "n": args.n,
        "threads": torch.get_num_threads(),
        "one_pass_s": medians["one_pass"],
        "advprune_s": medians["advprune"],
        "ratio": medians["advprune"] / medians["one_pass"],
        "round_ratios": [r["advprune"] / r["one_pass"] for r in rounds],
        "misclassified_share": float((ours == 0).float().mean()),
        "same_unflipped": bool(torch.equal(torch.isinf(ours), torch.isinf(theirs))),
        "max_abs_difference": float((ours[finite] - theirs[finite]).abs().max()) if bool(finite.any()) else 0.0,
        "median_distance": float(ours[finite].median()) if bool(finite.any()) else float("nan"),
    }
    for key, value in summary.items():
        print(f"{key:<20} {value:.4f}" if isinstance(value, float) else f"{key:<20} {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
