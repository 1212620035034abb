"""Pruning strategies on the main job's setting: PGD-3 adversarial training of the small CNN
at eps 0.1 on Fashion-MNIST (the first 20,000 training images: 19,500 trained on, 500 held out
for validation; 5 epochs, batch 128), one `advprune train --prune SPEC` run per strategy, in one
process, in sequence (score-based specs score in the run: a scoring pass at the end of the first
epoch, unless --score-pass or --shared-scores); then clean and PGD-20 accuracy on the whole test
set (--eval-n; 10,000 images: a standard error near 0.5 points) and the total wall time including
scoring. A spec may carry extra flags after a space ("ccs:0.6 --score-pass"); --work DIR of an
interrupted invocation resumes it; bench/prune_summary.py makes the table over seeds.

The epoch-time rows compare the median epoch of a pruned run with that of the full run
measured in the same invocation (same settings, same machine): random:0.2 should take at
most 0.25 of a full epoch; dynamic pruning's pruned epochs are compared with their share of
samples.

    python bench/prune.py [--limit 20000] [--epochs 5] [--seed 0] [--specs none random:0.2 ...] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from advprune.cli import main as advprune

DEFAULT_SPECS = [
    "none",
    "dynamic:0.5",
    "dynamic:0.9",
    "random:0.6",
    "random:0.68",
    "ccs:0.6",
    "ccs:0.6 --score-pass",
    "el2n:0.6 --score-pass",
    "keep-hard:0.6",
    "random:0.2",
    "random:0.36",
    "ccs:0.2",
    "ccs:0.2:adv_el2n",
    "ccs:0.2 --score-pass",
    "keep-hard:0.2",
    "keep-hard:0.36",
]
SCORED = ("el2n", "ccs", "forgetting", "hardest", "easiest", "grand")


def run(spec: str, out: Path, common: list[str], scores: Path | None) -> dict:
    """One `advprune train` run (a spec may carry extra flags after a space: "ccs:0.6 --score-pass"); a run
    whose folder already holds eval.json is read back, not run again, so an interrupted bench resumes."""
    method, *extra = spec.split()
    if not (out / "eval.json").is_file():
        argv = ["train", *common, "--out", str(out), *extra]
        if method != "none":
            argv += ["--prune", method]
            if scores is not None and method.split(":")[0] in SCORED:
                argv += ["--scores", str(scores)]
        if advprune(argv) != 0:
            raise SystemExit(f"advprune {' '.join(argv)} failed")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "phase" not in r and "event" not in r]
    selection = next((r for r in records if r.get("phase") == "pruning"), {})
    result = json.loads((out / "eval.json").read_text())
    scoring = selection.get("scoring_seconds", 0.0)
    wall = result["wall_seconds"]  # data, scoring, training, validation and the final evaluation
    return {
        "spec": spec,
        "clean_acc": result["clean_acc"],
        "pgd20_acc": result["robust_acc"],
        "train_seconds": wall,
        "scoring_seconds": scoring + sum(r.get("scoring_pass_seconds", 0.0) for r in epochs),
        "total_seconds": wall + (scoring if "scores_file" in selection and scores is not None else 0.0),
        "samples": [r["samples"] for r in epochs],
        "epoch_seconds": [r["seconds"] for r in epochs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed (initial weights, order, selection)")
    parser.add_argument("--eval-n", type=int, default=10000, help="test samples of each run's final evaluation")
    parser.add_argument("--specs", nargs="+", default=DEFAULT_SPECS)
    parser.add_argument("--work", default=None, help="the run folders (default: a new dated one); reuse to resume")
    parser.add_argument("--out", default="bench/results/prune.json")
    parser.add_argument(
        "--shared-scores",
        action="store_true",
        help="score once (a warm-up run and a scoring pass) for all scored specs, instead of in each run",
    )
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path("bench/results/prune-runs") / time.strftime("%Y%m%d-%H%M%S")
    common = [
        "--dataset",
        "fashion-mnist",
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--step-size",
        "0.025",
        "--steps",
        "3",
        "--epochs",
        str(args.epochs),
        "--limit",
        str(args.limit),
        "--batch-size",
        "128",
        "--quiet",
        "--seed",
        str(args.seed),
        "--eval-n",
        str(args.eval_n),
    ]

    scores = None
    if args.shared_scores and any(s.split(":")[0] in SCORED for s in args.specs):
        scores = work / "scores.npz"  # one scoring pass (a warm-up epoch, FGSM scores) shared by the scored runs
        argv = [
            "score",
            "--limit",
            str(args.limit),
            "--warmup-epochs",
            "1",
            "--steps",
            "3",
            "--step-size",
            "0.025",
            "--eps",
            "0.1",
            "--out",
            str(scores),
        ]
        if advprune(argv) != 0:
            raise SystemExit("advprune score failed")
    rows = []
    for spec in args.specs:
        rows.append(run(spec, work / spec.replace(":", "-").replace(" --", "_"), common, scores))
        print(json.dumps(rows[-1]), flush=True)

    full = next((r for r in rows if r["spec"] == "none"), None)
    print("\n| strategy | kept per epoch | share of full | clean | PGD-20 | wall time incl. scoring | vs full epoch |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        epoch = statistics.median(r["epoch_seconds"])
        ratio = f"{epoch / statistics.median(full['epoch_seconds']):.3f}" if full else "-"
        share = f"{sum(r['samples']) / sum(full['samples']):.2f}" if full else "-"
        kept = "/".join(str(s) for s in r["samples"]) if len(set(r["samples"])) > 1 else str(r["samples"][0])
        print(
            f"| {r['spec']} | {kept} | {share} | {100 * r['clean_acc']:.1f}% | {100 * r['pgd20_acc']:.1f}% | "
            f"{r['total_seconds']:.0f} s | {ratio} |"
        )
    if full:
        full_epoch = statistics.median(full["epoch_seconds"])
        for r in rows:
            if r["spec"].startswith("dynamic"):
                pruned = [
                    (s, n) for s, n in zip(r["epoch_seconds"], r["samples"], strict=True) if n < full["samples"][0]
                ]
                for seconds, n in pruned:
                    print(
                        f"dynamic pruned epoch: {n} samples ({n / full['samples'][0]:.3f} of the data) took "
                        f"{seconds / full_epoch:.3f} of a full epoch"
                    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    summary = {"limit": args.limit, "epochs": args.epochs, "seed": args.seed, "rows": rows}
    Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
