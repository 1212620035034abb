"""AutoAttack's gradient stages with the model's weights frozen (what advprune.autoattack.robust_flags does)
against the same attack with them requiring gradients (as a user's model comes), on one checkpoint and
the first n test images, in one run: rounds that run the two in turn, the median time of each and of
their ratio, and whether the adversarial examples are the same bit for bit (they must be: freezing only
skips the weight gradients that FAB's loss.backward() computes and nothing reads).

    python bench/autoattack_frozen.py --checkpoint RUN/last.pt [--n 40] [--targets 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from advprune import attacks, autoattack
from advprune.cli.common import tensors
from advprune.cli.factory import checkpoint_model
from advprune.data.readers import read_dataset


def attack_once(model, name: str, x, y, meta: dict, targets: int, frozen: bool) -> tuple[torch.Tensor, float]:
    """(the stage's adversarial examples of x, seconds), with the weights frozen or requiring gradients."""
    model.requires_grad_(True)
    attack = autoattack.stage_attack(
        name, model, eps=meta["eps"], norm=meta.get("norm", "linf"), num_classes=meta["num_classes"], seed=0
    )
    if hasattr(attack, "n_target_classes"):
        attack.n_target_classes = targets
    start = time.perf_counter()
    with attacks.weights_frozen(model) if frozen else contextlib.nullcontext():
        x_adv = attack(x, y)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return x_adv, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--targets", type=int, default=1, help="target classes of APGD-T and FAB-T (standard: 9)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stages", default="apgd-ce,apgd-t,fab-t")
    parser.add_argument("--data-dir", default=None, help="the data folder (CIFAR-10: holds cifar-10-batches-py)")
    parser.add_argument("--out", default="bench/results/autoattack_frozen.json")
    args = parser.parse_args()

    model, meta = checkpoint_model(args.checkpoint, weights="raw")
    model.eval()
    x, y = tensors(read_dataset(meta["dataset"], args.data_dir, train=False), range(args.n))
    rows = {}
    print("| stage | weights requiring gradients | frozen | ratio (median of rounds) | same examples |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name in autoattack.parse_stages(args.stages, "--stages"):
        seconds, examples = {False: [], True: []}, {False: [], True: []}
        for _ in range(args.rounds):
            for frozen in (False, True):
                x_adv, s = attack_once(model, name, x, y, meta, args.targets, frozen)
                seconds[frozen].append(s)
                examples[frozen].append(x_adv)
        same = all(torch.equal(a, examples[False][0]) for a in examples[False] + examples[True])
        ratio = statistics.median(f / u for f, u in zip(seconds[True], seconds[False], strict=True))
        rows[name] = {"requiring_s": seconds[False], "frozen_s": seconds[True], "ratio": ratio, "same_examples": same}
        unfrozen, frozen_s = statistics.median(seconds[False]), statistics.median(seconds[True])
        print(f"| {name} | {unfrozen:.2f} s | {frozen_s:.2f} s | {ratio:.2f}x | {'yes' if same else 'NO'} |")
    summary = {"checkpoint": args.checkpoint, "n": args.n, "targets": args.targets, "threads": torch.get_num_threads()}
    summary["stages"] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
