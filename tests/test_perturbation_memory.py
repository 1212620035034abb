"""Perturbation memory (ATTA): a perturbation stays on its source pixels through any crop and flip, the next
epoch's attack starts where the last one ended, only served samples are stored, the memory survives a
checkpoint, and what cannot work is refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from advprune import attacks, models
from advprune.data import from_arrays, make_loader, with_ids
from advprune.data.memory import MemoryLoader
from advprune.train import AttackConfig, OptimConfig, RunConfig, Trainer
from advprune.train.perturbation_memory import PerturbationMemory

EPS = 0.1
SENTINEL = 100  # an int8 no write produces from a perturbation of these tests: an unwritten element shows


def random_images(n: int, h: int = 8, w: int = 8, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (n, h, w, c), dtype=np.uint8)


def one_batch(loader: MemoryLoader):
    x, _y, ids = next(iter(loader))
    return x, ids, loader.last_augmentation


def test_a_perturbation_lands_on_its_source_pixels_through_crop_and_flip():
    """Writing each augmented batch itself (times eps) as the perturbation must store exactly the padded
    source image on the window the batch was cut from, flipped back, and leave the rest of the frame."""
    images, p = random_images(32), 4
    loader = MemoryLoader(images, np.zeros(32), batch_size=32, augment=True, padding=p, seed=3)
    x, ids, aug = one_batch(loader)
    assert aug.flips.any() and (~aug.flips).any() and len(set(aug.rows.tolist())) > 1  # a real mix of windows
    memory = PerturbationMemory(32, (3, 8 + 2 * p, 8 + 2 * p), eps=EPS)
    memory.store.fill_(SENTINEL)
    memory.write(ids, x * EPS, aug)
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0))).transpose(0, 3, 1, 2)  # [N, C, 16, 16]
    for k, sample in enumerate(ids.tolist()):
        want = np.full((3, 16, 16), SENTINEL, dtype=np.int64)
        r, c = int(aug.rows[k]), int(aug.cols[k])
        want[:, r : r + 8, c : c + 8] = np.round(padded[sample, :, r : r + 8, c : c + 8] / 255 * 127)
        got = memory.store[sample].long().numpy()
        assert np.abs(got - want).max() <= 1, f"sample {sample}: window ({r}, {c}), flip {bool(aug.flips[k])}"
    assert memory.seen[ids].all()


def test_the_next_epochs_window_reads_the_same_source_pixels():
    """Reading through another epoch's augmentation gives that window of the stored frame, flipped as the
    batch is: checked against an independent numpy cut of the frame."""
    images, p = random_images(32, seed=1), 4
    loader = MemoryLoader(images, np.zeros(32), batch_size=32, augment=True, padding=p, seed=5)
    memory = PerturbationMemory(32, (3, 16, 16), eps=EPS, storage="bf16")
    memory.store.copy_(torch.empty(32, 3, 16, 16).uniform_(-EPS, EPS))  # every frame pixel different
    _x, ids, aug = one_batch(loader)
    got = memory.read(ids, aug, 8, 8)
    frames = memory.store.float().numpy()
    for k, sample in enumerate(ids.tolist()):
        r, c = int(aug.rows[k]), int(aug.cols[k])
        want = frames[sample, :, r : r + 8, c : c + 8]
        if aug.flips[k]:
            want = want[:, :, ::-1]
        np.testing.assert_array_equal(got[k].numpy(), want)


def test_a_round_trip_through_two_augmentations_keeps_each_source_pixels_perturbation():
    """A perturbation written under one crop and flip and read under another: every batch pixel whose
    source pixel the first window covered reads back its own perturbation (int8: within eps / 254)."""
    images, p = random_images(16, seed=2), 4
    loader = MemoryLoader(images, np.zeros(16), batch_size=16, augment=True, padding=p, seed=7)
    memory = PerturbationMemory(16, (3, 16, 16), eps=EPS)
    source_delta = torch.empty(16, 3, 16, 16).uniform_(-EPS, EPS)  # a perturbation per padded source pixel
    _x1, ids1, aug1 = one_batch(loader)
    rows, cols = aug1.pixel_index(8, 8)
    memory.write(ids1, source_delta[ids1[:, None, None], :, rows, cols].permute(0, 3, 1, 2), aug1)
    batches = iter(loader)
    _x2, _, ids2 = next(batches)
    aug2 = loader.last_augmentation
    got = memory.read(ids2, aug2, 8, 8)
    rows2, cols2 = aug2.pixel_index(8, 8)
    want = source_delta[ids2[:, None, None], :, rows2, cols2].permute(0, 3, 1, 2)
    order1 = {int(s): k for k, s in enumerate(ids1)}
    covered = torch.zeros(16, 16, 16, dtype=torch.bool)  # which padded pixels the first window wrote
    for s, k in order1.items():
        covered[s, int(aug1.rows[k]) : int(aug1.rows[k]) + 8, int(aug1.cols[k]) : int(aug1.cols[k]) + 8] = True
    mask = covered[ids2[:, None, None], rows2, cols2][:, None].expand_as(got)
    assert mask.float().mean() > 0.3  # the two windows overlap on many pixels
    assert (got[mask] - want[mask]).abs().max() <= EPS / 254 + 1e-7


def tiny_data(n: int = 64):
    rng = np.random.default_rng(0)
    return from_arrays(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, n))


def reuse_trainer(tmp_path, attack="fgsm_rs", epochs=2, **reuse):
    torch.manual_seed(0)
    return Trainer(
        models.create("small-cnn"),
        AttackConfig(attack, eps=EPS, steps=2, reuse=reuse.pop("storage", "int8"), **reuse),
        epochs=epochs,
        optim=OptimConfig(lr=0.05),
        run=RunConfig(out_dir=tmp_path, amp=None, device="cpu", quiet=True),
    )


@pytest.mark.parametrize("attack", ["fgsm_rs", "pgd", "trades"])
def test_the_next_epochs_attack_starts_where_the_last_one_ended(tmp_path, monkeypatch, attack):
    calls = []
    original = {"fgsm_rs": attacks.fgsm_rs, "pgd": attacks.pgd, "trades": attacks.trades_perturb}[attack]

    def spy(model, x, *args, start=None, **kwargs):
        out = original(model, x, *args, start=start, **kwargs)
        calls.append((x.clone(), start.clone(), out.clone()))
        return out

    monkeypatch.setattr(attacks, {"trades": "trades_perturb"}.get(attack, attack), spy)
    data = tiny_data()
    train = make_loader(data, batch_size=64, augment=False)
    reuse_trainer(tmp_path, attack).fit(train)
    (x1, start1, end1), (x2, start2, _end2) = calls  # one batch an epoch: the same samples, another order
    match = [int(torch.nonzero((x1.flatten(1) == row).all(1))[0]) for row in x2.flatten(1)]
    remembered = end1[match] - x1[match]
    assert (start1 - x1).abs().max() > 0  # epoch 1: the attack's own random start
    assert (start2 - x2 - remembered).abs().max() <= EPS / 254 + 1e-6  # epoch 2: where epoch 1 ended
    assert remembered.abs().mean() > EPS / 10  # and that is no small perturbation


def test_refresh_one_restarts_every_sample_at_random(tmp_path, monkeypatch):
    starts = []
    original = attacks.fgsm_rs

    def spy(model, x, *args, start=None, **kwargs):
        starts.append((x.clone(), start.clone()))
        return original(model, x, *args, start=start, **kwargs)

    monkeypatch.setattr(attacks, "fgsm_rs", spy)
    train = make_loader(tiny_data(), batch_size=64, augment=False)
    trainer = reuse_trainer(tmp_path, reuse_refresh=1.0)
    trainer.fit(train)
    x2, start2 = starts[1]
    remembered = trainer.step.memory.read(torch.arange(64), _identity(64), 28, 28)
    assert (start2 - x2).abs().max() > 0 and not torch.allclose(start2 - x2, remembered[: len(x2)], atol=EPS / 10)


def _identity(n):
    from advprune.data.augmentation import Augmentation

    return Augmentation.identity(n, "cpu")


def test_with_pruning_only_the_kept_samples_are_stored(tmp_path):
    data = tiny_data()
    kept = torch.arange(0, 64, 3)
    trainer = reuse_trainer(tmp_path)
    trainer.fit(make_loader(data, indices=kept, batch_size=16, augment=False))  # static pruning: kept ids
    memory = trainer.step.memory
    assert torch.equal(torch.nonzero(memory.seen).squeeze(1), kept)
    others = torch.ones(64, dtype=torch.bool)
    others[kept] = False
    assert (memory.store[others] == 0).all() and (memory.store[kept] != 0).any()


def test_the_memory_is_in_the_checkpoint_and_comes_back_on_resume(tmp_path):
    data = tiny_data()
    first = reuse_trainer(tmp_path, epochs=1, storage="bf16")
    first.fit(make_loader(data, batch_size=32))
    saved = first.step.memory.store.clone()
    resumed = reuse_trainer(tmp_path, epochs=1, storage="bf16")
    resumed.fit(make_loader(data, batch_size=32), resume=True)  # nothing left to train: only the load
    assert resumed.step.memory is not None and torch.equal(resumed.step.memory.store, saved)
    assert resumed.step.memory.seen.all()


def test_what_cannot_work_is_refused_with_the_reason(tmp_path):
    data = tiny_data()
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    plain = DataLoader(with_ids(TensorDataset(x, torch.from_numpy(data.labels))), batch_size=16)
    with pytest.raises(TypeError, match="does not report"):
        reuse_trainer(tmp_path).fit(plain)
    with pytest.raises(ValueError, match="clean training has none"):
        AttackConfig("clean", reuse="int8")
    with pytest.raises(ValueError, match="reuse must be one of"):
        AttackConfig("pgd", reuse="fp8")
    with pytest.raises(ValueError, match=r"reuse_refresh must be a probability"):
        AttackConfig("pgd", reuse="int8", reuse_refresh=1.5)
    memory = PerturbationMemory(4, (1, 28, 28), eps=EPS)
    with pytest.raises(ValueError, match="the data changed since the memory was made"):
        memory.starts(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), _identity(2), lambda v: v)


def test_a_given_start_is_projected_into_the_ball_and_the_image_range():
    x = torch.rand(4, 3, 8, 8)
    far = x + torch.randn(4, 3, 8, 8)  # well outside the ball and [0, 1]
    out = attacks.given_start(far, x, EPS)
    assert (out - x).abs().max() <= EPS + 1e-6 and out.min() >= 0 and out.max() <= 1
    inside = (x + torch.empty_like(x).uniform_(-EPS / 2, EPS / 2)).clamp(0, 1)
    torch.testing.assert_close(attacks.given_start(inside, x, EPS), inside)
    with pytest.raises(ValueError, match="start has shape"):
        attacks.given_start(far[:2], x, EPS)
