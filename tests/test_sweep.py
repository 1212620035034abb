"""advprune sweep and report on a tiny Fashion-MNIST grid: every run once, resumable at each step, one
results line per run; the report's table, Welch p-values and PNG plots; the presets load."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from advprune.cli import UsageError, main, parse
from advprune.data.readers import FASHION_MNIST_DIR
from advprune.machine import machine_kind, machine_record
from advprune.report import (
    References,
    _random_groups,
    comparison,
    group_rows,
    half_gap_p,
    line_styles,
    markdown_table,
    random_at_wall_time,
    report,
    shown_p,
    welch_p,
)
from advprune.sweep import PRESETS, grid_runs, load_sweep, run_sweep, select_runs
from advprune.sweep_check import check_same_config, check_same_machine

pytestmark = pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is missing")

CONFIG = {
    "train": {
        "dataset": "fashion-mnist",
        "limit": 384,
        "epochs": 2,
        "steps": 1,
        "batch_size": 64,
        "val_n": 64,
        "val_steps": 2,
        "eval_n": 0,
    },
    "grid": {"specs": ["none", "random:{fraction}", "low+high:{fraction}"], "fractions": [0.5], "seeds": [0, 1]},
    "eval": {"n": 32, "pgd_steps": 5, "autoattack_stages": "apgd-ce"},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    results = run_sweep(CONFIG, out, log=lambda _line: None)
    return out, results


def test_the_grid_runs_seed_by_seed():
    names = [run.name for run in grid_runs(CONFIG["grid"])]
    assert names == [
        "full-seed0",
        "random-0.5-seed0",
        "low_high-0.5-seed0",
        "full-seed1",
        "random-0.5-seed1",
        "low_high-0.5-seed1",
    ]


def test_every_run_has_one_results_line(sweep):
    out, _ = sweep
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["run"] for r in lines) == sorted(r.name for r in grid_runs(CONFIG["grid"]))
    for line in lines:
        assert 0 <= line["autoattack_acc"] <= line["pgd_acc"] + 0.1 and line["pgd_acc"] <= line["clean_acc"]
        assert line["test_n"] == 32 and line["pgd_steps"] == 5 and line["autoattack_version"] == "custom: apgd-ce"
        assert line["epochs"] == 2 and line["total_s"] > 0 and line["eval_s"] > 0
    full = next(r for r in lines if r["spec"] == "full")
    pruned = next(r for r in lines if r["spec"] == "random:0.5" and r["seed"] == full["seed"])
    assert full["samples"] == 2 * 320 and pruned["samples"] == 2 * 160  # 384 - 64 held out; half of them
    low_high = next(r for r in lines if r["spec"] == "low+high:0.5")
    assert low_high["scoring_s"] > 0  # the in-run scoring pass, counted apart from training


OTHER_MACHINE = {"cpu": "Another CPU", "cpu_family": 6, "cpu_model": 143, "avx512_bf16": True, "torch": "2.11.0"}


def test_every_line_records_the_machine_its_run_trained_on(sweep):
    _, results = sweep
    here = machine_kind(machine_record("cpu"))
    assert [machine_kind(line["machine"]) for line in results] == [here] * len(results)


def test_a_sweep_refuses_a_folder_timed_on_another_machine_before_anything_runs(tmp_path, sweep):
    _, results = sweep
    elsewhere = [{**r, "machine": OTHER_MACHINE} for r in results[:2]]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in elsewhere))
    other = re.escape(machine_kind(OTHER_MACHINE))
    with pytest.raises(UsageError, match=rf"holds rows timed on {other}, and this machine is .*--mixed-machines"):
        run_sweep(CONFIG, tmp_path, log=lambda _line: None)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweep.json").exists()
    check_same_machine(str(tmp_path), [*results, {"run": "from before machines were recorded"}], "cpu")
    assert parse(["sweep", "x.toml", "--mixed-machines"]).mixed_machines is True


def test_a_sweep_refuses_a_folder_made_with_other_settings_before_anything_runs(tmp_path, sweep):
    out, results = sweep
    (tmp_path / "results.jsonl").write_text(json.dumps(results[0]) + "\n")
    (tmp_path / "sweep.json").write_text((out / "sweep.json").read_text())
    longer = {**CONFIG, "train": {**CONFIG["train"], "epochs": 3}}
    with pytest.raises(
        UsageError, match=r"1 finished rows would not compare: \[train\] epochs: 2 -> 3\..*--mixed-configs"
    ):
        run_sweep(longer, tmp_path, log=lambda _line: None)
    assert not (tmp_path / "runs").exists() and json.loads((tmp_path / "sweep.json").read_text()) == CONFIG
    assert parse(["sweep", "x.toml", "--mixed-configs"]).mixed_configs is True


def test_a_folder_takes_new_runs_but_not_new_meanings_for_finished_ones():
    finished = {"full-seed0", "random-0.5-seed0", "low_high-0.5-seed0"}
    grown = {
        **CONFIG,
        "train": {**CONFIG["train"], "data_dir": "/elsewhere"},
        "grid": {**CONFIG["grid"], "specs": [*CONFIG["grid"]["specs"], "dynamic:0.5"], "seeds": [0, 1, 2]},
        "final": {"runs": ["full-*"]},
    }
    check_same_config("f", CONFIG, grown, finished)  # more runs, the data moved, a [final] table: welcome
    check_same_config("f", grown, grown, finished | {"dynamic-0.5-seed0"})  # nan fractions compare as equal
    check_same_config("f", CONFIG, {**CONFIG, "eval": {"n": 64}}, set())  # nothing finished: nothing to mix
    malloc = {**CONFIG, "train": {**CONFIG["train"], "default_malloc": True}, "eval": {**CONFIG["eval"], "n": 64}}
    with pytest.raises(UsageError, match=r"\[train\] default_malloc: unset -> True; \[eval\] n: 32 -> 64\."):
        check_same_config("f", CONFIG, malloc, finished)
    renamed = {"name": "low+high", "prune": "random:{fraction}", "train": {"batch_size": 8}}
    swapped = {**CONFIG, "grid": {**CONFIG["grid"], "specs": ["none", "random:{fraction}", renamed]}}
    message = r"run low_high-0.5-seed0: prune low\+high:0.5 -> prune random:0.5 with \{'batch_size': 8\}"
    with pytest.raises(UsageError, match=message):
        check_same_config("f", CONFIG, swapped, finished)
    check_same_config("f", CONFIG, swapped, finished - {"low_high-0.5-seed0"})  # not finished: free to change


def test_an_unreadable_sweep_json_is_named_not_overwritten(tmp_path, sweep):
    _, results = sweep
    (tmp_path / "results.jsonl").write_text(json.dumps(results[0]) + "\n")
    (tmp_path / "sweep.json").write_text('{"train": ')
    with pytest.raises(UsageError, match=r"sweep.json is not readable JSON .*move it aside"):
        run_sweep(CONFIG, tmp_path, log=lambda _line: None)
    assert (tmp_path / "sweep.json").read_text() == '{"train": '


def test_a_report_of_two_machines_rows_names_both_and_reports_one_at_a_time(tmp_path, sweep, capsys):
    _, results = sweep
    others = [{**r, "run": r["run"] + "-elsewhere", "machine": OTHER_MACHINE} for r in results[:3]]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*results, *others]))
    here, other = machine_kind(results[0]["machine"]), machine_kind(OTHER_MACHINE)
    listing = re.escape(f"{here} ({len(results)} rows); {other} (3 rows)")
    with pytest.raises(ValueError, match=rf"holds rows timed on 2 kinds of machine, .*: {listing}\. Pass --machine"):
        report(tmp_path)
    text, _ = report(tmp_path, machine="FAMILY 6, model 143")
    assert f"Timed on {other}, torch 2.11.0." in text and here not in text
    unrecorded = [{k: v for k, v in r.items() if k != "machine"} for r in results]
    assert "The machine was not recorded." in markdown_table(unrecorded)
    assert sum(line.startswith("| ") for line in text.splitlines()) == 2 + len({r["spec"] for r in others})
    assert main(["report", str(tmp_path), "--machine", "no such machine"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--machine 'no such machine' matches 0 of the kinds" in err and len(err.splitlines()) == 1


def test_a_sweep_never_redoes_a_finished_step(sweep):
    out, _ = sweep
    run = out / "runs" / "random-0.5-seed1"
    metrics = (run / "metrics.jsonl").read_text()
    lines = (out / "results.jsonl").read_text().splitlines()
    torn = lines[-1][: len(lines[-1]) // 2]  # the last run was killed while its line was being written
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n" + torn)
    (run.parent / "low_high-0.5-seed1" / "eval_autoattack.json").unlink()  # and before its AutoAttack
    pgd_before = (run.parent / "low_high-0.5-seed1" / "eval_pgd.json").stat().st_mtime_ns
    results = run_sweep(CONFIG, out, log=lambda _line: None)
    assert len(results) == 6 and (run / "metrics.jsonl").read_text() == metrics
    assert (run.parent / "low_high-0.5-seed1" / "eval_pgd.json").stat().st_mtime_ns == pgd_before
    assert (run.parent / "low_high-0.5-seed1" / "eval_autoattack.json").exists()
    assert [json.loads(line)["run"] for line in (out / "results.jsonl").read_text().splitlines()] == [
        json.loads(line)["run"] for line in lines
    ]  # the torn line cut off, the run's line written again on a line of its own


def test_the_report_compares_with_random_and_draws_the_plots(sweep):
    out, results = sweep
    text, plots = report(out)
    assert "| low+high:0.5 | 0.5 | 2 |" in text and "| random:0.5 | 0.5 | 2 |" in text and "| full | 1 | 2 |" in text
    groups = group_rows(results)
    ours = [r["autoattack_acc"] for r in groups[("low+high:0.5", 0.5)]]
    base = [r["autoattack_acc"] for r in groups[("random:0.5", 0.5)]]
    p = welch_p(ours, base)
    assert p is None or f"({shown_p(p)})" in markdown_table(results)
    assert {p.name for p in plots} == {"robust_vs_fraction.png", "robust_vs_wall_time.png", "epochs.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in plots)
    assert (out / "report.md").read_text() == text


@pytest.mark.parametrize("contiguous", [False, True])
def test_evaluations_read_the_training_settings_data_folder(tmp_path, monkeypatch, contiguous):
    """CIFAR-10 has no default folder: the evaluations must get the [train] table's data_dir (and device, and
    its malloc choice, so that they are timed as the training was), and the [eval] table's layout."""
    import advprune.sweep as sweep_module

    calls = []
    monkeypatch.setattr(sweep_module, "_evaluation", lambda args, log: calls.append(args) or 0.0)
    train = {"data_dir": "data", "device": "cpu", "default_malloc": True, "lr": 0.2}
    with pytest.raises(FileNotFoundError):  # nothing written by the stand-in evaluation
        sweep_module._evaluate(tmp_path, {"n": 8, "contiguous": contiguous}, tmp_path / "log", train)
    assert len(calls) == 2  # PGD, then AutoAttack
    for args in calls:
        at = args.index("--data-dir")
        assert args[at : at + 2] == ["--data-dir", "data"] and "--device" in args and "--default-malloc" in args
        assert "--lr" not in args
    assert all(parse(args).default_malloc and parse(args).contiguous == contiguous for args in calls)


