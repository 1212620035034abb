"""PGD-K evaluation: advprune.evaluate (early exit: a sample leaves the attack at its first misclassified
iterate, and misclassified samples are never attacked) against torchattacks.PGD (every sample, all K
steps, judged on the last iterate), on one checkpoint and the first n test images, float32, in one run;
median seconds over rounds that run the two in turn after a warm-up (and each round's ratio), robust
accuracy of each, for both memory layouts, and each as it is used (advprune eval in channels_last,
torchattacks on the model as loaded: contiguous).

    make run   # or any run folder
    python bench/eval_pgd.py --checkpoint runs/main/last.pt [--n 1000] [--steps 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from advprune.cli.common import tensors
from advprune.cli.factory import checkpoint_model
from advprune.data.readers import read_dataset
from advprune.evaluate import evaluate


def interleaved_seconds(fns: dict, repeats: int) -> tuple[dict, dict, list[dict]]:
    """Each function once to warm up, then `repeats` rounds that run each once in turn (so that a slow spell of
    the machine falls on both sides of a ratio): median seconds by name, each one's last result, every round."""
    for fn in fns.values():
        fn()
    rounds, results = [], {}
    for _ in range(repeats):
        seconds = {}
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            seconds[name] = time.perf_counter() - start
        rounds.append(seconds)
    return {name: statistics.median(r[name] for r in rounds) for name in fns}, results, rounds


def torchattacks_pgd(model, x, y, eps: float, step: float, steps: int, batch_size: int) -> float:
    """Robust accuracy under torchattacks.PGD, batch by batch, on the last iterate."""
    import torchattacks

    attack = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=True)
    robust = 0
    for i in range(0, len(y), batch_size):
        x_adv = attack(x[i : i + batch_size], y[i : i + batch_size])
        with torch.no_grad():
            robust += int((model(x_adv).argmax(1) == y[i : i + batch_size]).sum())
    return robust / len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/eval_pgd.json")
    args = parser.parse_args()

    model, meta = checkpoint_model(args.checkpoint)
    model.eval()
    x, y = tensors(read_dataset(meta["dataset"], None, train=False), range(args.n))
    eps = meta["eps"]
    step = eps / 4
    rows = []
    for layout in ("contiguous", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        model = model.to(memory_format=fmt)
        xs = x.contiguous(memory_format=fmt)
        torch.manual_seed(0)
        medians, results, rounds = interleaved_seconds(
            {
                "torchattacks": lambda xs=xs, m=model: torchattacks_pgd(
                    m, xs, y, eps, step, args.steps, args.batch_size
                ),
                "advprune": lambda xs=xs, m=model: evaluate(
                    m, xs, y, attack="pgd", eps=eps, step_size=step, steps=args.steps, batch_size=args.batch_size
                ),
            },
            args.repeats,
        )
        theirs_s, ours_s = medians["torchattacks"], medians["advprune"]
        theirs_acc, ours = results["torchattacks"], results["advprune"]
        row = {
            "layout": layout,
            "torchattacks_s": theirs_s,
            "advprune_s": ours_s,
            "ratio": ours_s / theirs_s,
            "round_ratios": [r["advprune"] / r["torchattacks"] for r in rounds],
            "torchattacks_robust_acc": theirs_acc,
            "advprune_robust_acc": ours["robust_acc"],
            "clean_acc": ours["clean_acc"],
        }
        rows.append(row)
        print(
            f"{layout:<14} torchattacks.PGD {theirs_s:.2f} s {100 * theirs_acc:.1f}%   advprune {ours_s:.2f} s "
            f"{100 * ours['robust_acc']:.1f}%   ratio {row['ratio']:.2f} (rounds "
            f"{', '.join(f'{r:.2f}' for r in row['round_ratios'])})   (clean {100 * ours['clean_acc']:.1f}%)",
            flush=True,
        )
    # as each is used: advprune eval puts advprune's models in channels_last; a loaded model is contiguous
    by_layout = {row["layout"]: row for row in rows}
    defaults = by_layout["channels_last"]["advprune_s"] / by_layout["contiguous"]["torchattacks_s"]
    print(f"advprune eval's layout (channels_last) against torchattacks.PGD on the model as loaded: {defaults:.2f}")
    summary = {"checkpoint": args.checkpoint, "n": args.n, "steps": args.steps, "eps": eps, "rows": rows,
               "defaults_ratio": defaults}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
