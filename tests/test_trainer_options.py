"""The Trainer's options and the defects found when it was used from other code: l2 training, amp on
hardware that only emulates bfloat16, checkpoints read to the CPU, learning-rate schedules (a longer
resumed run, data of unknown length, parameter groups), the pruner protocol, held-out ids with
dynamic pruning, and the dynamic pruner in a loop of one's own."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from advprune import models
from advprune.data import make_loader, with_ids
from advprune.ids import holdout_split
from advprune.pruning import DynamicPruner, PrunerBase
from advprune.train import AttackConfig, OptimConfig, RunConfig, Trainer, resolve_amp
from tests.test_train import fashion, loader, trainer  # noqa: F401 (fashion is a fixture)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def records(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_l2_training_crafts_l2_perturbations(tmp_path, fashion):  # noqa: F811
    train, val = fashion
    t = trainer(tmp_path, epochs=1, norm="l2", step_size=0.5, steps=2)
    t.step.attack = AttackConfig("pgd", eps=1.0, step_size=0.5, steps=2, norm="l2")
    crafted = []
    perturb = t.step.perturb

    def spy(x, y, generator):
        x_adv = perturb(x, y, generator)
        crafted.append((x_adv - x).flatten(1))
        return x_adv

    t.step.perturb = spy
    t.fit(loader(train), val)
    deltas = torch.cat(crafted)
    assert (deltas.norm(dim=1) <= 1.0 + 1e-4).all()
    # an l2 ball, not an linf box: a sign step scaled into the ball would put 1/28 (0.036) on every coordinate,
    # the gradient's own direction concentrates (about 0.2 at most here, depending on the run's rounding)
    assert deltas.norm(dim=1).mean() > 0.5 and deltas.abs().max() > 3 / 28
    assert "val_pgd_acc" in records(tmp_path)[0]
    with pytest.raises(ValueError, match="fgsm_rs is an linf attack"):
        AttackConfig("fgsm_rs", eps=1.0, norm="l2")


def test_step_size_defaults_follow_the_attack():
    assert AttackConfig("fgsm_rs", eps=0.1).step_size == pytest.approx(0.125)  # Wong et al.: 1.25 eps
    assert AttackConfig("pgd", eps=0.1).step_size == pytest.approx(0.025)
    assert AttackConfig("pgd", eps=0.1, step_size=0.01).step_size == 0.01
    assert AttackConfig("n_fgsm", eps=0.1).step_size == pytest.approx(0.1)  # de Jorge et al.: eps, noise 2 eps


def test_n_fgsm_is_linf_fresh_noise_and_falls_back_to_pgd2():
    with pytest.raises(ValueError, match="n_fgsm is an linf attack"):
        AttackConfig("n_fgsm", eps=1.0, norm="l2")
    with pytest.raises(ValueError, match="n_fgsm starts from fresh noise"):
        AttackConfig("n_fgsm", eps=0.1, reuse="int8")
    safer, event = AttackConfig("n_fgsm", eps=0.1).safer()
    assert (safer.kind, safer.steps, event) == ("pgd", 2, "switched from N-FGSM to PGD-2")
    from advprune.train.scoring import _scoring_attack

    # a scoring pass ranks samples by their loss within the eps ball: FGSM-RS there, N-FGSM's step
    assert _scoring_attack(AttackConfig("n_fgsm", eps=0.1)) == {"attack": "fgsm", "eps": 0.1, "step_size": 0.1}


def test_amp_auto_takes_bfloat16_only_where_the_gpu_computes_it(monkeypatch):
    """torch.cuda.is_bf16_supported() also counts emulation (pre-Ampere GPUs): "auto" must not pick it there."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert resolve_amp("auto", torch.device("cuda")) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_amp("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_amp("fp16", torch.device("cuda")) == torch.float16


