"""The `advprune` command: prepare writes a .beton; bad input is one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from advprune.cli import main
from advprune.data import make_loader, read_cifar
from advprune.data.readers import FASHION_MNIST_DIR
from advprune.machine import machine_kind, machine_record
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
        (["train", "--model", "vit", "--out", "r"], "unknown model 'vit': choose one of preact-resnet18"),
        (["train", "--model", "torchvision:nope", "--out", "r"], "torchvision has no classification model 'nope'"),
        (["train", "--eps", "eight", "--out", "r"], "'eight' is not a number (write 0.03 or 8/255)"),
        (["train", "--dataset", "cifar10", "--data-dir", "/no/such", "--out", "r"], "no cifar-10-batches-py"),
        (["train", "--config", "missing.toml", "--out", "r"], "no config file at missing.toml"),
        (["eval", "--checkpoint", "nothing.pt"], "no checkpoint at nothing.pt"),
        (["train", "--resume", "--out", "r"], "no checkpoint at r/last.pt to resume from: drop --resume to start it"),
        (["train", "--resume-from", "none.pt", "--out", "r"], "no checkpoint at none.pt to resume from"),
        (["prepare", "--dataset", "cifar10", "--data-dir", ".", "--out", "."], "--out . is a folder: name the .beton"),
    ],
)
def test_train_and_eval_bad_input(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # no run folder made for a refused run


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


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_train_validates_on_held_out_training_samples_and_tests_on_the_test_set(tmp_path, capsys, monkeypatch):
    """Validation came from the first --val-n test images: the test set chose best.pt and drove the guard."""
    import json

    import torch

    from advprune.checkpoint import load_checkpoint
    from advprune.pruning import load_indices

    out = tmp_path / "run"
    argv = [
        "train",
        "--limit",
        "256",
        "--val-n",
        "64",
        "--epochs",
        "1",
        "--steps",
        "1",
        "--eval-n",
        "32",
        "--batch-size",
        "64",
        "--attack",
        "fgsm_rs",
        "--eps",
        "0.1",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    setup, epoch = (json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
    assert setup["val"]["split"].startswith("train (held out") and setup["val"]["n"] == 64
    assert setup["train_samples"] == 192 and setup["test"] == {"split": "test", "n": 32, "ids": "the first 32"}
    assert epoch["samples"] == 192 and epoch["val_n"] == 64
    held_out = load_indices(out / "val_ids.npy", 256)
    assert len(held_out) == 64 and torch.bincount(torch.from_numpy(read_fashion_mnist_labels(256))[held_out]).min() > 0
    result = json.loads((out / "eval.json").read_text())
    assert result["split"] == "test" and result["n"] == 32 and result["test_ids"] == "the first 32 of the test set"
    attack = load_checkpoint(out / "last.pt")["attack"]
    assert attack["kind"] == "fgsm_rs" and attack["step_size"] == pytest.approx(0.125)  # Wong et al.: 1.25 eps
    capsys.readouterr()
    report = tmp_path / "eval.json"
    argv = [
        "eval",
        "--checkpoint",
        str(out / "last.pt"),
        "--n",
        "16",
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--norm",
        "l2",
        "--eps",
        "0.5",
        "--steps",
        "2",
        "--out",
        str(report),
        "--quiet",
    ]
    assert main(argv) == 0
    evaluated = json.loads(report.read_text())
    assert evaluated["norm"] == "l2" and evaluated["n"] == 16 and evaluated["split"] == "test"
    assert evaluated["layout"] == "channels_last"
    eval_sees_the_layout(out / "last.pt", monkeypatch)


def eval_sees_the_layout(checkpoint, monkeypatch) -> None:
    """advprune eval hands evaluate() a channels_last model, as training had it; --contiguous keeps it
    contiguous (the images follow; gray ones are both layouts at once)."""
    import torch

    import advprune.evaluate

    seen = []

    def record(model, x, y, **kwargs):
        weight = next(p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1)  # 1 channel: both at once
        layouts = [weight.is_contiguous(memory_format=f) for f in (torch.contiguous_format, torch.channels_last)]
        seen.append(layouts)
        return {"n": len(y), "attack": "clean", "clean_acc": 0.5}

    monkeypatch.setattr(advprune.evaluate, "evaluate", record)
    base = ["eval", "--checkpoint", str(checkpoint), "--n", "8", "--attack", "clean", "--quiet"]
    assert main(base) == 0 and main([*base, "--contiguous"]) == 0
    assert seen == [[False, True], [True, False]]


def read_fashion_mnist_labels(n: int):
    from advprune.data import read_fashion_mnist

    return read_fashion_mnist().labels[:n]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["eval", "--checkpoint", "CKPT", "--device", "cuda:7"], "--device cuda:7: this machine has"),
        (["eval", "--checkpoint", "CKPT", "--device", "tpu9"], "--device 'tpu9' is not a device"),
        (
            ["eval", "--checkpoint", "CKPT", "--attack", "autoattack", "--stages", "apgd-dlr"],
            "--stages: unknown apgd-dlr",
        ),
        (["train", "--out", "r", "--attack", "fgsm_rs", "--norm", "l2"], "fgsm_rs is an linf attack"),
    ],
)
def test_device_stages_and_norm_refusals(tmp_path, monkeypatch, capsys, argv, message):
    from advprune import models
    from advprune.checkpoint import save_checkpoint

    monkeypatch.chdir(tmp_path)
    meta = {"model": "small-cnn", "num_classes": 10, "eps": 0.1, "dataset": "fashion-mnist"}
    save_checkpoint(tmp_path / "CKPT", {"model": models.create("small-cnn").state_dict(), "meta": meta})
    if argv[0] == "train" and not Path(FASHION_MNIST_DIR).is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_torchvision_model_trains_and_its_checkpoint_evaluates(tmp_path, capsys):
    """--model torchvision:NAME: built for the data (grayscale repeated to RGB, the dataset's statistics in
    front), recorded in the checkpoint, rebuilt by `advprune eval`."""
    pytest.importorskip("torchvision")
    out = tmp_path / "run"
    argv = ["train", "--model", "torchvision:resnet18", "--limit", "192", "--epochs", "1", "--steps", "1"]
    argv += ["--eval-n", "32", "--val-n", "32", "--batch-size", "64", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--n", "32", "--quiet", "--attack", "clean"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 32


@pytest.mark.parametrize("default_malloc", [False, True])
def test_train_and_eval_tune_malloc_unless_told_not_to(tmp_path, capsys, monkeypatch, default_malloc):
    import advprune.cli.eval_command as eval_module
    import advprune.train.trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "tune_cpu_allocator", lambda: calls.append("train") or True)
    monkeypatch.setattr(eval_module, "tune_cpu_allocator", lambda: calls.append("eval") or True)
    flag = ["--default-malloc"] if default_malloc else []
    out = tmp_path / "run"
    argv = ["train", "--limit", "128", "--epochs", "1", "--steps", "1", "--eval-n", "0", "--val-n", "0",
            "--batch-size", "64", "--device", "cpu", "--out", str(out), "--quiet", *flag]  # fmt: skip
    assert main(argv) == 0
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--n", "16", "--attack", "clean", "--device", "cpu",
                 "--quiet", *flag]) == 0  # fmt: skip
    assert calls == ([] if default_malloc else ["train", "eval"])
    setup = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert setup["phase"] == "setup" and setup["default_malloc"] is default_malloc
    assert machine_kind(setup["machine"]) == machine_kind(machine_record("cpu"))  # where its times were taken
    # the attack as the Trainer took it: the default step size filled in
    attack = {"kind": "pgd", "eps": 0.1, "steps": 1, "norm": "linf", "step_size": 0.025, "reuse": None, "eps_warmup": 0}
    assert setup["attack"] == attack
    assert setup["weight_decay"] == 5e-4 and setup["augment"] == "auto"


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--batch-size", "0"], "--batch-size must be an int >= 1, got 0"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--lr", "-1"], "lr must be a finite number > 0, got -1.0"),
        (["--lr", "0"], "lr must be a finite number > 0"),
        (["--eps", "8"], "for 8 on the 0-255 scale pass 8/255"),
        (["--steps", "-2"], "steps must be an int >= 0"),
        (["--val-every", "0"], "validation steps, every and batch_size must be >= 1"),
        (["--prune", "random:1.5"], "the kept fraction must be in (0, 1]"),
        (["--limit", "100"], "--val-n must be in [0, 100)"),
        (["--dataset", "cifar10", "--data-dir", "no-such-folder"], "no cifar-10-batches-py folder"),
    ],
)
def test_a_refused_training_option_leaves_no_run_folder(tmp_path, capsys, flags, message):
    """Every option is checked before the run folder is made: a typo leaves nothing to clean up."""
    if "cifar10" not in flags and not Path(FASHION_MNIST_DIR).is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    out = tmp_path / "run"
    assert main(["train", *flags, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_an_unscaled_linf_budget_and_a_zero_learning_rate_are_refused():
    from advprune import models
    from advprune.evaluate import evaluate
    from advprune.train import OptimConfig

    with pytest.raises(ValueError, match="pass 8/255"):
        evaluate(models.create("small-cnn"), torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), eps=8)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        OptimConfig(lr=0.0)
    assert evaluate(models.create("small-cnn"), torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), eps=8, norm="l2",
                    steps=1)["eps"] == 8  # fmt: skip


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--n", "0"], "nothing to evaluate: n must be >= 1"),
        (["--steps", "-1"], "PGD needs steps >= 0 and restarts >= 1, got steps=-1"),
        (["--restarts", "0"], "PGD needs steps >= 0 and restarts >= 1, got steps=20, restarts=0"),
    ],
)
def test_an_evaluation_of_nothing_or_with_impossible_steps_is_refused(tmp_path, capsys, flags, message):
    """No 0.0% figures from zero samples; the PGD options are checked before the first batch."""
    from advprune import models
    from advprune.checkpoint import save_checkpoint

    if not Path(FASHION_MNIST_DIR).is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    meta = {"model": "small-cnn", "num_classes": 10, "eps": 0.1, "dataset": "fashion-mnist"}
    save_checkpoint(tmp_path / "ckpt.pt", {"model": models.create("small-cnn").state_dict(), "meta": meta})
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt.pt"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "eval pgd" not in err
