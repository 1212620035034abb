"""Checkpoints written on a worker thread while the next epoch trains: the file holds the state as it was
when saved, every read and close waits for the write, and a failed write is raised, not lost."""

from __future__ import annotations

import threading

import pytest
import torch

from advprune import _files
from advprune.checkpoint import load_checkpoint
from advprune.train import run_folder
from advprune.train.background_write import BackgroundWrite
from advprune.train.folder_lock import acquire, release
from advprune.train.run_folder import RunFolder


def test_a_job_runs_on_its_own_thread_and_its_error_reaches_the_caller():
    writes, release_job, threads = BackgroundWrite(), threading.Event(), []

    def blocked():
        threads.append(threading.current_thread().name)
        release_job.wait(10)

    writes.start(blocked)
    assert writes.busy  # the caller goes on while the job runs
    release_job.set()
    writes.wait()
    assert not writes.busy and threads == ["advprune-checkpoint-write"]

    writes.start(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writes.start(lambda: None)  # the next start raises the previous job's error, once
    writes.wait()  # and it is not raised again


@pytest.fixture
def slow_writes(monkeypatch):
    """The run folder's checkpoint writes, held until the test lets them go; records which thread wrote."""
    gate, writers = threading.Event(), []
    real = run_folder.write_checkpoint_bytes

    def held(path, data):
        writers.append(threading.current_thread().name)
        gate.wait(10)
        return real(path, data)

    monkeypatch.setattr(run_folder, "write_checkpoint_bytes", held)
    return gate, writers


def test_a_background_save_writes_the_state_as_it_was_and_a_read_waits_for_it(tmp_path, slow_writes):
    gate, writers = slow_writes
    folder = RunFolder(tmp_path)
    weights = torch.randn(1000)
    saved = weights.clone()
    folder.save({"model": {"w": weights}, "epoch": 3, "best_epoch": 3}, best=True, background=True)
    weights.add_(5.0)  # the next epoch changes the weights in place while the write is held
    assert not (tmp_path / "last.pt").exists()
    threading.Timer(0.2, gate.set).start()
    state = folder.load()  # waits for the write
    assert state["epoch"] == 3 and torch.equal(state["model"]["w"], saved)
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["model"]["w"], saved)
    assert writers == ["advprune-checkpoint-write"] * 2  # last.pt, then best.pt


def test_a_failed_background_write_is_raised_by_close_which_still_lets_the_folder_go(tmp_path, monkeypatch):
    def broken(path, data):
        raise OSError(5, f"I/O error writing {path}")

    monkeypatch.setattr(run_folder, "write_checkpoint_bytes", broken)
    folder = RunFolder(tmp_path)
    folder.open(resume=False)
    folder.save({"model": {"w": torch.randn(10)}, "epoch": 1}, best=False, background=True)
    with pytest.raises(OSError, match=r"I/O error writing .*last\.pt"):
        folder.close()
    acquire(tmp_path)  # the lock was released
    release(tmp_path)


def test_a_disk_without_room_fails_the_save_at_once_and_writes_nothing(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path)
    monkeypatch.setattr(_files.shutil, "disk_usage", lambda _p: type("Usage", (), {"free": 1000})())
    with pytest.raises(_files.DiskFull, match=r"no space left on the device holding .*last.pt: it needs"):
        folder.save({"model": {"w": torch.randn(10_000)}, "epoch": 1}, best=True, background=True)
    assert list(tmp_path.iterdir()) == []


def test_the_trainer_writes_its_checkpoints_in_the_background_and_fit_returns_them_written(tmp_path, slow_writes):
    from advprune import AttackConfig, RunConfig, Trainer, models

    gate, writers = slow_writes
    gate.set()
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    batches = [(x[i : i + 32], y[i : i + 32], torch.arange(i, i + 32)) for i in (0, 32)]
    trainer = Trainer(
        models.create("small-cnn", 10),
        attack=AttackConfig(kind="fgsm_rs", eps=0.1),
        epochs=2,
        run=RunConfig(out_dir=tmp_path, device="cpu", amp=None, quiet=True),
    )
    trainer.fit(batches)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert writers == ["advprune-checkpoint-write"] * 2
