"""`advprune report`: a sweep's results.jsonl as a Markdown table (mean ± std over seeds; each strategy
against random pruning at the same fraction and at the nearest wall time, with Welch's t-test p-values on
AutoAttack accuracy; References names other strategies to take as random pruning and the full data) and PNG
plots (robust accuracy against the fraction kept and against wall time, and the per-epoch curves); for a single
run folder, its per-epoch curves. Needs the `report` extra (matplotlib, scipy)."""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from advprune._deps import require
from advprune._files import readable_records
from advprune.machine import machine_kind
from advprune.train.run_folder import epoch_records, read_run_metrics

METRICS = ("clean_acc", "pgd_acc", "autoattack_acc", "total_s")


@dataclass(frozen=True)
class References:
    """The strategies the comparison columns measure against: `random` pruning at each fraction (its rows'
    specs are "random:F") and the `full` data (spec "full"); a named variant such as random+noaug and
    full+noaug compares each strategy with references trained in the same regime."""

    random: str = "random"
    full: str = "full"


DEFAULT_REFERENCES = References()


def load_results(sweep: Path, name: str = "results.jsonl") -> list[dict]:
    """A sweep's result lines; an unreadable line (a copy cut short, damage) is dropped with a warning."""
    return readable_records(sweep / name) if (sweep / name).exists() else []


def final_rows(sweep: Path, results: list[dict]) -> list[dict]:
    """The runs of final.jsonl (the sweep's [final] evaluations): each final line over its run's results line,
    so that its AutoAttack and clean accuracy replace the grid's and the rest (PGD, wall time) stays."""
    by_run = {line["run"]: line for line in results}
    return [{**by_run[f["run"]], **f} for f in load_results(sweep, "final.jsonl") if f["run"] in by_run]


def one_machine_rows(results: list[dict], machine: str | None, where: str) -> list[dict]:
    """The rows of one kind of machine: all of them where they share one, else those of the kind whose name
    contains machine; ValueError naming each kind and its row count where that does not pick exactly one."""
    kinds = Counter(machine_kind(line.get("machine")) for line in results)
    listing = "; ".join(f"{kind} ({count} rows)" for kind, count in kinds.items())
    if machine is None:
        if len(kinds) > 1:
            raise ValueError(
                f"{where} holds rows timed on {len(kinds)} kinds of machine, whose wall times do not compare: "
                f"{listing}. Pass --machine TEXT (a part of one kind's name) to report one"
            )
        return results
    chosen = [kind for kind in kinds if machine.lower() in kind.lower()]
    if len(chosen) != 1:
        raise ValueError(f"--machine {machine!r} matches {len(chosen)} of the kinds in {where}: {listing}")
    return [line for line in results if machine_kind(line.get("machine")) == chosen[0]]


def group_rows(results: list[dict]) -> dict[tuple[str, float], list[dict]]:
    """The results by (spec, fraction), each group one line per seed."""
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for line in results:
        groups[(line["spec"], line["fraction"])].append(line)
    return dict(sorted(groups.items(), key=lambda item: (-_sortable(item[0][1]), item[0][0])))


def _sortable(fraction: float) -> float:
    return 2.0 if fraction != fraction else fraction  # fraction-free specs (dynamic) first


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch's t-test p-value of two samples (None with fewer than 2 values on a side)."""
    if len(a) < 2 or len(b) < 2:
        return None
    stats = require("scipy.stats", extra="report", purpose="advprune report's t-tests")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def half_gap_p(strategy: list[float], random: list[float], full: list[float]) -> float | None:
    """One-sided p-value against "the strategy closes at most half of random's gap to the full data" (the
    floors' claim is its opposite): Welch's t on the contrast strategy - random/2 - full/2, with
    Welch-Satterthwaite degrees of freedom; None with fewer than 2 values on a side."""
    sides = [(strategy, 1.0), (random, -0.5), (full, -0.5)]
    if any(len(values) < 2 for values, _ in sides):
        return None
    estimate = sum(weight * statistics.fmean(values) for values, weight in sides)
    parts = [weight**2 * statistics.variance(values) / len(values) for values, weight in sides]
    variance = sum(parts)
    if variance == 0:
        return 0.0 if estimate > 0 else 1.0
    freedom = variance**2 / sum(part**2 / (len(values) - 1) for part, (values, _) in zip(parts, sides, strict=True))
    stats = require("scipy.stats", extra="report", purpose="advprune report's t-tests")
    return float(stats.t.sf(estimate / math.sqrt(variance), freedom))


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _random_groups(groups, refs: References = DEFAULT_REFERENCES) -> dict[float, list[dict]]:
    """The random reference's rows by fraction, the full data's at 1.0."""
    randoms = {f: rows for (spec, f), rows in groups.items() if _is_random(spec, refs)}
    for (spec, _f), rows in groups.items():
        if spec == refs.full:
            randoms[1.0] = rows
    return randoms