def test_welch_p_against_a_known_value():
    pytest.importorskip("scipy")
    # t = -2.5 / sqrt(5/12 + 1/2) = -2.611, Welch-Satterthwaite df = 6.98: two-sided p = 0.0349
    assert welch_p([1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0, 7.0]) == pytest.approx(0.0349, abs=5e-4)
    assert welch_p([1.0], [2.0, 3.0]) is None


def test_a_run_folder_gets_its_epoch_curves(sweep):
    out, _ = sweep
    _, plots = report(out / "runs" / "full-seed0")
    assert [p.name for p in plots] == ["epochs.png"] and plots[0].exists()
    picks = r"--machine and the references pick and compare rows of a sweep folder; .*full-seed0 is one run's folder"
    with pytest.raises(ValueError, match=picks):
        report(out / "runs" / "full-seed0", machine="EPYC")
    with pytest.raises(ValueError, match=picks):
        report(out / "runs" / "full-seed0", refs=References(random="random+noaug"))


def test_every_preset_loads_and_a_missing_config_is_one_line(tmp_path, capsys, monkeypatch):
    names = sorted(path.stem for path in PRESETS.glob("*.toml"))
    assert {"paper-cifar10-cpu", "paper-cifar10-gpu", "paper-cifar10-gpu-seeds"} <= set(names)
    for name in names:
        config = load_sweep(name)
        assert config["train"]["dataset"] == "cifar10" and grid_runs(config["grid"]), name
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "nothing.toml"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no sweep config at nothing.toml (presets: paper-cifar10-cpu" in err and len(err.splitlines()) == 1


def test_a_copied_results_file_reports_wall_shares_and_resumed_runs_without_run_folders(tmp_path, sweep):
    """results.jsonl alone (the run folders left behind): the table and the two sweep plots, no empty epoch
    plot; each wall time with its share of the full run's, and a resumed run marked (its time undercounts)."""
    _, results = sweep
    lines = [dict(r) for r in results]
    for line in lines:
        if line["run"] == "random-0.5-seed0":
            line["resumed"] = True
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    text, plots = report(tmp_path)
    assert {p.name for p in plots} == {"robust_vs_fraction.png", "robust_vs_wall_time.png"}
    full = statistics.fmean(r["total_s"] for r in lines if r["spec"] == "full")
    random_rows = [r["total_s"] for r in lines if r["spec"] == "random:0.5"]
    share = statistics.fmean(random_rows) / full
    row = next(line for line in text.splitlines() if line.startswith("| random:0.5 |"))
    assert f"({share:.2f}x)*" in row
    assert "(1.00x) |" in next(line for line in text.splitlines() if line.startswith("| full |"))


def test_a_damaged_results_line_is_dropped_with_a_warning_naming_it(tmp_path, sweep):
    _, results = sweep
    lines = [json.dumps(r) for r in results]
    lines.insert(1, '{"run": "random-0.5-seed0", "clean_ac')  # a line damaged in a copy
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=re.escape(f"{tmp_path / 'results.jsonl'}:2: dropped an unreadable line")):
        text, _plots = report(tmp_path)
    assert next(line for line in text.splitlines() if line.startswith("| random:0.5 |"))


