"""The pruning benchmark's table over seeds: for each strategy, the mean and standard deviation over the
seeds that ran it of clean and PGD-20 accuracy (from each run's evaluation on the test set: a file
named by --eval, e.g. eval10k.json written by `advprune eval --out`, else the run's own eval.json),
the share of the full run's training samples and the wall time.

    python bench/prune_summary.py bench/results/prune-seed0 bench/results/prune-seed1 ... [--eval eval10k.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def run_result(folder: Path, eval_name: str) -> dict | None:
    """One run's numbers, or None when it has not finished."""
    own = folder / "eval.json"
    if not own.is_file():
        return None
    chosen = folder / eval_name if (folder / eval_name).is_file() else own
    result = json.loads(chosen.read_text())
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    samples = sum(r["samples"] for r in records if "phase" not in r and "event" not in r)
    return {
        "clean": result["clean_acc"],
        "robust": result["robust_acc"],
        "n": result["n"],
        "samples": samples,
        "wall": json.loads(own.read_text())["wall_seconds"],
    }


def mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", nargs="+", help="the --work folders of bench/prune.py, one per seed")
    parser.add_argument("--eval", default="eval10k.json", help="an evaluation file in each run folder to prefer")
    args = parser.parse_args()
    table: dict[str, list[dict]] = {}
    for seed_folder in map(Path, args.seeds):
        for run in sorted(p for p in seed_folder.iterdir() if p.is_dir()):
            result = run_result(run, args.eval)
            if result is not None:
                table.setdefault(run.name, []).append(result)
    full = table.get("none")
    full_samples = statistics.mean(r["samples"] for r in full) if full else None
    print("| strategy | seeds | share of full | clean | PGD-20 | wall time | test samples |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, runs in table.items():
        share = f"{statistics.mean(r['samples'] for r in runs) / full_samples:.2f}" if full_samples else "-"
        wall = mean_std([r["wall"] for r in runs], scale=1.0, digits=0)
        print(
            f"| {name} | {len(runs)} | {share} | {mean_std([r['clean'] for r in runs])}% | "
            f"{mean_std([r['robust'] for r in runs])}% | {wall} s | {runs[0]['n']:,} |"
        )


if __name__ == "__main__":
    main()