def _is_random(spec: str, refs: References) -> bool:
    return spec.startswith(f"{refs.random}:")


def check_references(results: list[dict], refs: References, where: str) -> None:
    """ValueError naming a reference given (not the default) that no row of results has, and the strategies
    that are there."""
    specs = {r["spec"] for r in results}
    for flag, name, found in (
        ("random", refs.random, any(_is_random(spec, refs) for spec in specs)),
        ("full", refs.full, refs.full in specs),
    ):
        if not found and name != getattr(DEFAULT_REFERENCES, flag):
            there = ", ".join(sorted({strategy_name(spec) for spec in specs}))
            raise ValueError(f"--{flag}-ref {name!r}: no row of {where} has that strategy (there: {there})")


def comparison(rows: list[dict], randoms: dict[float, list[dict]], fraction: float) -> dict:
    """The strategy's AutoAttack gap to random at its fraction (and the share of random's gap to full data it
    closes there) and to random at the nearest mean wall time."""
    acc = [r["autoattack_acc"] for r in rows]
    out: dict = {}
    if fraction in randoms:
        base = [r["autoattack_acc"] for r in randoms[fraction]]
        out["vs_fraction"] = (statistics.fmean(acc) - statistics.fmean(base), welch_p(acc, base))
        if 1.0 in randoms and fraction != 1.0:
            full = [r["autoattack_acc"] for r in randoms[1.0]]
            random_gap = statistics.fmean(full) - statistics.fmean(base)
            if random_gap > 0:
                out["gap_closed"] = out["vs_fraction"][0] / random_gap
                out["half_gap_p"] = half_gap_p(acc, base, full)
    if randoms:
        wall = statistics.fmean(r["total_s"] for r in rows)
        nearest = min(randoms, key=lambda f: abs(statistics.fmean(r["total_s"] for r in randoms[f]) - wall))
        base = [r["autoattack_acc"] for r in randoms[nearest]]
        out["vs_wall"] = (nearest, statistics.fmean(acc) - statistics.fmean(base), welch_p(acc, base))
        curve = random_at_wall_time(randoms, wall)
        if curve is not None:
            out["vs_interpolated"] = statistics.fmean(acc) - curve
    return out


def random_at_wall_time(randoms: dict[float, list[dict]], wall: float) -> float | None:
    """Random pruning's mean AutoAttack accuracy at `wall` seconds: linear between the two random fractions
    (the full data as random at 1.0) whose mean wall times bracket it; None outside their range."""
    points = sorted(
        (statistics.fmean(r["total_s"] for r in rows), statistics.fmean(r["autoattack_acc"] for r in rows))
        for rows in randoms.values()
    )
    for (wall_lo, acc_lo), (wall_hi, acc_hi) in itertools.pairwise(points):
        if wall_lo <= wall <= wall_hi:
            return acc_lo + (acc_hi - acc_lo) * (wall - wall_lo) / (wall_hi - wall_lo) if wall_hi > wall_lo else acc_lo
    return None