def test_checkpoints_are_read_to_the_cpu_whatever_the_device(tmp_path, fashion, monkeypatch):  # noqa: F811
    """Loading to the model's device made the RNG states CUDA tensors there, and set_rng_state failed."""
    train, val = fashion
    first = trainer(tmp_path, epochs=1)
    first.fit(loader(train), val)
    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    again = trainer(tmp_path, epochs=2)
    again.fit(loader(train), val, resume=True)
    assert loads and all(str(m) == "cpu" for m in loads)
    assert again.epoch == 2


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_resume_and_guard_restore_on_each_device(tmp_path, fashion, monkeypatch, device):  # noqa: F811
    """A resumed run whose robust accuracy collapses restores last.pt (read to the CPU, moved to the
    device) and goes on with PGD. The first run's validation is fixed too, so that the guard state its
    checkpoint carries (last_val 0.6) is known: a resume loads it (setting it by hand is overwritten)."""
    train, val = fashion
    t = trainer(tmp_path, epochs=1, device=device, attack="fgsm_rs", step_size=0.125)
    monkeypatch.setattr(t, "_validate", lambda _v: {"val_clean_acc": 0.8, "val_pgd_acc": 0.6})
    t.fit(make_loader(train, batch_size=64, device=device), val)
    resumed = trainer(tmp_path, epochs=3, device=device, attack="fgsm_rs", step_size=0.125)
    accuracies = iter([0.1, 0.55, 0.56])  # epoch 1 collapses: the guard restores last.pt
    monkeypatch.setattr(resumed, "_validate", lambda _v: {"val_clean_acc": 0.8, "val_pgd_acc": next(accuracies)})
    resumed.fit(make_loader(train, batch_size=64, device=device), val, resume=True)
    assert resumed.epoch == 3 and resumed.attack.kind == "pgd"
    assert any("restored the last checkpoint" in e for e in resumed.guard.events)
    assert next(accuracies, None) is None  # epoch 1 ran twice: 0.1, then 0.55 and 0.56


