"""Perturbation reuse (ATTA) against fresh attacks: PGD-2 starting from each sample's last perturbation,
fresh PGD-2, and fresh PGD-10, each trained with `advprune train` and evaluated with `advprune eval`
(AutoAttack's APGD-CE and APGD-T on the first --n test images). Two settings: the main job's (Fashion-MNIST,
the small CNN, eps 0.1, 5 epochs; there APGD-CE and APGD-T give the full AutoAttack's figure) and the
CIFAR-10 CPU preset's (the small residual network, eps 8/255, random crops and flips, one-cycle to 0.2,
--epochs of them: 15 in the preset). Resumable: a finished (variant, seed) is read back from --out, never
redone; an interrupted training starts again (a resumed one's time would undercount), a trained one is only
evaluated. Prints a table of mean ± std over the seeds.

    python bench/reuse.py [--setting fashion-mnist|cifar10] [--epochs E] [--seeds 0 1 2] [--n 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

from advprune.machine import cpu_info
from advprune.train.run_folder import epoch_records, read_run_metrics


class Setting(NamedTuple):
    """One measured setting: where its data is (for training and evaluation alike), the training flags that
    every variant shares, eps as a string, its default epochs and its output folder."""

    data: list[str]
    flags: list[str]
    eps: str
    epochs: int
    out: str


SETTINGS = {
    "fashion-mnist": Setting([], ["--dataset", "fashion-mnist", "--model", "small-cnn", "--batch-size", "128"],
                             "0.1", 5, "bench/results/reuse"),
    "cifar10": Setting(["--data-dir", "data"], ["--dataset", "cifar10", "--model", "small-resnet", "--batch-size",
                       "512", "--lr", "0.2", "--lr-schedule", "onecycle", "--val-n", "1000", "--val-every", "5"],
                       "8/255", 15, "bench/results/reuse-cifar10"),
}  # fmt: skip
BASELINE = "PGD-10, fresh"  # the time the others are a share of


def variants(eps: str) -> dict[str, tuple[str, list[str]]]:
    """folder name: (label, flags); PGD-2 steps eps/2, PGD-10 eps/4 (the usual 2/255 at 8/255)."""
    step = Fraction(eps)
    pgd2 = ["--attack", "pgd", "--steps", "2", "--step-size", str(step / 2)]
    return {
        "pgd-2-reuse": ("PGD-2, reuse (int8)", [*pgd2, "--reuse-perturbation", "int8"]),
        "pgd-2-fresh": ("PGD-2, fresh", pgd2),
        "pgd-10-fresh": ("PGD-10, fresh", ["--attack", "pgd", "--steps", "10", "--step-size", str(step / 4)]),
    }


def advprune(args: list[str]) -> float:
    """Runs an advprune command; its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "advprune", *args], check=True)
    return time.perf_counter() - start


def run_one(
    variant: tuple[str, list[str]], folder: Path, common: list[str], where: list[str], seed: int, n: int
) -> dict:
    name, flags = variant
    result_file, train_file = folder / "result.json", folder / "train_wall_s.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    if train_file.exists():  # trained; the evaluation was interrupted
        train_s = json.loads(train_file.read_text())
    else:  # an interrupted training's seconds are lost: train it again from the start for an honest time
        shutil.rmtree(folder, ignore_errors=True)
        train_s = advprune(["train", *common, *where, *flags, "--seed", str(seed), "--out", str(folder)])
        train_file.write_text(json.dumps(train_s))
    eval_file = folder / "eval_autoattack.json"
    eval_s = advprune(["eval", "--checkpoint", str(folder / "last.pt"), "--attack", "autoattack", "--stages",
                       "apgd-ce,apgd-t", "--n", str(n), *where, "--out", str(eval_file), "--quiet"])  # fmt: skip
    evaluation = json.loads(eval_file.read_text())
    result = {
        "variant": name,
        "seed": seed,
        "clean_acc": evaluation["clean_acc"],
        "autoattack_acc": evaluation["robust_acc"],
        "test_n": evaluation["n"],
        "train_wall_s": train_s,
        "epoch_s": sum(r["seconds"] for r in epoch_records(read_run_metrics(folder))),
        "eval_wall_s": eval_s,
        "machine": machine_name(),
    }
    result_file.write_text(json.dumps(result, indent=1))
    return result


def check_epochs(folder: Path, epochs: int) -> None:
    """Refuses to read back a finished run trained for another number of epochs than asked for."""
    if (folder / "result.json").exists() and (trained := len(epoch_records(read_run_metrics(folder)))) != epochs:
        raise SystemExit(f"{folder} was trained for {trained} epochs, not --epochs {epochs}: pass another --out")


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}%"


def machine_name() -> str:
    """The device the runs used and the precision amp="auto" gives them there (advprune's own rule: bfloat16
    only where the hardware computes it natively), since timings and accuracies differ between the two."""
    import torch

    from advprune.train.amp import resolve_amp

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = "bfloat16" if resolve_amp("auto", device) == torch.bfloat16 else "float32"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name()}, {precision}, torch {torch.__version__}"
    return f"{cpu_info()['cpu']}, {precision}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=None, help="default: the setting's (5 / 15)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--out", default=None, help="default: bench/results/reuse (-cifar10)")
    args = parser.parse_args()
    setting = SETTINGS[args.setting]
    epochs = args.epochs or setting.epochs
    out = Path(args.out or setting.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [*setting.flags, "--eps", setting.eps, "--epochs", str(epochs), "--eval-n", "0", "--quiet"]
    kinds = variants(setting.eps)
    folders = {(slug, seed): out / f"{slug}-seed{seed}" for seed in args.seeds for slug in kinds}
    for folder in folders.values():
        check_epochs(folder, epochs)
    results = [
        run_one(kinds[slug], folder, common, setting.data, seed, args.n) for (slug, seed), folder in folders.items()
    ]
    machines = "; ".join(sorted({r.get("machine", "machine not recorded") for r in results}))
    lines = [f"{args.setting}, {epochs} epochs, {len(args.seeds)} seeds, AutoAttack (APGD-CE, APGD-T) on the "
             f"first {args.n} test images; {machines}", "",
             "| training attack | seeds | clean | AutoAttack | training wall s | vs fresh PGD-10 time |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    by_variant = {label: [r for r in results if r["variant"] == label] for label, _ in kinds.values()}
    walls = {label: statistics.mean(r["train_wall_s"] for r in rows) for label, rows in by_variant.items()}
    for label, rows in by_variant.items():
        clean = mean_std([100 * r["clean_acc"] for r in rows])
        robust = mean_std([100 * r["autoattack_acc"] for r in rows])
        share = walls[label] / walls[BASELINE]
        lines.append(f"| {label} | {len(rows)} | {clean} | {robust} | {walls[label]:.0f} | {share:.2f}x |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table)


if __name__ == "__main__":
    main()