def test_only_selects_runs_by_pattern_and_names_a_pattern_that_matches_none(tmp_path, capsys):
    runs = grid_runs(CONFIG["grid"])
    picked = select_runs(runs, ["full-*", "random-0.5-seed1"])
    assert [r.name for r in picked] == ["full-seed0", "full-seed1", "random-0.5-seed1"]
    with pytest.raises(ValueError, match="--only dynamic-\\*, x matches no run of the grid"):
        select_runs(runs, ["full-*", "dynamic-*", "x"])
    config = tmp_path / "grid.toml"
    config.write_text('[train]\ndataset = "fashion-mnist"\n[grid]\nspecs = ["none"]\nseeds = [0]\n')
    assert main(["sweep", str(config), "--out", str(tmp_path / "out"), "--only", "random-*"]) == 2
    assert "--only random-* matches no run of the grid (its runs: full-seed0" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_a_run_another_sweep_process_holds_is_skipped_then_run_once_free(tmp_path):
    """Two sweep processes on one folder: a run whose folder another has claimed is left to it (no second
    training in the same folder, no second results line); once the claim is gone, a later call runs it."""
    import fcntl
    import os

    out, only = tmp_path / "sweep", ["random-0.5-seed0"]
    folder = out / "runs" / "random-0.5-seed0"
    folder.mkdir(parents=True)
    fd = os.open(folder / "sweep.lock", os.O_RDWR | os.O_CREAT)  # another process's claim (an fd of its own)
    fcntl.flock(fd, fcntl.LOCK_EX)
    said = []
    try:
        assert run_sweep(CONFIG, out, log=said.append, only=only) == []
    finally:
        os.close(fd)
    assert said == ["random-0.5-seed0: another sweep process has it, skipped"]
    assert not (folder / "metrics.jsonl").exists() and not (out / "results.jsonl").exists()
    results = run_sweep(CONFIG, out, log=lambda _line: None, only=only)
    assert [r["run"] for r in results] == ["random-0.5-seed0"] and results[0]["samples"] == 2 * 160


