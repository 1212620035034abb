"""The `advprune` command: prepare writes a .beton; bad input is one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from advprune.cli import main
from advprune.data import make_loader, read_cifar
from advprune.data.readers import FASHION_MNIST_DIR
from tests.test_data import write_cifar


def test_prepare_writes_a_beton_the_loaders_read(tmp_path, capsys):
    write_cifar(tmp_path)
    out = tmp_path / "train.beton"
    assert main(["prepare", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    source = read_cifar(tmp_path)
    loader = make_loader(out, batch_size=32, augment=False, order="sequential", backend="memory")
    _, y, ids = next(iter(loader))
    assert ids.tolist() == list(range(32))
    assert np.array_equal(y.numpy(), source.labels[:32])


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["prepare", "--dataset", "cifar10", "--data-dir", "/no/such/dir", "--out", "x.beton"],
            "no cifar-10-batches-py",
        ),
        (["prepare", "--dataset", "cifar10", "--out", "x.beton"], "needs a data folder (--data-dir)"),
        (["prepare", "--dataset", "mnist", "--data-dir", "/no/such/dir", "--out", "x.beton"], "no dataset folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "a.beton"
    out.write_bytes(b"keep me")
    argv = ["prepare", "--dataset", "fashion-mnist", "--out", str(out)]
    assert main(argv) == 2
    assert "pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "advprune.cli", "prepare", "--dataset", "nope", "--out", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_train_then_eval_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--limit",
        "256",
        "--epochs",
        "1",
        "--steps",
        "1",
        "--eval-n",
        "64",
        "--val-n",
        "64",
        "--batch-size",
        "64",
        "--eps",
        "8/255",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    assert "PGD-20" in capsys.readouterr().out
    assert (out / "metrics.jsonl").is_file() and (out / "eval.json").is_file()
    assert main(argv) == 2  # the run exists: --resume or another --out
    assert "pass --resume" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--n", "32", "--quiet", "--attack", "clean"]) == 0
    assert "clean" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--dataset", "imagenet", "--out", "r"], "invalid choice: 'imagenet'"),
        (["train", "--model", "vit", "--out", "r"], "invalid choice: 'vit'"),
        (["train", "--eps", "eight", "--out", "r"], "'eight' is not a number (write 0.03 or 8/255)"),
        (["train", "--dataset", "cifar10", "--data-dir", "/no/such", "--out", "r"], "no cifar-10-batches-py"),
        (["train", "--config", "missing.toml", "--out", "r"], "no config file at missing.toml"),
        (["eval", "--checkpoint", "nothing.pt"], "no checkpoint at nothing.pt"),
    ],
)
def test_train_and_eval_bad_input(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_checkpoint_that_is_not_one(tmp_path, capsys):
    bad = tmp_path / "x.pt"
    bad.write_text("hello")
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err


def test_config_file_with_flags_overriding(tmp_path):
    from advprune.cli import parse

    config = tmp_path / "run.toml"
    config.write_text('epochs = 7\neps = "8/255"\nstep-size = 0.01\n')
    args = parse(["train", "--config", str(config), "--epochs", "2", "--out", "r"])
    assert args.epochs == 2 and args.step_size == 0.01 and abs(args.eps - 8 / 255) < 1e-12
    config.write_text("epochz = 3\n")
    with pytest.raises(Exception, match="unknown options epochz"):
        parse(["train", "--config", str(config), "--out", "r"])
