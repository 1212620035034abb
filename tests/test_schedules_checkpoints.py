"""LR schedules on progress in epochs, and atomic, code-free checkpoints."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from advprune.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from advprune.schedules import LRSchedule


def test_piecewise_cosine_onecycle_values():
    piece = LRSchedule("piecewise", 0.1, 200)
    assert piece.lr_at(0) == 0.1 and piece.lr_at(99.9) == 0.1
    assert piece.lr_at(100) == pytest.approx(0.01) and piece.lr_at(150) == pytest.approx(0.001)
    cos = LRSchedule("cosine", 0.2, 10)
    assert cos.lr_at(0) == pytest.approx(0.2) and cos.lr_at(5) == pytest.approx(0.1) and cos.lr_at(10) == 0
    one = LRSchedule("onecycle", 0.2, 10)
    assert one.lr_at(0) == 0 and one.lr_at(4) == pytest.approx(0.2) and one.lr_at(7) == pytest.approx(0.1)
    assert one.lr_at(10) == pytest.approx(0)


def test_changing_steps_per_epoch_keep_the_schedule():
    """Epochs of 10, then 3, then 7 steps: each step sits at epoch + i / n."""
    sched = LRSchedule("cosine", 1.0, 3)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    seen = []
    for epoch, n in enumerate((10, 3, 7)):
        for i in range(n):
            seen.append((epoch + i / n, sched.apply(opt, epoch, i, n)))
            assert opt.param_groups[0]["lr"] == seen[-1][1]
    for t, lr in seen:
        assert lr == pytest.approx(0.5 * (1 + np.cos(np.pi * t / 3)))
    assert [lr for _, lr in seen] == sorted((lr for _, lr in seen), reverse=True)


def test_schedule_state_round_trip_and_bad_arguments():
    sched = LRSchedule("onecycle", 0.3, 7, peak=0.25)
    again = LRSchedule.from_state_dict(sched.state_dict())
    assert [again.lr_at(t / 3) for t in range(22)] == [sched.lr_at(t / 3) for t in range(22)]
    with pytest.raises(ValueError, match="lr schedule must be one of"):
        LRSchedule("step", 0.1, 10)
    with pytest.raises(ValueError, match="base_lr must be a positive number"):
        LRSchedule("cosine", -1, 10)


def test_checkpoint_round_trip_with_rng_states(tmp_path):
    model = torch.nn.Linear(3, 2)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = {"model": model.state_dict(), "epoch": 4, "rng": rng_state()}
    path = save_checkpoint(tmp_path / "ckpt.pt", state)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    loaded = load_checkpoint(path)
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    assert loaded["epoch"] == 4 and torch.equal(loaded["model"]["weight"], model.weight.detach())
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_failed_write_keeps_the_old_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", {"model": {"w": torch.ones(2)}})
    with pytest.raises((TypeError, AttributeError)):  # a lambda cannot be pickled: the write fails midway
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "bad": lambda: None})
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_foreign_or_damaged_files_are_refused(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": torch.ones(1)}, tmp_path / "y.pt")
    with pytest.raises(ValueError, match="is not an advprune checkpoint"):
        load_checkpoint(tmp_path / "y.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "z.pt")
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        load_checkpoint(tmp_path / "z.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
