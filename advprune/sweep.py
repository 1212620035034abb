"""`advprune sweep`: a grid of (pruning spec, fraction, seed) runs of one training setting, each in its own
folder under the sweep folder, resumable at every step: a finished run is never redone, an interrupted
one resumes from its checkpoint, an evaluation already written is kept. Each finished run appends one
line to results.jsonl: clean, PGD-50 and AutoAttack accuracy (or the named cheaper stages), epochs,
samples trained, the wall time split into training, scoring and evaluation, and the machine the run
trained on (a folder's rows stay on one kind of machine unless mixed_machines: timings do not compare). A
folder keeps the config its rows were made with (sweep.json): another [train] or [eval], or a finished run's
name given to another grid entry, is refused unless mixed_configs; new specs, fractions and seeds are welcome.

A sweep config (TOML) has three tables:

    [train]   the `advprune train` flags shared by every run (dataset, model, attack, eps, epochs, ...)
    [grid]    specs = ["none", "random:{fraction}", "low+high:{fraction}", "dynamic:0.5",
                       {name = "resample+reuse", prune = "resample:{fraction}",
                        train = {reuse_perturbation = "int8"}}]
              fractions = [0.6, 0.4, 0.2]; seeds = [0, 1, 2]
              (a spec without {fraction} runs once per seed; "none" is the full data; a table is a named
              variant: its prune spec with train options of its own over [train]'s, and optionally seeds of
              its own instead of the grid's)
    [eval]    n = 1000; pgd_steps = 50; autoattack_stages = "apgd-ce,apgd-t" (or "standard")
    [final]   (optional) runs = ["full-*", "random-0.2-*"]; n = 1000; autoattack_stages = "standard":
              the rows that carry conclusions evaluated once more with the full AutoAttack, a final.jsonl
              line each (its fields over the run's results line)

Several sweep processes may share one sweep folder (one per core or machine): each claims a run's folder
before it starts it and skips the runs another has claimed; `only` restricts a process to some runs.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from advprune._deps import load_toml
from advprune._files import readable_records, write_bytes_atomic
from advprune.cli.common import UsageError
from advprune.cli.parser import DEFAULT_EPOCHS
from advprune.machine import one_machine
from advprune.sweep_check import check_same_config, check_same_machine, check_sweep_options
from advprune.sweep_rebuild import REBUILDS, rebuild_model
from advprune.train.folder_lock import held
from advprune.train.run_folder import epoch_records, read_run_metrics

PRESETS = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class GridRun:
    """One run of the grid: its prune spec (None: full data), the fraction it keeps, its seed; a named
    variant's label ("resample+reuse:0.2", else the spec) and its own train options."""

    spec: str | None
    fraction: float
    seed: int
    label: str | None = None
    train: tuple[tuple[str, object], ...] = ()

    @property
    def shown(self) -> str:
        """What the results and the report call it: the variant's label, the spec, or "full"."""
        return self.label or self.spec or "full"

    @property
    def name(self) -> str:
        return f"{self.shown.replace(':', '-').replace('+', '_')}-seed{self.seed}"


def load_sweep(path: str | Path) -> dict:
    """A sweep config from a TOML file, or a preset's name (advprune/presets/NAME.toml)."""
    file = Path(path)
    if not file.is_file() and (PRESETS / f"{path}.toml").is_file():
        file = PRESETS / f"{path}.toml"
    if not file.is_file():
        presets = ", ".join(sorted(p.stem for p in PRESETS.glob("*.toml")))
        raise ValueError(f"no sweep config at {path} (presets: {presets})")
    config = load_toml(file.read_text(), purpose="reading a sweep config")
    missing = {"train", "grid"} - set(config)
    if missing:
        raise ValueError(f"{file}: a sweep config needs the tables [train] and [grid], missing {sorted(missing)}")
    return config


def grid_runs(grid: dict) -> list[GridRun]:
    """Every (spec, fraction, seed) of the grid, in the order they run: seed by seed, so that a sweep cut
    short has whole seeds of every strategy rather than all seeds of a few. A variant with seeds of its own
    runs for those instead of the grid's (more seeds where a comparison is close)."""
    shared = list(grid.get("seeds", [0]))
    entry_seeds = [_variant_seeds(e) if isinstance(e, dict) and "seeds" in e else shared for e in grid["specs"]]
    extra = sorted({seed for seeds in entry_seeds for seed in seeds} - set(shared))
    runs = []
    for seed in shared + extra:
        for entry, seeds in zip(grid["specs"], entry_seeds, strict=True):
            if seed in seeds:
                runs += _entry_runs(entry, grid.get("fractions", []), seed)
    return runs


