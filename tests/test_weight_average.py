"""Weight averaging (--ema): the average follows the float64 formula with its warm-up, is updated once per
optimiser step, survives a checkpoint so that a resumed run ends with the average of an unbroken one, and is
what `advprune eval` evaluates unless told otherwise; a bad decay is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from advprune import models
from advprune.checkpoint import load_checkpoint
from advprune.cli import main
from advprune.cli.factory import checkpoint_model
from advprune.data import from_arrays, make_loader
from advprune.train import AttackConfig, OptimConfig, RunConfig, Trainer, WeightAverage


def test_the_average_follows_the_float64_formula_with_its_warm_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4))
    average = WeightAverage(model, decay=0.95)
    expected = {k: v.double().clone() for k, v in model.state_dict().items()}
    for t in range(30):  # past the warm-up: (1 + t) / (10 + t) reaches 0.95 at t = 161, so both rules are used
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(torch.randn(4))
            model[1].running_var.mul_(torch.rand(4) + 0.5)
        model[1].num_batches_tracked += 1
        rate = min(0.95, (1 + t) / (10 + t))
        for name, value in model.state_dict().items():
            expected[name] = rate * expected[name] + (1 - rate) * value.double()
        average.update(model)
    for name, value in average.model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert int(value) == 30  # counters are copied, not averaged
        else:
            torch.testing.assert_close(value.double(), expected[name], rtol=1e-5, atol=1e-5)
            assert not torch.allclose(value, model.state_dict()[name])  # the average, not the last weights
    assert average.updates == 30 and average.rate() == pytest.approx(31 / 40)
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
        WeightAverage(model, 1.0)
    with pytest.raises(ValueError, match=r"ema .* must be in \(0, 1\)"):
        OptimConfig(ema=0)


def tiny_data(n: int = 128):
    rng = np.random.default_rng(0)
    return from_arrays(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, n))


def ema_trainer(folder, epochs: int) -> Trainer:
    torch.manual_seed(0)
    return Trainer(
        models.create("small-cnn"),
        AttackConfig("fgsm_rs", eps=0.1),
        epochs=epochs,
        optim=OptimConfig(lr=0.05, schedule="constant", ema=0.9),  # the same steps however the run is cut
        run=RunConfig(out_dir=folder, amp=None, device="cpu", quiet=True, seed=0),
    )


def test_a_resumed_run_ends_with_the_average_of_an_unbroken_one(tmp_path):
    data = tiny_data()
    whole = ema_trainer(tmp_path / "whole", epochs=2).fit(make_loader(data, batch_size=32, seed=0))
    ema_trainer(tmp_path / "cut", epochs=1).fit(make_loader(data, batch_size=32, seed=0))
    resumed = ema_trainer(tmp_path / "cut", epochs=2).fit(make_loader(data, batch_size=32, seed=0), resume=True)
    assert whole.step.average.updates == resumed.step.average.updates == 2 * 4  # one per optimiser step
    for name, value in whole.final_model.state_dict().items():
        assert torch.equal(value, resumed.final_model.state_dict()[name]), name
    saved = load_checkpoint(tmp_path / "whole" / "last.pt")["ema"]
    assert saved["decay"] == 0.9 and saved["updates"] == 8
    name = next(k for k, v in saved["model"].items() if v.is_floating_point())
    assert not torch.equal(saved["model"][name], whole.model.state_dict()[name])  # the average was saved


def test_eval_evaluates_the_average_unless_told_raw(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist", "--limit", "256", "--epochs", "1", "--steps", "1",
                 "--batch-size", "64", "--val-n", "0", "--eval-n", "0", "--ema", "0.99", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    state = load_checkpoint(out / "last.pt")
    model, meta = checkpoint_model(out / "last.pt")
    assert meta["weights"] == "average (EMA, decay 0.99, 4 updates)"
    assert all(torch.equal(v, state["ema"]["model"][k]) for k, v in model.state_dict().items())
    raw, meta = checkpoint_model(out / "last.pt", "raw")
    assert meta["weights"] == "raw" and all(torch.equal(v, state["model"][k]) for k, v in raw.state_dict().items())
    result = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--attack", "clean", "--n", "50", "--out",
                 str(result), "--quiet"]) == 0  # fmt: skip
    assert '"weights": "average (EMA, decay 0.99, 4 updates)"' in result.read_text()
    assert main(["train", "--dataset", "fashion-mnist", "--ema", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "ema (the weight average's decay) must be in (0, 1), e.g. 0.999, got 1.5" in capsys.readouterr().err