def test_a_named_variant_runs_its_spec_with_train_options_of_its_own(tmp_path, monkeypatch):
    import advprune.sweep as sweep_module

    grid = {
        "specs": ["random:{fraction}", {"name": "random+reuse", "prune": "random:{fraction}",
                                        "train": {"reuse_perturbation": "int8", "steps": 2}}],
        "fractions": [0.5],
        "seeds": [3],
    }  # fmt: skip
    plain, variant = grid_runs(grid)
    assert (plain.name, plain.shown) == ("random-0.5-seed3", "random:0.5")
    assert (variant.name, variant.shown, variant.spec) == ("random_reuse-0.5-seed3", "random+reuse:0.5", "random:0.5")
    calls = []
    monkeypatch.setattr(sweep_module, "_advprune", lambda args, log: calls.append(args) or 1.0)
    sweep_module._train(variant, tmp_path, {"dataset": "cifar10", "steps": 1}, tmp_path / "log")
    args = calls[0]
    assert args[args.index("--reuse-perturbation") + 1] == "int8" and args[args.index("--steps") + 1] == "2"
    assert args[args.index("--prune") + 1] == "random:0.5" and args.count("--steps") == 1
    with pytest.raises(ValueError, match="a \\[grid\\] variant is"):
        grid_runs({"specs": [{"name": "x"}], "seeds": [0]})