def _variant_seeds(entry: dict) -> list[int]:
    seeds = entry["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int and s >= 0 for s in seeds):
        raise ValueError(f"[grid] variant {entry.get('name')!r}: seeds is a list of whole numbers >= 0, got {seeds!r}")
    return seeds


def _entry_runs(entry: str | dict, fractions: list[float], seed: int) -> list[GridRun]:
    """The runs of one [grid] specs entry for one seed: a spec string, or a variant table (name, prune,
    train, seeds)."""
    if isinstance(entry, dict):
        unknown = set(entry) - {"name", "prune", "train", "seeds"}
        if unknown or "name" not in entry or "prune" not in entry:
            raise ValueError(
                f"a [grid] variant is {{name = ..., prune = ..., train = {{...}}, seeds = [...]}}, got {entry}"
            )
        options = tuple(sorted(entry.get("train", {}).items()))
        label = entry["name"] + (":{fraction}" if "{fraction}" in entry["prune"] else "")
        return [
            GridRun(run.spec, run.fraction, seed, label.format(fraction=run.fraction), options)
            for run in _entry_runs(entry["prune"], fractions, seed)
        ]
    if entry == "none":
        return [GridRun(None, 1.0, seed)]
    if "{fraction}" in entry:
        return [GridRun(entry.format(fraction=f), f, seed) for f in fractions]
    return [GridRun(entry, float("nan"), seed)]


def select_runs(runs: list[GridRun], only: list[str] | None) -> list[GridRun]:
    """The runs whose names match one of the shell patterns in only ("full-*", "random-0.2-seed?"), in grid
    order; all of them for None. A pattern that matches no run is a mistake worth naming."""
    if not only:
        return runs
    unmatched = [pattern for pattern in only if not matching_runs(runs, [pattern])]
    if unmatched:
        names = ", ".join(r.name for r in runs[:6])
        raise ValueError(f"--only {', '.join(unmatched)} matches no run of the grid (its runs: {names}, ...)")
    return matching_runs(runs, only)


def matching_runs(runs: list[GridRun], patterns: list[str]) -> list[GridRun]:
    """The runs whose names match one of the shell patterns, in grid order."""
    return [r for r in runs if any(fnmatch.fnmatchcase(r.name, pattern) for pattern in patterns)]


def _flags(options: dict) -> list[str]:
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False:
            flags += [flag, str(value)]
    return flags


class RunFailed(RuntimeError):
    """A run's `advprune train` or `advprune eval` failed: its last line of output and the log that has all."""

    def __init__(self, args: list[str], code: int, log: Path) -> None:
        last = last_line(log)
        super().__init__(f"{log.parent.name}: advprune {args[0]} failed (exit {code}): {last} (all of it: {log})")


def last_line(log: Path) -> str:
    """A log's last line that is not blank ("no output" for none): what a failed process said last."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _advprune(args: list[str], log: Path) -> float:
    """Runs `python -m advprune ARGS` in its own process (a crash or a leak stays there), its output appended
    to log; its wall seconds. A failure raises RunFailed."""
    start = time.perf_counter()
    with log.open("a") as out:
        done = subprocess.run([sys.executable, "-m", "advprune", *args], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RunFailed(args, done.returncode, log)
    return time.perf_counter() - start


def _evaluation(args: list[str], log: Path) -> float:
    """Runs `advprune eval ARGS` in this process (no second start-up of torch per evaluation), its output
    appended to log; its wall seconds."""
    import contextlib

    from advprune.cli import main

    start = time.perf_counter()
    with log.open("a") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(args)
    if code != 0:
        raise RunFailed(args, code, log)
    return time.perf_counter() - start


def train_epochs(options: dict) -> int:
    """The epochs a run with these `advprune train` options trains: its `epochs`, else the command's default."""
    return int(options.get("epochs", DEFAULT_EPOCHS))


def epochs_trained(folder: Path) -> int:
    """The epochs a run folder's metrics log records (0 for a folder without one)."""
    records = epoch_records(read_run_metrics(folder))
    return records[-1]["epoch"] + 1 if records else 0


def is_trained(folder: Path, epochs: int) -> bool:
    """Whether a run folder holds all `epochs` epochs and the checkpoint of the last."""
    return epochs_trained(folder) >= epochs and (folder / "last.pt").exists()


def run_options(run: GridRun, train: dict) -> dict:
    """The run's `advprune train` options: [train]'s, under a variant's own (epochs too), and its seed."""
    return {**train, **dict(run.train), "seed": run.seed}


def train_argv(run: GridRun, train: dict, folder: Path) -> list[str]:
    """The `advprune train` arguments that train the run into folder (a resume adds --resume)."""
    args = ["train", *_flags(run_options(run, train)), "--out", str(folder), "--quiet"]
    return args + (["--prune", run.spec] if run.spec is not None else [])


def _train(run: GridRun, folder: Path, train: dict, log: Path) -> float:
    """Trains the run (or finishes it from its checkpoint); the wall seconds of this call."""
    if is_trained(folder, train_epochs(run_options(run, train))):
        return 0.0
    args = train_argv(run, train, folder)
    if (folder / "last.pt").exists():
        args.append("--resume")
        _mark_resumed(folder)
    return _advprune(args, log)


def _mark_resumed(folder: Path) -> None:
    """Notes in wall.json that the run resumes from a checkpoint: the call that was cut short lost its
    seconds, so the run's wall time undercounts (the report marks such runs)."""
    _write_wall(folder, {**_read_wall(folder), "resumed": True})


def _read_wall(folder: Path) -> dict:
    path = folder / "wall.json"
    return json.loads(path.read_text()) if path.exists() else {"train": 0.0, "eval": 0.0}


def _write_wall(folder: Path, totals: dict) -> None:
    write_bytes_atomic(folder / "wall.json", json.dumps(totals).encode(), durable=True)


def _evaluate(folder: Path, evaluation: dict, log: Path, train: dict) -> tuple[dict, dict, float]:
    """PGD and AutoAttack results of the run's last.pt (each written once, kept when there), on the training
    setting's data folder and device; eval seconds."""
    seconds = 0.0
    pgd_file, aa_file = folder / "eval_pgd.json", folder / "eval_autoattack.json"
    common = _eval_args(folder, evaluation.get("n", 1000), train, evaluation)
    if not pgd_file.exists():
        steps = str(evaluation.get("pgd_steps", 50))
        seconds += _evaluation([*common, "--attack", "pgd", "--steps", steps, "--out", str(pgd_file)], log)
    if not aa_file.exists():
        stages = _autoattack_flags(evaluation.get("autoattack_stages", "standard"))
        seconds += _evaluation([*common, *stages, "--out", str(aa_file)], log)
    return json.loads(pgd_file.read_text()), json.loads(aa_file.read_text()), seconds


def _eval_args(folder: Path, n: int, train: dict, evaluation: dict) -> list[str]:
    """`advprune eval` of the run's last.pt on the first n test images, on the training setting's data folder
    and device, with its malloc choice, in the [eval] table's layout (contiguous = true: as evaluations before
    `advprune eval` went channels_last)."""
    where = _flags({key: train[key] for key in ("data_dir", "device", "default_malloc") if key in train})
    layout = ["--contiguous"] if evaluation.get("contiguous", False) else []
    return ["eval", "--checkpoint", str(folder / "last.pt"), "--n", str(n), "--quiet", *where, *layout]


def _autoattack_flags(stages: str) -> list[str]:
    """AutoAttack with the named stages ("standard": all four)."""
    return ["--attack", "autoattack", *([] if stages == "standard" else ["--stages", stages])]


def result_line(run: GridRun, folder: Path, pgd: dict, autoattack: dict, seconds: dict) -> dict:
    """The results.jsonl line of a finished run."""
    records = read_run_metrics(folder)
    epochs = epoch_records(records)
    scoring = sum(r.get("scoring_seconds", 0.0) for r in records if r.get("phase") == "pruning")
    scoring += sum(r.get("scoring_pass_seconds", 0.0) for r in epochs)
    return {
        "run": run.name,
        "spec": run.shown,
        "prune": run.spec,
        "train_options": dict(run.train),
        "fraction": run.fraction,
        "seed": run.seed,
        "clean_acc": pgd["clean_acc"],
        "pgd_acc": pgd["robust_acc"],
        "pgd_steps": pgd["steps"],
        "autoattack_acc": autoattack["robust_acc"],
        "autoattack_version": autoattack["version"],
        "test_n": pgd["n"],
        "epochs": len(epochs),
        "samples": sum(r["samples"] for r in epochs),
        "train_s": seconds["train"] - scoring,
        "scoring_s": scoring,
        "eval_s": seconds["eval"],
        "total_s": seconds["train"],
        "resumed": bool(seconds.get("resumed", False)),
        "machine": trained_on(records),
    }


def trained_on(records: list[dict]) -> dict | None:
    """The machine a run trained on, from the machine records of its fresh start and of each resume."""
    return one_machine([r["machine"] for r in records if r.get("phase") in ("setup", "resume") and "machine" in r])


def run_sweep(
    config: dict,
    out: str | Path,
    log=print,
    only: list[str] | None = None,
    final: bool = True,
    mixed_machines: bool = False,
    mixed_configs: bool = False,
    rebuild_models: bool = False,
) -> list[dict]:
    """Runs every grid run (of those matching only) not yet in out/results.jsonl nor claimed by another sweep
    process, then (unless final is False) the [final] table's evaluations; returns the result lines so far.
    Refuses a folder whose rows were timed on another kind of machine unless mixed_machines, and one whose rows
    were made with other [train] or [eval] settings (its sweep.json) unless mixed_configs. rebuild_models: a
    [final] run whose checkpoint is gone is trained again (advprune.sweep_rebuild) instead of waiting."""
    out = Path(out)
    grid = grid_runs(config["grid"])
    runs = select_runs(grid, only)
    check_sweep_options(  # every run's options and every evaluation's stages, before the first run trains
        [(run.name, train_argv(run, config["train"], out / "runs" / run.name)) for run in grid],
        {table: config[table].get("autoattack_stages", "standard") for table in ("eval", "final") if table in config},
    )
    finished = _results(out) if out.exists() else {}
    if not mixed_machines:
        check_same_machine(str(out), list(finished.values()), config["train"].get("device"))
    if not mixed_configs:
        check_same_config(str(out), _previous_config(out), config, set(finished))
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "sweep.json", json.dumps(config, indent=1).encode())
    for run in runs:
        if run.name in _results(out):
            continue
        folder = out / "runs" / run.name
        folder.mkdir(parents=True, exist_ok=True)
        with held(folder / "sweep.lock") as claimed:
            if not claimed:
                log(f"{run.name}: another sweep process has it, skipped")
                continue
            if run.name in _results(out):  # finished by another process since the first look
                continue
            line = _run_and_evaluate(run, folder, config)
            _append_line(out / "results.jsonl", line)  # before the claim ends: no other process redoes it
        log(f"{run.name}: clean {line['clean_acc']:.3f}, PGD {line['pgd_acc']:.3f}, AA {line['autoattack_acc']:.3f}")
    if final and "final" in config:
        _final_evaluations(config, out, runs, log, rebuild_models)
    return list(_results(out).values())


