"""The `advprune` command: prepare writes a .beton; bad input is one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from advprune.cli import main
from advprune.data import make_loader, read_cifar
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
    result = subprocess.run([sys.executable, "-m", "advprune.cli", "prepare", "--dataset", "nope", "--out", "x"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr
