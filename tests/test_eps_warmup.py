"""The training attack's eps warm-up (a linear ramp from 0 over the first epochs) and the command-line
options that shape training beside it: --eps-warmup, --weight-decay, --augment."""

from __future__ import annotations

import pytest
import torch

from advprune.cli.common import UsageError
from advprune.cli.factory import RunFactory, training_configs
from advprune.cli.parser import parse
from advprune.data import from_arrays
from advprune.train import AttackConfig
from tests.test_train import fashion, loader, trainer  # noqa: F401 (fashion is a fixture)

EPS = 0.1


def test_strength_ramps_linearly_then_holds():
    a = AttackConfig("fgsm_rs", eps=EPS, eps_warmup=2.0)
    for progress, share in [(0.0, 0.0), (0.5, 0.25), (1.0, 0.5), (1.5, 0.75), (2.0, 1.0), (7.3, 1.0)]:
        eps, step = a.strength_at(progress)
        assert eps == pytest.approx(EPS * share) and step == pytest.approx(1.25 * EPS * share)
    assert AttackConfig("pgd", eps=EPS).strength_at(0.0) == (EPS, EPS / 4)  # no warm-up: full from the start
    with pytest.raises(ValueError, match="eps_warmup"):
        AttackConfig("pgd", eps=EPS, eps_warmup=-1.0)


@pytest.mark.parametrize("attack", ["fgsm_rs", "n_fgsm"])
def test_the_trainer_crafts_each_step_at_the_ramped_eps(tmp_path, fashion, attack):  # noqa: F811
    """512 samples at batch 64: 8 steps an epoch; over a 1-epoch warm-up the k-th step attacks at eps * k / 8,
    then at eps. FGSM-RS's signed step of 1.25 eps_t takes some pixel to the ball's edge, exactly; N-FGSM's
    noise of 2 eps_t and step of eps_t reach beyond the ball, up to 3 eps_t."""
    train, _ = fashion
    t = trainer(tmp_path, epochs=2, attack=attack, step_size=None)
    largest = []
    perturb = t.step.perturb

    def spy(x, y, generator, start=None):
        x_adv = perturb(x, y, generator, start)
        largest.append(float((x_adv - x).abs().max()))
        return x_adv

    t.step.attack = AttackConfig(attack, eps=EPS, eps_warmup=1.0)
    t.step.perturb = spy
    t.fit(loader(train))
    ramp = torch.tensor([EPS * k / 8 for k in range(8)] + [EPS] * 8, dtype=torch.float64)
    seen = torch.tensor(largest, dtype=torch.float64)
    if attack == "fgsm_rs":
        assert torch.allclose(seen, ramp, atol=1e-6)
    else:
        assert (seen <= 3 * ramp + 1e-6).all() and (seen[1:] > 2 * ramp[1:]).all() and seen[0] == 0


def _args(*flags: str):
    return parse(["train", "--dataset", "cifar10", "--out", "unused", *flags])


def test_weight_decay_and_eps_warmup_reach_the_trainer_and_are_checked():
    attack, optim, _ = training_configs(_args("--weight-decay", "1e-4", "--eps-warmup", "3"))
    assert optim.weight_decay == pytest.approx(1e-4) and attack.eps_warmup == 3.0
    _, default, _ = training_configs(_args())
    assert default.weight_decay == pytest.approx(5e-4)  # the paper's
    with pytest.raises(UsageError, match="weight_decay"):
        training_configs(_args("--weight-decay", "-0.1"))
    with pytest.raises(UsageError, match="eps_warmup"):
        training_configs(_args("--eps-warmup", "-2"))


@pytest.mark.parametrize(("flag", "augments"), [("auto", True), ("on", True), ("off", False)])
def test_augment_flag_reaches_the_loader(flag, augments):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 8, 8, 3), generator=generator, dtype=torch.uint8).numpy()
    data = from_arrays(images, (torch.arange(40) % 10).numpy())
    args = _args("--augment", flag, "--val-n", "10", "--device", "cpu", "--model", "small-resnet")
    assert RunFactory(args, data).loader(None, seed=0).augment is augments
