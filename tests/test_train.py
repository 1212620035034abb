"""The Trainer on a small real subset of Fashion-MNIST: it learns, resumes exactly,
stops clearly on NaN, guards against catastrophic overfitting, and writes metrics."""

from __future__ import annotations

import json

import pytest
import torch

from advprune import models
from advprune.data import from_arrays, make_loader, read_fashion_mnist
from advprune.data.readers import FASHION_MNIST_DIR
from advprune.train import AttackConfig, OptimConfig, RunConfig, Trainer, TrainingDiverged, resolve_amp


@pytest.fixture(scope="module")
def fashion():
    try:
        data = read_fashion_mnist(FASHION_MNIST_DIR)
    except FileNotFoundError:
        pytest.skip("dataset-fashion-mnist is not installed")
    train = from_arrays(data.images[:512].copy(), data.labels[:512].copy())
    val_x = torch.from_numpy(data.images[512:640].copy()).permute(0, 3, 1, 2).float() / 255
    return train, (val_x, torch.from_numpy(data.labels[512:640].copy()))


def trainer(
    tmp_path,
    epochs=2,
    *,
    attack="pgd",
    step_size=0.05,
    steps=2,
    norm="linf",
    lr=0.05,
    lr_schedule="cosine",
    weight_decay=5e-4,
    pruner=None,
    trackers=(),
    validation=None,
    **run,
):
    """A Trainer of the small CNN on the CPU in float32, quiet, writing into tmp_path."""
    torch.manual_seed(0)
    options = dict(out_dir=tmp_path, amp=None, device="cpu", quiet=True)
    options.update(run)
    return Trainer(
        models.create("small-cnn"),
        AttackConfig(attack, eps=0.1, step_size=step_size, steps=steps, norm=norm),
        epochs=epochs,
        optim=OptimConfig(lr=lr, schedule=lr_schedule, weight_decay=weight_decay),
        run=RunConfig(**options),
        validation=validation,
        pruner=pruner,
        trackers=trackers,
    )


def loader(train):
    return make_loader(train, backend="memory", batch_size=64, seed=0)


def test_training_lowers_the_adversarial_loss_and_writes_metrics(tmp_path, fashion):
    train, val = fashion
    t = trainer(tmp_path, epochs=3).fit(loader(train), val)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    for key in (
        "seconds",
        "samples",
        "lr",
        "train_loss",
        "train_adv_acc",
        "val_clean_acc",
        "val_pgd_acc",
        "data_seconds",
        "attack_seconds",
        "update_seconds",
        "scoring_seconds",
    ):
        assert key in records[0], key
    assert records[0]["samples"] == 512
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()
    assert t.epoch == 3


def test_resume_is_exact(tmp_path, fashion):
    train, val = fashion
    straight = trainer(tmp_path / "a", epochs=2).fit(loader(train), val)
    first = trainer(tmp_path / "b", epochs=2)
    first.epochs = 1  # stop after one epoch, as an interrupted run would
    first.fit(loader(train), val)
    resumed = trainer(tmp_path / "b", epochs=2).fit(loader(train), val, resume=True)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_nan_loss_stops_with_a_clear_message(tmp_path, fashion):
    train, _ = fashion
    t = trainer(tmp_path, epochs=1, lr=1e30, lr_schedule="constant")
    with pytest.raises(TrainingDiverged, match="the training loss became"):
        t.fit(loader(train))


