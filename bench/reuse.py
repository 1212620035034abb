"""Perturbation reuse (ATTA) against fresh attacks, on the main job's setting (Fashion-MNIST, the small CNN,
eps 0.1, 5 epochs): PGD-2 starting from each sample's last perturbation, fresh PGD-2, and fresh PGD-10, each
trained with `advprune train` and evaluated with `advprune eval` (AutoAttack's APGD-CE and APGD-T, which
give the full AutoAttack's figure on this model, on the first --n test images). Resumable: a finished
(variant, seed) is read back from --out, never redone. Prints a table of mean ± std over the seeds.

    python bench/reuse.py [--seeds 0 1 2] [--n 1000] [--out bench/results/reuse]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMON = ["--dataset", "fashion-mnist", "--model", "small-cnn", "--eps", "0.1", "--epochs", "5",
          "--batch-size", "128", "--eval-n", "0", "--quiet"]  # fmt: skip
VARIANTS = {
    "PGD-2, reuse (int8)": ["--attack", "pgd", "--steps", "2", "--step-size", "0.05", "--reuse-perturbation", "int8"],
    "PGD-2, fresh": ["--attack", "pgd", "--steps", "2", "--step-size", "0.05"],
    "PGD-10, fresh": ["--attack", "pgd", "--steps", "10", "--step-size", "0.025"],
}


def advprune(args: list[str]) -> float:
    """Runs an advprune command; its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "advprune", *args], check=True)
    return time.perf_counter() - start


def run_one(name: str, flags: list[str], seed: int, n: int, out: Path) -> dict:
    folder = out / f"{name.split(',')[0].lower()}-{'reuse' if 'reuse' in name else 'fresh'}-seed{seed}"
    result_file = folder / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    train_s = advprune(["train", *COMMON, *flags, "--seed", str(seed), "--out", str(folder)])
    eval_file = folder / "eval_autoattack.json"
    eval_s = advprune(["eval", "--checkpoint", str(folder / "last.pt"), "--attack", "autoattack", "--stages",
                       "apgd-ce,apgd-t", "--n", str(n), "--out", str(eval_file), "--quiet"])  # fmt: skip
    evaluation = json.loads(eval_file.read_text())
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    result = {
        "variant": name,
        "seed": seed,
        "clean_acc": evaluation["clean_acc"],
        "autoattack_acc": evaluation["robust_acc"],
        "test_n": evaluation["n"],
        "train_wall_s": train_s,
        "epoch_s": sum(r["seconds"] for r in epochs if "epoch" in r and "event" not in r),
        "eval_wall_s": eval_s,
    }
    result_file.write_text(json.dumps(result, indent=1))
    return result


def cpu_name() -> str:
    """The CPU's model name and whether it computes bfloat16 natively (timings differ between the two kinds)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return f"{name}{', avx512_bf16' if 'avx512_bf16' in info else ', no avx512_bf16'}, one thread"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--out", default="bench/results/reuse")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [run_one(name, flags, seed, args.n, out) for seed in args.seeds for name, flags in VARIANTS.items()]
    cpu = cpu_name()
    lines = [f"Fashion-MNIST main job, {len(args.seeds)} seeds, AutoAttack (APGD-CE, APGD-T) on the first "
             f"{args.n} test images; {cpu}", "",
             "| training attack | seeds | clean | AutoAttack | training wall s | vs fresh PGD-10 time |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    walls = {}
    for name in VARIANTS:
        rows = [r for r in results if r["variant"] == name]
        walls[name] = statistics.mean(r["train_wall_s"] for r in rows)
    for name in VARIANTS:
        rows = [r for r in results if r["variant"] == name]
        clean = [100 * r["clean_acc"] for r in rows]
        robust = [100 * r["autoattack_acc"] for r in rows]
        spread = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        lines.append(
            f"| {name} | {len(rows)} | {statistics.mean(clean):.1f} ± {spread(clean):.1f}% "
            f"| {statistics.mean(robust):.1f} ± {spread(robust):.1f}% | {walls[name]:.0f} "
            f"| {walls[name] / walls['PGD-10, fresh']:.2f}x |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table)


if __name__ == "__main__":
    main()