def markdown_table(results: list[dict], refs: References = DEFAULT_REFERENCES) -> str:
    """The sweep's table: a row per (strategy, fraction), mean ± std over seeds, compared with refs."""
    groups = group_rows(results)
    randoms = _random_groups(groups, refs)
    lines = [
        "| strategy | fraction | seeds | samples | clean | PGD | AutoAttack | wall s "
        f"| vs {refs.random}, same fraction | vs {refs.random}, nearest wall time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    full = next((rows for (spec, _), rows in groups.items() if spec == refs.full), None)
    full_wall = statistics.fmean(r["total_s"] for r in full) if full else None
    for (spec, fraction), rows in groups.items():
        cells = [spec, "-" if fraction != fraction else f"{fraction:g}", str(len(rows))]
        cells.append(f"{statistics.fmean(r['samples'] for r in rows):,.0f}")
        for key in METRICS:
            mean, std = _mean_std([r[key] for r in rows])
            percent = f"{100 * mean:.1f} ± {100 * std:.1f}%"
            cells.append(_wall(mean, std, full_wall, rows) if key == "total_s" else percent)
        reference = _is_random(spec, refs) or spec == refs.full
        cmp = comparison(rows, randoms, fraction) if not reference else {}
        closed = _gap_closed(cmp, refs)
        cells.append(_gap(*cmp["vs_fraction"]) + closed if "vs_fraction" in cmp else "")
        cells.append(_wall_comparison(cmp, refs))
        lines.append("| " + " | ".join(cells) + " |")
    first = results[0] if results else {}
    versions = sorted({line["machine"]["torch"] for line in results if "torch" in (line.get("machine") or {})})
    timed = f"Timed on {machine_kind(first['machine'])}" if first.get("machine") else "The machine was not recorded"
    timed += f", torch {', '.join(versions)}" if versions else ""
    note = (
        f"\nAccuracy on the first {first.get('test_n', '?')} test images; PGD-{first.get('pgd_steps', '?')} and "
        f"AutoAttack ({first.get('autoattack_version', '?')}); gaps in AutoAttack points with Welch's p; \"half "
        f'or more": one-sided Welch p against closing at most half of the gap from {refs.random} to {refs.full}; '
        f"\"on {refs.random}'s curve\": against {refs.random}'s accuracy interpolated at the strategy's wall time. "
        f"Wall: training, validation and scoring, with its share of {refs.full}'s wall time; * a run resumed after an "
        f"interruption (the interrupted call's seconds are lost: its wall time undercounts). {timed}."
    )
    return "\n".join(lines) + "\n" + note + "\n"


def _gap_closed(cmp: dict, refs: References) -> str:
    """The share of random's gap to the full data closed, and the p-value of its being half or more."""
    if "gap_closed" not in cmp:
        return ""
    p = f" (half or more: {shown_p(cmp['half_gap_p'])})" if cmp.get("half_gap_p") is not None else ""
    return f"; {100 * cmp['gap_closed']:.0f}% of {refs.random}'s gap to {refs.full} closed{p}"


def _wall_comparison(cmp: dict, refs: References) -> str:
    """The cell: random at the nearest wall time (gap, p), and the gap to random's curve at this wall time."""
    if "vs_wall" not in cmp:
        return ""
    nearest, gap, p = cmp["vs_wall"]
    curve = f"; {100 * cmp['vs_interpolated']:+.1f} on {refs.random}'s curve" if "vs_interpolated" in cmp else ""
    return f"{refs.full if nearest == 1.0 else f'{refs.random}:{nearest:g}'} {_gap(gap, p)}{curve}"


def _wall(mean: float, std: float, full_wall: float | None, rows: list[dict]) -> str:
    share = f" ({mean / full_wall:.2f}x)" if full_wall else ""
    resumed = "*" if any(r.get("resumed") for r in rows) else ""
    return f"{mean:.0f} ± {std:.0f}{share}{resumed}"


def _gap(gap: float, p: float | None) -> str:
    return f"{100 * gap:+.1f} ({shown_p(p)})" if p is not None else f"{100 * gap:+.1f}"


def shown_p(p: float) -> str:
    """A p-value as the table prints it: three decimals, "p < 0.001" below that."""
    return "p < 0.001" if p < 0.0005 else f"p = {p:.3f}"


def plot_sweep(results: list[dict], sweep: Path) -> list[Path]:
    """robust_vs_fraction.png, robust_vs_wall_time.png and (when the run folders are there) epochs.png in the
    sweep folder."""
    plt = _pyplot()
    groups = group_rows(results)
    full = [r["samples"] for r in results if r["spec"] == "full"]
    full_samples = statistics.fmean(full) if full else max(r["samples"] for r in results)
    by_strategy: dict[str, list] = defaultdict(list)
    for (spec, _fraction), rows in groups.items():
        mean, std = _mean_std([r["autoattack_acc"] for r in rows])
        share = statistics.fmean(r["samples"] for r in rows) / full_samples
        wall = statistics.fmean(r["total_s"] for r in rows)
        by_strategy[strategy_name(spec)].append((share, wall, mean, std))
    if "random" in by_strategy and "full" in by_strategy:
        by_strategy["random"] += by_strategy["full"]  # random pruning that keeps everything is the full data
    # full data last: random's line ends at its point, which would otherwise hide under that line
    strategies = sorted(by_strategy.items(), key=lambda item: (item[0] == "full", item[0]))
    styles = line_styles(len(strategies))
    written = []
    for name, x_index, xlabel in (
        ("robust_vs_fraction", 0, "share of the full run's samples"),
        ("robust_vs_wall_time", 1, "wall time of training, validation and scoring (s)"),
    ):
        fig, ax = plt.subplots(figsize=(7.5, 4))
        for (strategy, points), style in zip(strategies, styles, strict=True):
            points = sorted(points, key=lambda p, i=x_index: p[i])
            if points:
                xs = [p[x_index] for p in points]
                ax.errorbar(xs, [100 * p[2] for p in points], [100 * p[3] for p in points], capsize=3,
                            label=strategy, **style)  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel("AutoAttack accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: no point hidden under it
        written.append(_save(fig, sweep / f"{name}.png"))
    names = {line["run"] for line in results}
    runs = [
        p for p in sorted((sweep / "runs").glob("*-seed0")) if p.name in names and epoch_records(read_run_metrics(p))
    ]
    if runs:  # a sweep's results without its run folders (a copy of results.jsonl) has no epochs to plot
        written.append(plot_epochs(runs, sweep / "epochs.png"))
    return written


def strategy_name(spec: str) -> str:
    """A spec without its fraction (random:0.2 -> random, ccs:0.2:adv_el2n -> ccs:adv_el2n): one line a plot."""
    parts = spec.split(":")
    return ":".join([parts[0], *parts[2:]])


def plot_epochs(folders: list[Path], out: Path) -> Path:
    """Validation PGD accuracy and training loss by epoch, one line per run folder."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    for folder, style in zip(folders, line_styles(len(folders)), strict=True):
        epochs = epoch_records(read_run_metrics(folder))
        val = [(r["epoch"], r["val_pgd_acc"]) for r in epochs if "val_pgd_acc" in r]
        if val:
            top.plot(*zip(*val, strict=True), label=folder.name, **style)
        bottom.plot([r["epoch"] for r in epochs], [r["train_loss"] for r in epochs], color=style["color"])
    top.set_ylabel("validation PGD accuracy")
    bottom.set_ylabel("training loss (adversarial)")
    bottom.set_xlabel("epoch")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(fontsize=6)
    return _save(fig, out)


MARKERS = "osD^vPX*"
# tab10, then ten more colours far from them and from each other: a crowded plot's lines differ in colour
COLOURS = (*(f"C{i}" for i in range(10)), "black", "gold", "darkcyan", "navy", "lime", "maroon", "magenta",
           "saddlebrown", "slategray", "darkkhaki")  # fmt: skip


def line_styles(n: int) -> list[dict]:
    """n distinct (colour, marker) pairs: twenty colours, then again with the next marker, so that a
    plot of up to twenty lines never shows two in one colour (matplotlib's own cycle repeats after ten)."""
    return [{"color": COLOURS[i % len(COLOURS)], "marker": MARKERS[i // len(COLOURS) % len(MARKERS)]} for i in range(n)]


def _pyplot():
    matplotlib = require("matplotlib", extra="report", purpose="advprune report's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def report(
    folder: str | Path, machine: str | None = None, refs: References = DEFAULT_REFERENCES
) -> tuple[str, list[Path]]:
    """The Markdown report and the plots of a sweep folder (results.jsonl; its rows of one kind of machine,
    compared with refs) or of one run folder."""
    folder = Path(folder)
    if (folder / "results.jsonl").exists():
        results = load_results(folder)
        if not results:
            raise ValueError(f"{folder}/results.jsonl holds no finished run yet")
        results = one_machine_rows(results, machine, f"{folder}/results.jsonl")
        check_references(results, refs, f"{folder}/results.jsonl")
        text = "# Sweep report\n\n"
        if refs != DEFAULT_REFERENCES:
            text += f"Each strategy compared with {refs.random} (at its fraction) and {refs.full}.\n\n"
        text += markdown_table(results, refs)
        final = final_rows(folder, results)
        if final:
            text += "\n## Final rows\n\nThe [final] runs evaluated once more with AutoAttack as named below.\n\n"
            rebuilt = sum(bool(line.get("model_rebuilt")) for line in final)
            if rebuilt:
                text += (f"{rebuilt} of these {len(final)} models were trained again for it (`--rebuild-models`), "
                         "every epoch record equal to its run's own.\n\n")  # fmt: skip
            text += markdown_table(final, refs)
        plots = plot_sweep(results, folder)
    elif (folder / "metrics.jsonl").exists():
        if machine is not None or refs != DEFAULT_REFERENCES:
            raise ValueError(
                f"--machine and the references pick and compare rows of a sweep folder; {folder} is one run's "
                "folder (metrics.jsonl)"
            )
        text = f"# Run {folder.name}\n"
        plots = [plot_epochs([folder], folder / "epochs.png")]
    else:
        raise ValueError(f"{folder} is neither a sweep folder (results.jsonl) nor a run folder (metrics.jsonl)")
    text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    (folder / "report.md").write_text(text)
    return text, plots