def test_a_nan_loss_read_at_the_end_of_the_epoch_still_stops_before_any_checkpoint(tmp_path, fashion):
    """On a GPU the finite-loss flag is read every FINITE_CHECK_EVERY steps, not every step (no host sync):
    a diverged epoch must still stop before its checkpoint is written."""
    train, _ = fashion
    t = trainer(tmp_path, epochs=1, lr=1e30, lr_schedule="constant")
    t.step.check_every = 10**6
    with pytest.raises(TrainingDiverged, match=r"NaN or Inf at epoch 0 \(within its last [1-9]\d* step\(s\)"):
        t.fit(loader(train))
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_training_step_never_waits_for_the_gpu(tmp_path, fashion):
    """No host sync inside a step (metrics stay on the device, the finite-loss flag is read every
    FINITE_CHECK_EVERY steps): torch.cuda's sync debug mode turns any sync into an error."""
    train, _ = fashion
    t = trainer(tmp_path, epochs=1, device="cuda")
    x, y, ids = next(iter(make_loader(train, batch_size=64, device="cuda")))
    timing = {"attack": 0.0, "update": 0.0, "scoring": 0.0}
    step = dict(generator=None, weights=None, batch_size=64, observers=[], timing=timing, epoch=0)
    t.step(x, y, ids, **step)  # warm-up: allocations and the first launches may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        t.step(x, y, ids, **step)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_catastrophic_overfitting_guard(tmp_path, fashion, monkeypatch):
    train, val = fashion
    t = trainer(tmp_path, epochs=3, attack="fgsm_rs", step_size=0.125)
    accuracies = iter([0.6, 0.1, 0.55, 0.56])  # epoch 1 collapses, then recovers

    def fake_validate(_val):
        return {"val_clean_acc": 0.8, "val_pgd_acc": next(accuracies)}

    monkeypatch.setattr(t, "_validate", fake_validate)
    t.fit(loader(train), val)
    assert t.attack.kind == "pgd" and t.attack.steps == 2
    assert len(t.guard.events) == 1 and "switched from FGSM-RS to PGD-2" in t.guard.events[0]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 1, 2]  # epoch 1 ran again after the restore
    assert "event" in records[1]


def test_amp_auto_and_bad_options(tmp_path):
    assert resolve_amp(None, torch.device("cpu")) is None
    assert resolve_amp("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_amp("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="attack must be one of"):
        trainer(tmp_path, attack="cw")


def test_sigkill_mid_epoch_resumes_from_an_intact_checkpoint(tmp_path):
    """A run killed with SIGKILL leaves a loadable last.pt, and --resume finishes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from advprune.checkpoint import load_checkpoint
    from advprune.cli import main

    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip("dataset-fashion-mnist is not installed")
    out = tmp_path / "run"
    argv = [
        "train",
        "--limit",
        "1024",
        "--epochs",
        "6",
        "--steps",
        "1",
        "--batch-size",
        "64",
        "--val-n",
        "64",
        "--eval-n",
        "64",
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "advprune.cli", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.7)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    state = load_checkpoint(out / "last.pt")
    done = state["epoch"]
    assert 1 <= done < 6
    assert main([*argv, "--resume"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in records if "epoch" in r]
    assert epochs == list(range(6))  # each epoch recorded once: the killed one ran again from its start
    calls = [r for r in records if r.get("phase") in ("setup", "resume")]  # each call says where it trained
    assert [r["phase"] for r in calls] == ["setup", "resume"]
    assert all(r["machine"]["torch"] == torch.__version__ and r["machine"]["cpu"] for r in calls)


def test_compiled_model_trains_as_the_eager_one(tmp_path, fashion):
    """RunConfig(compile=True) (`advprune train --compile`): the attack and the update run through
    torch.compile's graphs (dynamo compiled frames), and a short run ends where the eager run ends, up to
    the compiler's float reordering (a few steps: too few for PGD's sign to amplify it)."""
    import torch._dynamo

    train, _ = fashion
    small = from_arrays(train.images[:192], train.labels[:192])
    eager = trainer(tmp_path / "eager", epochs=1)
    eager.fit(make_loader(small, batch_size=64, seed=0))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = trainer(tmp_path / "compiled", epochs=1, compile=True)
    compiled.fit(make_loader(small, batch_size=64, seed=0))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    for (name, a), b in zip(eager.model.state_dict().items(), compiled.model.state_dict().values(), strict=True):
        assert not torch.equal(a, torch.zeros_like(a)) and (a - b).abs().max() <= 1e-3 * a.abs().max(), name


def test_the_compiled_attack_sees_the_parameters_as_constants():
    """A compiled backward computes every gradient its graph was traced with: the attack's graph must hold
    the weights as constants, or each attack step pays for weight gradients nobody asked for."""
    from advprune.train.placement import InputGradientOnly

    torch.manual_seed(0)
    model = models.create("small-cnn").eval()
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    wrapped = InputGradientOnly(model)
    out = wrapped(x)
    assert torch.equal(out, model(x))
    assert torch.allclose(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(model(x).sum(), x)[0])
    assert all(g is None for g in torch.autograd.grad(out.sum(), list(model.parameters()), allow_unused=True))