def _previous_config(out: Path) -> dict | None:
    """The config the folder's last sweep ran with (its sweep.json), None where there is none."""
    file = out / "sweep.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{file} is not readable JSON ({exc}): move it aside to sweep into this folder") from None


def _final_evaluations(config: dict, out: Path, runs: list[GridRun], log, rebuild: bool) -> None:
    """The [final] table's runs, once finished, evaluated with its AutoAttack (standard by default) on its n
    test images: one final.jsonl line each. A run without its model (a copied folder) waits, or with rebuild
    has it trained again and checked against its records (advprune.sweep_rebuild)."""
    for run in matching_runs(runs, config["final"].get("runs", [])):
        if run.name in _results(out) and run.name not in _finals(out):
            if not (out / "runs" / run.name / "last.pt").exists() and not _rebuilt(run, out, config, log, rebuild):
                continue
            line = _final_evaluation(run, out, config)
            if line is not None:
                log(f"{run.name}: final AutoAttack ({line['autoattack_version']}) {line['autoattack_acc']:.3f}")


def _rebuilt(run: GridRun, out: Path, config: dict, log, rebuild: bool) -> bool:
    """Whether the finished run's missing model is back (trained again under the run's claim, when rebuild)."""
    if not rebuild:
        log(f"{run.name}: no last.pt here (trained elsewhere): its final evaluation waits for the model "
            "(--rebuild-models trains it again)")  # fmt: skip
        return False
    folder, scratch = out / "runs" / run.name, out / REBUILDS / run.name
    with held(folder / "sweep.lock") as claimed:
        if not claimed:  # another sweep process rebuilds it
            return False
        if (folder / "last.pt").exists():  # another process has just rebuilt it
            return True
        scratch.mkdir(parents=True, exist_ok=True)
        log(f"{run.name}: no last.pt here: training it again into {scratch} to compare with its records")
        return rebuild_model(folder, scratch, lambda to: _train(run, to, config["train"], to / "sweep.log"), log)