def test_a_variant_with_seeds_of_its_own_runs_for_those_alone_after_the_grids_seeds():
    more = {"name": "random+more", "prune": "random:{fraction}", "seeds": [4, 0, 3]}
    names = [run.name for run in grid_runs({"specs": ["none", more], "fractions": [0.5], "seeds": [1, 0]})]
    more_runs = [f"random_more-0.5-seed{seed}" for seed in (0, 3, 4)]
    assert names == ["full-seed1", "full-seed0", *more_runs]
    for bad in ([], [1, -2], "0,1", [1.5]):
        with pytest.raises(ValueError, match=r"variant 'random\+more': seeds is a list of whole numbers"):
            grid_runs({"specs": [{**more, "seeds": bad}], "fractions": [0.5]})


def test_the_share_of_randoms_gap_closed_at_the_same_fraction():
    def rows(spec, fraction, accs, wall):
        metrics = ("clean_acc", "pgd_acc", "autoattack_acc")
        return [
            {"spec": spec, "fraction": fraction, "samples": 1, "total_s": wall} | dict.fromkeys(metrics, a)
            for a in accs
        ]

    lines = [*rows("full", 1.0, [0.40, 0.42], 100), *rows("random:0.2", 0.2, [0.30, 0.32], 25)]
    groups = group_rows([*lines, *rows("resample:0.2", 0.2, [0.36, 0.38], 26)])
    cmp = comparison(groups[("resample:0.2", 0.2)], _random_groups(groups), 0.2)
    assert cmp["vs_fraction"][0] == pytest.approx(0.06) and cmp["gap_closed"] == pytest.approx(0.6)
    assert cmp["half_gap_p"] == pytest.approx(half_gap_p([0.36, 0.38], [0.30, 0.32], [0.40, 0.42]))
    table = markdown_table([*lines, *rows("resample:0.2", 0.2, [0.36, 0.38], 26)])
    assert f"60% of random's gap to full closed (half or more: {shown_p(cmp['half_gap_p'])})" in table
    assert (shown_p(0.0004), shown_p(0.0005), shown_p(0.0314)) == ("p < 0.001", "p = 0.001", "p = 0.031")
    assert cmp["vs_wall"][0] == 0.2  # random:0.2's 25 s is the nearest wall time
    # on random's curve at 26 s: a 75th of the way from random:0.2 (31%, 25 s) to full (41%, 100 s)
    assert cmp["vs_interpolated"] == pytest.approx(0.37 - (0.31 + 0.10 / 75))
    assert random_at_wall_time(_random_groups(groups), 20) is None  # quicker than any random run: no curve there