def test_a_longer_resumed_run_schedules_over_its_new_length(tmp_path, fashion):  # noqa: F811
    """A resume with more epochs kept the saved horizon: its extra epochs ran at learning rate 0."""
    train, val = fashion
    trainer(tmp_path, epochs=1, lr_schedule="cosine").fit(loader(train), val)
    longer = trainer(tmp_path, epochs=3, lr_schedule="cosine").fit(loader(train), val, resume=True)
    epochs = [r for r in records(tmp_path) if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert epochs[1]["lr"] > 0.01 and longer.schedule.epochs == 3
    assert any("resumed with 3 epochs (the run was started with 1)" in r.get("event", "") for r in records(tmp_path))


def test_data_of_unknown_length_keep_the_epochs_rate(tmp_path, fashion):  # noqa: F811
    """Without __len__ the rate jumped to the epoch's last value after one step; now the first epoch keeps
    its start rate and later epochs use the step count of the one before."""
    train, _ = fashion
    batches = list(loader(train))
    seen: list[float] = []

    class Stream:
        def __iter__(self):
            for batch in batches:
                yield batch
                seen.append(t.optimizer.param_groups[0]["lr"])

    t = trainer(tmp_path, epochs=2, lr_schedule="cosine", lr=0.1)
    t.fit(Stream())
    first, second = seen[: len(batches)], seen[len(batches) :]
    assert first == [pytest.approx(0.1)] * len(batches)
    expected = [t.schedule.lr_at(1 + i / len(batches)) for i in range(len(batches))]
    assert second == pytest.approx(expected)


def test_a_user_optimiser_keeps_the_ratios_of_its_parameter_groups(tmp_path, fashion):  # noqa: F811
    train, _ = fashion
    torch.manual_seed(0)
    model = models.create("small-cnn")
    groups = [{"params": model.body.parameters(), "lr": 0.1}, {"params": model.linear.parameters(), "lr": 0.01}]
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    t = Trainer(
        model,
        AttackConfig("pgd", eps=0.1, steps=1),
        epochs=2,
        optimizer=optimizer,
        optim=OptimConfig(schedule="cosine"),
        run=RunConfig(device="cpu", amp=None, quiet=True),
    )
    t.fit(loader(train))
    body, head = (g["lr"] for g in optimizer.param_groups)
    assert 0 < head < 0.01 and body == pytest.approx(10 * head)


def test_the_trainer_names_what_a_pruner_lacks(tmp_path):
    class Half:
        def epoch_indices(self, epoch, num_samples=None):
            return None

    with pytest.raises(TypeError, match="the pruner Half lacks on_batch, state_dict, load_state_dict, weights"):
        trainer(tmp_path, pruner=Half())

    class Fine(PrunerBase):  # the protocol's defaults make a minimal pruner
        def epoch_indices(self, epoch, num_samples=None):
            return torch.arange(0, 512, 2)

    assert trainer(tmp_path, pruner=Fine()).pruner is not None
    with pytest.raises(TypeError, match="the tracker object lacks on_batch"):
        trainer(tmp_path, trackers=[object()])


def test_dynamic_pruning_never_trains_on_held_out_ids(tmp_path, fashion):  # noqa: F811
    """A pruner sized to the trained part refused a loader over the whole set; now it chooses from a pool."""
    train, _ = fashion
    pool, held_out = holdout_split(torch.from_numpy(train.labels), 64, seed=0)
    pruner = DynamicPruner(len(train), epochs=3, ratio=0.5, pool=pool)
    served = []
    t = trainer(tmp_path, epochs=3, pruner=pruner)
    on_batch = pruner.on_batch

    def spy(ids, scores, adv_loss):
        served.append(ids.clone())
        on_batch(ids, scores, adv_loss)

    pruner.on_batch = spy
    t.fit(make_loader(train, batch_size=64, indices=pool))
    ids = torch.cat(served)
    assert not set(ids.tolist()) & set(held_out.tolist())
    sizes = [r["samples"] for r in records(tmp_path) if "epoch" in r]
    assert sizes[0] == len(pool) == 448 and sizes[1] < 448 and sizes[2] == 448


def test_the_dynamic_pruner_in_a_loop_of_ones_own():
    """Three lines, as InfoBatch: the sampler it drives, and update() returning the weighted loss."""
    torch.manual_seed(0)
    x, y = torch.rand(256, 1, 8, 8), torch.randint(0, 4, (256,))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = DynamicPruner(256, epochs=4, ratio=0.5)
    data = DataLoader(with_ids(TensorDataset(x, y)), batch_size=32, sampler=pruner.sampler())
    sizes = []
    for _ in range(4):
        sizes.append(len(data.sampler))
        count = 0
        for xb, yb, ids in data:
            loss = pruner.update(ids, F.cross_entropy(model(xb), yb, reduction="none"))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            count += len(ids)
        assert count == sizes[-1]
    assert sizes[0] == 256 and sizes[1] < 256 and sizes[2] < 256 and sizes[3] == 256
    losses = torch.rand(5, requires_grad=True)
    weighted = pruner.update(torch.arange(5), losses)
    assert weighted.requires_grad and weighted.item() == pytest.approx(losses.mean().item())  # weights 1 at the end


def test_validation_every_few_epochs(tmp_path, fashion):  # noqa: F811
    from advprune.train import ValidationConfig

    train, val = fashion
    trainer(tmp_path, epochs=3, validation=ValidationConfig(steps=2, every=2)).fit(loader(train), val)
    validated = ["val_pgd_acc" in r for r in records(tmp_path)]
    assert validated == [False, True, True]  # epoch 1, and the last


@pytest.mark.parametrize(
    "batches,message",
    [
        ([(torch.rand(4, 1, 28, 28) * 255, torch.zeros(4, dtype=torch.long), torch.arange(4))],
         "images must be raw pixels in [0, 1], got values in"),
        ([(torch.rand(4, 1, 28, 28) * 2 - 1, torch.zeros(4, dtype=torch.long), torch.arange(4))],
         "images must be raw pixels in [0, 1]"),
        ([(torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 12, 1]), torch.arange(4))],
         "labels must be class indices in [0, 10) (the model's outputs), got labels in [0, 12]"),
        ([], "the training data served no batch in epoch 0"),
    ],
)  # fmt: skip
def test_a_batch_of_wrong_values_or_no_batch_is_refused_before_any_update(tmp_path, batches, message):
    from advprune import models
    from advprune.train import AttackConfig, RunConfig, Trainer

    torch.manual_seed(0)
    model = models.create("small-cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, AttackConfig("pgd", eps=0.1, steps=1), epochs=1,
                      run=RunConfig(out_dir=tmp_path, amp=None, device="cpu", quiet=True))  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(message)):
        trainer.fit(batches)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing trained
    assert not (tmp_path / "last.pt").exists()