def _final_evaluation(run: GridRun, out: Path, config: dict) -> dict | None:
    """One run's final evaluation (its file kept when there), its final.jsonl line appended; None when another
    sweep process has the run or has just done it."""
    final, folder = config["final"], out / "runs" / run.name
    with held(folder / "sweep.lock") as claimed:
        if not claimed or run.name in _finals(out):
            return None
        file, seconds = folder / "eval_autoattack_final.json", 0.0
        if not file.exists():
            args = _eval_args(folder, final.get("n", 1000), config["train"], config.get("eval", {}))
            args += _autoattack_flags(final.get("autoattack_stages", "standard"))
            seconds = _evaluation([*args, "--out", str(file)], folder / "sweep.log")
        result = json.loads(file.read_text())
        line = {
            "run": run.name,
            "autoattack_acc": result["robust_acc"],
            "autoattack_version": result["version"],
            "stages": result.get("stages"),
            "test_n": result["n"],
            "clean_acc": result["clean_acc"],
            "final_eval_s": seconds,
            "reused_stages": result.get("reused_stages", []),  # taken from the [eval] step's AutoAttack
            "model_rebuilt": (folder / "rebuilt.json").exists(),  # trained again, every epoch record equal
        }
        _append_line(out / "final.jsonl", line)  # before the claim ends: no other process redoes it
    return line


