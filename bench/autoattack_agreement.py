"""advprune's AutoAttack (advprune.autoattack: torchattacks' four attacks with the official settings,
stage by stage) against the official implementation (fra31/auto-attack, standard version) and against
torchattacks.AutoAttack(version="standard"), image for image, on one checkpoint and the first n test
images, in one run: robust accuracy of each, the images where the verdicts differ, and the time.

The official package is not a dependency of advprune: point --official at a folder that holds its
`autoattack` package (a clone of github.com/fra31/auto-attack), or leave it out to compare with
torchattacks alone.

    python bench/autoattack_agreement.py --checkpoint runs/main/last.pt [--n 1000] [--official DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from advprune import autoattack
from advprune.cli.common import tensors
from advprune.cli.factory import checkpoint_model
from advprune.data.readers import read_dataset


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@torch.no_grad()
def correct(model, x_adv, y, batch_size=500) -> torch.Tensor:
    return torch.cat(
        [model(x_adv[i : i + batch_size]).argmax(1) == y[i : i + batch_size] for i in range(0, len(y), batch_size)]
    )


def torchattacks_standard(model, x, y, eps: float, norm: str, num_classes: int) -> dict:
    import torchattacks

    attack = torchattacks.AutoAttack(
        model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard", n_classes=num_classes, seed=0
    )
    x_adv, seconds = timed(lambda: torch.cat([attack(x[i : i + 250], y[i : i + 250]) for i in range(0, len(y), 250)]))
    return {"robust": correct(model, x_adv, y), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--official", default=None, help="a folder holding the official `autoattack` package")
    parser.add_argument("--no-torchattacks", action="store_true", help="leave out torchattacks' standard version")
    parser.add_argument("--out", default="bench/results/autoattack_agreement.json")
    args = parser.parse_args()

    model, meta = checkpoint_model(args.checkpoint)
    model.eval()
    test = read_dataset(meta["dataset"], None, train=False)
    x, y = tensors(test, range(args.n))
    eps, norm = meta["eps"], meta.get("norm", "linf")
    rows = {}
    (ours, counts), seconds = timed(
        lambda: autoattack.robust_flags(model, x, y, eps=eps, norm=norm, num_classes=meta["num_classes"], seed=0)
    )
    rows["advprune"] = {"robust": ours, "seconds": seconds, "stages": {k: v / args.n for k, v in counts.items()}}
    if args.official:
        sys.path.insert(0, args.official)
        from autoattack import AutoAttack

        official = AutoAttack(
            model,
            norm={"linf": "Linf", "l2": "L2"}[norm],
            eps=eps,
            version="standard",
            device="cpu",
            seed=0,
            verbose=False,
        )
        x_adv, seconds = timed(lambda: official.run_standard_evaluation(x, y, bs=250))
        rows["official"] = {"robust": correct(model, x_adv, y), "seconds": seconds}
    if not args.no_torchattacks:
        rows["torchattacks standard"] = torchattacks_standard(model, x, y, eps, norm, meta["num_classes"])

    reference = rows.get("official", rows["advprune"])["robust"]
    summary = {"checkpoint": args.checkpoint, "n": args.n, "eps": eps, "norm": norm, "rows": {}}
    print("| implementation | robust accuracy | images judged differently from the official | seconds |")
    print("| --- | ---: | ---: | ---: |")
    for name, row in rows.items():
        differ = int((row["robust"] != reference).sum()) if "official" in rows else None
        acc = float(row["robust"].float().mean())
        summary["rows"][name] = {
            "robust_acc": acc,
            "differ": differ,
            "seconds": row["seconds"],
            **({"stages": row["stages"]} if "stages" in row else {}),
        }
        print(f"| {name} | {100 * acc:.1f}% | {'-' if differ is None else differ} | {row['seconds']:.0f} |")
    print("advprune per stage:", json.dumps(rows["advprune"]["stages"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    torch.save({name: row["robust"] for name, row in rows.items()}, Path(args.out).with_suffix(".flags.pt"))


if __name__ == "__main__":
    main()