def test_references_of_another_regime_replace_random_and_the_full_data_in_every_comparison(tmp_path, capsys):
    """--random-ref random+noaug --full-ref full+noaug: each strategy against random pruning and the full data
    trained without augmentation (the regime-matched pair); a reference no row has is a one-line error."""

    def rows(spec, fraction, accs, wall):
        return [
            {"spec": spec, "fraction": fraction, "samples": 1, "total_s": wall, "clean_acc": a, "pgd_acc": a}
            | {"autoattack_acc": a, "run": f"{spec}-{i}"}
            for i, a in enumerate(accs)
        ]

    lines = [
        *rows("full", 1.0, [0.40, 0.42], 100),
        *rows("random:0.2", 0.2, [0.30, 0.32], 25),
        *rows("full+noaug", 1.0, [0.44, 0.46], 110),
        *rows("random+noaug:0.2", 0.2, [0.32, 0.34], 27),
        *rows("resample+noaug:0.2", 0.2, [0.38, 0.40], 26),
    ]
    refs = References(random="random+noaug", full="full+noaug")
    table = markdown_table(lines, refs)
    row = next(line for line in table.splitlines() if line.startswith("| resample+noaug:0.2 "))
    # +6 over random+noaug (33%) and 50% of its 12-point gap to full+noaug (45%); the wall share of full+noaug's
    p = shown_p(half_gap_p([0.38, 0.40], [0.32, 0.34], [0.44, 0.46]))
    assert f"+6.0 ({shown_p(welch_p([0.38, 0.40], [0.32, 0.34]))}); 50% of random+noaug's gap to full+noaug" in row
    assert f"(half or more: {p})" in row and "26 ± 0 (0.24x)" in row
    assert "| vs random+noaug, same fraction |" in table and "half of the gap from random+noaug to full+noaug" in table
    random_row = next(line for line in table.splitlines() if line.startswith("| random:0.2 "))
    assert "-2.0" in random_row  # plain random is now a strategy like any other: 31% against 33%
    default = markdown_table(lines)
    assert "80% of random's gap to full closed" in default  # by default: +8 of random's 10-point gap
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["report", str(tmp_path), "--random-ref", "random+noaug", "--full-ref", "full+noaug"]) == 0
    assert "Each strategy compared with random+noaug (at its fraction) and full+noaug." in capsys.readouterr().out
    assert main(["report", str(tmp_path), "--full-ref", "full+noag"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--full-ref 'full+noag': no row of" in err
    assert "(there: full, full+noaug, random, random+noaug, resample+noaug)" in err


def test_the_half_gap_test_holds_its_level_where_exactly_half_is_closed():
    """Seeds drawn where the strategy closes exactly half of random's gap (3 a side, unequal spreads): the
    one-sided test rejects at about its 5% level, and a strategy at the halfway mean scores p = 0.5."""
    import numpy as np

    rng = np.random.default_rng(0)
    draws = 2000
    rejected = 0
    for _ in range(draws):
        strategy, random, full = rng.normal(0.28, 0.006, 3), rng.normal(0.245, 0.007, 3), rng.normal(0.315, 0.003, 3)
        rejected += half_gap_p(list(strategy), list(random), list(full)) < 0.05
    assert 0.03 <= rejected / draws <= 0.065
    assert half_gap_p([0.27, 0.29], [0.24, 0.25], [0.30, 0.33]) == pytest.approx(0.5)
    assert half_gap_p([0.30, 0.31, 0.30], [0.24, 0.25, 0.245], [0.31, 0.32, 0.315]) < 0.01  # 83% closed
    assert half_gap_p([0.30, 0.31], [0.24, 0.25], [0.31]) is None  # one seed of the full data: no test


def test_every_line_of_a_crowded_plot_has_a_look_of_its_own():
    styles = line_styles(23)  # the CPU preset's grid has more strategies than matplotlib's ten colours
    assert len({(s["color"], s["marker"]) for s in styles}) == 23
    assert len({s["color"] for s in styles[:20]}) == 20  # up to twenty lines: each in a colour of its own
    assert styles[20]["color"] == styles[0]["color"] and styles[20]["marker"] != styles[0]["marker"]


def test_the_full_data_point_is_drawn_over_the_random_line_that_ends_at_it(tmp_path, monkeypatch):
    import advprune.report as report_module

    figures = []
    monkeypatch.setattr(report_module, "_save", lambda fig, path: figures.append(fig) or path)
    rows = [
        {"run": f"{spec.replace(':', '-')}-seed{seed}", "spec": spec, "fraction": fraction, "seed": seed,
         "samples": int(1000 * fraction), "autoattack_acc": acc + seed / 100, "total_s": 100 * fraction}
        for spec, fraction, acc in (("full", 1.0, 0.38), ("random:0.2", 0.2, 0.27), ("ccs:0.2", 0.2, 0.29))
        for seed in (0, 1)
    ]  # fmt: skip
    report_module.plot_sweep(rows, tmp_path)
    assert len(figures) == 2
    for figure in figures:
        _, labels = figure.axes[0].get_legend_handles_labels()
        assert sorted(labels) == ["ccs", "full", "random"] and labels[-1] == "full"


def test_final_rows_are_evaluated_once_more_and_reported_apart(tmp_path, sweep):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(sweep[0], out)
    config = {**CONFIG, "final": {"runs": ["full-*", "random-*"], "n": 16, "autoattack_stages": "apgd-ce,apgd-t"}}
    run_sweep(config, out, log=lambda _line: None, final=False)  # the grid only: no final evaluation yet
    assert not (out / "final.jsonl").exists()
    said = []
    run_sweep(config, out, log=said.append)
    finals = [json.loads(line) for line in (out / "final.jsonl").read_text().splitlines()]
    assert sorted(f["run"] for f in finals) == ["full-seed0", "full-seed1", "random-0.5-seed0", "random-0.5-seed1"]
    assert all(f["test_n"] == 16 and f["autoattack_version"] == "custom: apgd-ce, apgd-t" for f in finals)
    assert len([s for s in said if "final AutoAttack" in s]) == 4
    run_sweep(config, out, log=lambda _line: None)  # nothing to do: each final evaluation is written once
    assert len((out / "final.jsonl").read_text().splitlines()) == 4
    text, _ = report(out)
    final_table = text.split("## Final rows")[1]
    assert "| full | 1 | 2 |" in final_table and "| random:0.5 | 0.5 | 2 |" in final_table
    assert "low+high" not in final_table and "first 16 test images" in final_table
    (out / "runs" / "low_high-0.5-seed0" / "last.pt").unlink()  # a run whose model stayed on another machine
    said = []
    run_sweep({**config, "final": {**config["final"], "runs": ["low*"]}}, out, log=said.append)
    assert "low_high-0.5-seed0: no last.pt here (trained elsewhere)" in " ".join(said)
    assert [json.loads(line)["run"] for line in (out / "final.jsonl").read_text().splitlines()][4:] == [
        "low_high-0.5-seed1"
    ]


def test_a_final_run_without_its_model_is_trained_again_and_evaluated_only_if_its_records_match(tmp_path, sweep):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(sweep[0], out)
    names = ["random-0.5-seed0", "random-0.5-seed1"]
    config = {**CONFIG, "final": {"runs": names, "n": CONFIG["eval"]["n"], "autoattack_stages": "apgd-ce"}}
    for name in names:  # a folder copied without its models
        (out / "runs" / name / "last.pt").unlink()
    metrics = out / "runs" / names[1] / "metrics.jsonl"  # seed 1's last epoch logged as another model's
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    lines[-1]["train_loss"] += 1e-9
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    wall_before = (out / "runs" / names[0] / "wall.json").read_text()
    said = []
    run_sweep(config, out, log=said.append)  # without --rebuild-models: both wait, saying how to get them
    assert not (out / "final.jsonl").exists() and sum("--rebuild-models trains it again" in s for s in said) == 2
    said = []
    run_sweep(config, out, log=said.append, rebuild_models=True)
    finals = [json.loads(line) for line in (out / "final.jsonl").read_text().splitlines()]
    assert [f["run"] for f in finals] == [names[0]] and finals[0]["model_rebuilt"] is True
    original = next(r for r in sweep[1] if r["run"] == names[0])
    assert finals[0]["autoattack_acc"] == original["autoattack_acc"]  # the same model: the same APGD-CE figure
    assert f"{names[0]}: model rebuilt (2 epoch records equal)" in said
    assert (out / "runs" / names[0] / "wall.json").read_text() == wall_before  # the run's own time stays
    assert not (out / "rebuilds" / names[0]).exists()
    refused = " ".join(s for s in said if s.startswith(f"{names[1]}: the rebuilt model is another model"))
    assert "epoch 1 train_loss" in refused and str(out / "rebuilds" / names[1]) in refused
    assert not (out / "runs" / names[1] / "last.pt").exists()  # nothing of the other model replaced anything
    assert "1 of these 1 models were trained again for it (`--rebuild-models`)" in report(out)[0]


def test_rebuilding_models_with_no_final_evaluation_is_refused_in_one_line(capsys):
    assert main(["sweep", "paper-cifar10-cpu", "--no-final", "--rebuild-models"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--rebuild-models makes models for the [final] evaluations" in err and len(err.splitlines()) == 1


def test_a_report_whose_reader_went_away_ends_quietly(sweep):
    """`advprune report DIR | head`: head exits, the next print gets EPIPE; no traceback, SIGPIPE's status."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "advprune", "report", str(sweep[0])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # the reader is gone before the first line
    assert proc.wait(timeout=120) == 141 and proc.stderr.read() == b""


def test_a_run_is_trained_only_for_its_own_epochs_a_variants_or_the_commands_default(tmp_path, monkeypatch):
    import advprune.sweep as sweep_module
    from advprune.cli.parser import DEFAULT_EPOCHS

    folder = tmp_path / "run"
    folder.mkdir()
    lines = [{"epoch": e, "seconds": 1.0, "samples": 10} for e in range(DEFAULT_EPOCHS)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder / "last.pt").write_bytes(b"checkpoint")
    assert sweep_module.train_epochs({"dataset": "cifar10"}) == DEFAULT_EPOCHS
    assert sweep_module.is_trained(folder, DEFAULT_EPOCHS) and not sweep_module.is_trained(folder, DEFAULT_EPOCHS + 1)
    calls = []
    monkeypatch.setattr(sweep_module, "_advprune", lambda args, log: calls.append(args) or 1.0)
    longer_variant = {"name": "longer", "prune": "none", "train": {"epochs": DEFAULT_EPOCHS + 3}}
    plain, longer = grid_runs({"specs": ["none", longer_variant], "seeds": [0]})
    assert sweep_module._train(plain, folder, {"dataset": "cifar10"}, tmp_path / "log") == 0.0 and not calls
    sweep_module._train(longer, folder, {"dataset": "cifar10"}, tmp_path / "log")
    assert calls and calls[0][calls[0].index("--epochs") + 1] == str(DEFAULT_EPOCHS + 3)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"grid": {"specs": ["random:{fraction}"], "fractions": [1.5], "seeds": [0]}},
         "run random-1.5-seed0: prune spec 'random:1.5': the kept fraction must be in (0, 1]"),
        ({"grid": {"specs": ["none", {"name": "b0", "prune": "random:{fraction}", "train": {"batch_size": 0}}],
                   "fractions": [0.5], "seeds": [0, 1]}},
         "run b0-0.5-seed0: --batch-size must be an int >= 1, got 0"),
        ({"train": {**CONFIG["train"], "bogus_flag": 3}}, "run full-seed0: unrecognized arguments: --bogus-flag 3"),
        ({"eval": {**CONFIG["eval"], "autoattack_stages": "apgd-ce,apgd-xx"}},
         "[eval] autoattack_stages: unknown apgd-xx"),
        ({"final": {"runs": ["full-*"], "autoattack_stages": "fab"}}, "[final] autoattack_stages: unknown fab"),
    ],
)  # fmt: skip
def test_a_bad_option_anywhere_in_the_grid_stops_the_sweep_before_anything_runs(tmp_path, monkeypatch, change,
                                                                                 message):  # fmt: skip
    import advprune.sweep as sweep_module

    calls, config = [], {**CONFIG, **change}
    monkeypatch.setattr(sweep_module, "_advprune", lambda args, log: calls.append(args) or 1.0)
    only = ["full-*"] if "none" in config["grid"]["specs"] else None  # the runs not selected are checked too
    with pytest.raises(UsageError, match=re.escape(message)):
        run_sweep(config, tmp_path / "out", log=lambda _line: None, only=only)
    assert calls == [] and not (tmp_path / "out").exists()


def test_a_failed_run_is_one_line_with_its_own_error_and_its_log(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text(
        '[train]\ndataset = "cifar10"\ndata_dir = "no-such-folder"\n[grid]\nspecs = ["none"]\nseeds = [0]\n'
    )
    assert main(["sweep", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "full-seed0: advprune train failed (exit 2)" in err and "no cifar-10-batches-py folder" in err
    assert str(tmp_path / "out" / "runs" / "full-seed0" / "sweep.log") in err