def _finals(out: Path) -> dict[str, dict]:
    """The final evaluation lines by run name."""
    return _lines_by_run(out / "final.jsonl")


def _append_line(path: Path, line: dict) -> None:
    """Appends one JSON line under the results lock, a line torn by a kill cut off first."""
    with held(path.parent / "results.lock", blocking=True):
        _finished(path)
        with path.open("a") as f:  # one line, flushed: a kill loses at most one run
            f.write(json.dumps(line) + "\n")
            f.flush()


def _run_and_evaluate(run: GridRun, folder: Path, config: dict) -> dict:
    """Trains (or finishes) and evaluates one run; its results line."""
    logfile = folder / "sweep.log"
    _add_seconds(folder, "train", _train(run, folder, config["train"], logfile))
    pgd, autoattack, eval_s = _evaluate(folder, config.get("eval", {}), logfile, config["train"])
    return result_line(run, folder, pgd, autoattack, _add_seconds(folder, "eval", eval_s))


def _results(out: Path) -> dict[str, dict]:
    """The finished runs' result lines by run name."""
    return _lines_by_run(out / "results.jsonl")


def _lines_by_run(path: Path) -> dict[str, dict]:
    """A results file's lines by run name, read under the results lock (another sweep process may be
    appending)."""
    with held(path.parent / "results.lock", blocking=True):
        return {line["run"]: line for line in _finished(path)}


def _add_seconds(folder: Path, phase: str, seconds: float) -> dict[str, float]:
    """The run's wall seconds by phase over all the sweep's calls (a run cut short resumes in a later call),
    kept in folder/wall.json so that they survive the sweep being killed; all phases so far."""
    totals = _read_wall(folder)
    totals[phase] += seconds
    _write_wall(folder, totals)
    return totals


def _finished(path: Path) -> list[dict]:
    """The result lines written so far; a line torn by a kill (no final newline) is cut off the file first,
    so that the next line is appended on a line of its own."""
    if not path.exists():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        write_bytes_atomic(path, text.encode(), durable=True)
    return readable_records(path)  # a damaged line is dropped with a warning: its run is evaluated again
