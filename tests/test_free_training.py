"""The free training attack: one forward and backward a sample. A sample trains on its remembered perturbation
(a random start the first time), and the update's input gradient moves that perturbation one signed step for
its next epoch; checked against a float64 gradient of the same loss, with the weights the update started from."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advprune import models
from advprune.cli import main
from advprune.data import from_arrays, make_loader
from advprune.data.readers import FASHION_MNIST_DIR
from advprune.train import AttackConfig, OptimConfig, RunConfig, Trainer
from advprune.train.perturbation_memory import PerturbationMemory
from advprune.train.scoring import _scoring_attack

EPS = 0.1


def _free_trainer(tmp_path, epochs: int = 2, **attack) -> Trainer:
    torch.manual_seed(0)
    return Trainer(
        models.create("small-cnn"),
        AttackConfig("free", eps=EPS, **attack),
        epochs=epochs,
        optim=OptimConfig(lr=0.05),
        run=RunConfig(out_dir=tmp_path, amp=None, device="cpu", quiet=True),
    )


def _record_training(trainer: Trainer, monkeypatch) -> tuple[list, list]:
    """The inputs of every forward (with the model's mode), and every (x, stepped, ids) the memory is given."""
    forwards, remembered = [], []
    trainer.model.register_forward_pre_hook(lambda m, args: forwards.append((m.training, args[0].detach().clone())))
    original = PerturbationMemory.remember

    def spy(self, x, x_adv, ids, augmentation):
        remembered.append((x.clone(), x_adv.clone(), ids.clone()))
        return original(self, x, x_adv, ids, augmentation)

    monkeypatch.setattr(PerturbationMemory, "remember", spy)
    return forwards, remembered


def _float64_input_gradient(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d (mean cross-entropy) / d x_adv in float64, the model in training mode as the update runs it."""
    model = copy.deepcopy(model).double().train()
    x64 = x_adv.double().requires_grad_(True)
    F.cross_entropy(model(x64), y).backward()
    return x64.grad


def test_a_sample_trains_on_its_memory_and_the_updates_gradient_steps_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    data = from_arrays(rng.integers(1, 256, (48, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 48))
    trainer = _free_trainer(tmp_path)
    start_weights = copy.deepcopy(trainer.model)
    forwards, remembered = _record_training(trainer, monkeypatch)
    trainer.fit(make_loader(data, batch_size=48, augment=False))  # one batch an epoch
    assert [training for training, _ in forwards] == [True, True]  # one forward a step, no attack pass
    (x1, stepped1, ids1), (x2, _stepped2, ids2) = remembered
    start1, start2 = forwards[0][1], forwards[1][1]
    labels = torch.from_numpy(data.labels)

    random_delta = start1 - x1  # epoch 1: the attack's random start, inside the ball and the image range
    assert random_delta.abs().max() <= EPS + 1e-6 and random_delta.abs().mean() > EPS / 4
    grad = _float64_input_gradient(start_weights, start1, labels[ids1])
    decided = grad.abs() > 1e-9 * grad.abs().max()  # where float32 and float64 agree on the sign
    want = torch.minimum(torch.maximum(start1.double() + EPS * grad.sign(), x1.double() - EPS), x1.double() + EPS)
    want = want.clamp(0, 1)
    assert decided.float().mean() > 0.9
    assert (stepped1.double() - want)[decided].abs().max() <= 1e-6

    order = torch.argsort(ids1)[torch.argsort(torch.argsort(ids2))]  # epoch 1's row of each epoch-2 sample
    assert torch.equal(ids1[order], ids2) and torch.equal(x1[order], x2)
    from_memory = start2 - x2
    assert (from_memory - (stepped1 - x1)[order]).abs().max() <= EPS / 254 + 1e-6  # int8: eps / 127 units
    assert (from_memory - random_delta[order]).abs().mean() > EPS / 4  # moved, not the old start


def test_free_defaults_and_what_it_refuses():
    attack = AttackConfig("free", eps=EPS)
    assert attack.reuse == "int8" and attack.step_size == pytest.approx(EPS)
    assert AttackConfig("free", eps=EPS, reuse="bf16", step_size=0.05).reuse == "bf16"
    with pytest.raises(ValueError, match="free is an linf attack"):
        AttackConfig("free", eps=EPS, norm="l2")
    safer, change = attack.safer()
    assert safer.kind == "fgsm_rs" and safer.reuse == "int8" and "free to FGSM-RS" in change
    assert _scoring_attack(attack) == {"attack": "fgsm", "eps": EPS, "step_size": pytest.approx(EPS)}


def test_free_training_on_augmented_data_keeps_a_perturbation_per_served_sample(tmp_path):
    rng = np.random.default_rng(2)
    data = from_arrays(rng.integers(1, 256, (40, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 40))
    kept = torch.arange(0, 40, 2)
    torch.manual_seed(0)
    trainer = Trainer(
        models.create("small-cnn", in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, image_size=(8, 8)),
        AttackConfig("free", eps=EPS),
        epochs=2,
        optim=OptimConfig(lr=0.05),
        run=RunConfig(out_dir=tmp_path, amp=None, device="cpu", quiet=True),
    )
    trainer.fit(make_loader(data, indices=kept, batch_size=8, augment=True))
    memory = trainer.step.memory
    assert torch.equal(torch.nonzero(memory.seen).squeeze(1), kept)
    assert (memory.store[1::2] == 0).all()  # never served: never written
    assert memory.store[kept].float().abs().mean() > 127 / 8  # steps of eps (padding pixels only move up)


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_the_command_trains_free_and_records_its_attack(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--attack", "free", "--eps", "0.1", "--limit", "128", "--epochs", "2", "--eval-n", "0",
            "--val-n", "0", "--batch-size", "64", "--device", "cpu", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    setup = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert setup["attack"] == {"kind": "free", "eps": 0.1, "steps": 3, "norm": "linf", "step_size": 0.1,
                               "reuse": "int8"}  # fmt: skip
    state = torch.load(out / "last.pt", weights_only=False)
    memory = state["perturbations"]
    assert memory["seen"].sum() == 128 and memory["store"].abs().float().mean() > 127 / 8
    capsys.readouterr()
    assert main([*argv[:-3], "--backend", "ffcv", "--out", str(tmp_path / "ffcv"), "--quiet"]) == 2
    assert "--attack free needs --backend memory" in capsys.readouterr().err
