"""AutoAttack's finished stages kept on disk: an evaluation cut short resumes at its next stage with the flags
an uninterrupted run has, a longer evaluation skips the stages it shares with a shorter one, and nothing is
taken for another model, other samples, another order of stages or from a damaged file."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advprune import autoattack
from advprune._warn import AdvpruneWarning
from advprune.cli import main
from advprune.data.readers import FASHION_MNIST_DIR
from advprune.evaluate import evaluate

pytest.importorskip("torchattacks")
TWO = ("apgd-ce", "apgd-t")
STAGE_ATTACK = autoattack.stage_attack  # the real one, whatever a test has patched in
SETTINGS = dict(attack="autoattack", eps=0.02, n=60, batch_size=16)  # each stage breaks some samples here


@pytest.fixture(scope="module")
def mlp():
    """A small MLP fitted to a noisy linear rule on 8x8 images: quick to attack, with both stages of work."""
    torch.manual_seed(0)
    x = torch.rand(512, 1, 8, 8)
    y = (x.flatten(1) @ torch.randn(64, 10) + 0.5 * torch.randn(512, 10)).argmax(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x, y


def counting_stages(monkeypatch, fail_at: str | None = None) -> list[str]:
    """The stages that run, in order (a name each time one starts); `fail_at` raises KeyboardInterrupt in its
    first batch."""
    ran: list[str] = []

    def stage(name, *args, **kwargs):
        attack = STAGE_ATTACK(name, *args, **kwargs)
        ran.append(name)

        def run(images, labels):
            if name == fail_at:
                raise KeyboardInterrupt
            return attack(images, labels)

        return run

    monkeypatch.setattr(autoattack, "stage_attack", stage)
    return ran


@pytest.fixture(scope="module")
def uninterrupted(mlp):
    """The two stages' result without a cache."""
    model, x, y = mlp
    return evaluate(model, x, y, stages=TWO, **SETTINGS)


def test_a_cut_short_evaluation_resumes_at_its_next_stage_as_if_uncut(mlp, uninterrupted, tmp_path, monkeypatch):
    model, x, y = mlp
    stages = uninterrupted["stages"]
    assert uninterrupted["clean_acc"] > stages["apgd-ce"] > stages["apgd-t"]  # each stage breaks some here
    ran = counting_stages(monkeypatch, fail_at="apgd-t")
    short = evaluate(model, x, y, stages=("apgd-ce",), stage_cache=tmp_path, **SETTINGS)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, x, y, stages=TWO, stage_cache=tmp_path, **SETTINGS)
    assert ran == ["apgd-ce", "apgd-t"]  # the longer one took apgd-ce from the shorter, then was cut
    (file,) = tmp_path.iterdir()
    assert [name for name, _ in json.loads(file.read_text())["stages"]] == ["apgd-ce"]

    ran = counting_stages(monkeypatch)
    resumed = evaluate(model, x, y, stages=TWO, stage_cache=tmp_path, **SETTINGS)
    assert ran == ["apgd-t"] and resumed["reused_stages"] == ["apgd-ce"]
    assert resumed["stages"] == stages and resumed["robust_acc"] == uninterrupted["robust_acc"]
    assert uninterrupted["reused_stages"] == short["reused_stages"] == []

    again = evaluate(model, x, y, stages=TWO, stage_cache=tmp_path, **SETTINGS)  # all of it is on disk now
    assert ran == ["apgd-t"] and again["reused_stages"] == list(TWO) and again["stages"] == stages


def test_nothing_is_taken_for_other_weights_other_samples_or_another_order(mlp, tmp_path, monkeypatch):
    model, x, y = mlp
    evaluate(model, x, y, stages=("apgd-ce",), stage_cache=tmp_path, **SETTINGS)
    ran = counting_stages(monkeypatch)
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert evaluate(other, x, y, stages=("apgd-ce",), stage_cache=tmp_path, **SETTINGS)["reused_stages"] == []
    flipped = evaluate(model, x.flip(0), y.flip(0), stages=("apgd-ce",), stage_cache=tmp_path, **SETTINGS)
    assert flipped["reused_stages"] == [] and ran == ["apgd-ce", "apgd-ce"]
    assert len(list(tmp_path.iterdir())) == 3  # a file per key, none overwritten
    flags = torch.ones(5, dtype=torch.bool)
    assert autoattack.reusable_stages(("apgd-t", "apgd-ce"), [("apgd-ce", flags), ("apgd-t", flags)]) == []
    assert [name for name, _ in autoattack.reusable_stages(TWO, [("apgd-ce", flags), ("fab-t", flags)])] == ["apgd-ce"]


def test_a_damaged_cache_file_is_named_and_its_stages_run_again(mlp, uninterrupted, tmp_path):
    model, x, y = mlp
    evaluate(model, x, y, stages=("apgd-ce",), stage_cache=tmp_path, **SETTINGS)
    (file,) = tmp_path.iterdir()
    file.write_text('{"key": {}, "stages": [["apgd-ce", "01x"]]}')
    with pytest.warns(AdvpruneWarning, match=rf"{file}: unreadable AutoAttack stage cache"):
        result = evaluate(model, x, y, stages=("apgd-ce",), stage_cache=tmp_path, **SETTINGS)
    assert result["reused_stages"] == [] and result["stages"]["apgd-ce"] == uninterrupted["stages"]["apgd-ce"]
    assert [name for name, _ in json.loads(file.read_text())["stages"]] == ["apgd-ce"]  # rewritten whole


def test_flags_for_other_samples_are_refused(mlp):
    model, x, y = mlp
    done = [("apgd-ce", torch.ones(len(y) + 1, dtype=torch.bool))]
    with pytest.raises(ValueError, match=r"apgd-ce's flags are for 513 samples, not these 512"):
        autoattack.robust_flags(model, x, y, eps=0.02, num_classes=10, stages=TWO, done=done)


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_the_command_keeps_stages_beside_its_output_and_names_what_it_took(tmp_path, capsys):
    run = tmp_path / "run"
    train = ["train", "--limit", "256", "--epochs", "1", "--steps", "1", "--eval-n", "0", "--val-n", "64"]
    assert main([*train, "--batch-size", "64", "--out", str(run), "--quiet"]) == 0
    evaluation = ["eval", "--checkpoint", str(run / "last.pt"), "--attack", "autoattack", "--n", "24"]
    assert main([*evaluation, "--stages", "apgd-ce", "--out", str(run / "short.json")]) == 0
    assert len(list((run / "autoattack_stages").iterdir())) == 1
    capsys.readouterr()
    assert main([*evaluation, "--stages", "apgd-ce", "--out", str(run / "again.json")]) == 0
    assert f"AutoAttack apgd-ce: taken from {run / 'autoattack_stages'}" in capsys.readouterr().out
    assert json.loads((run / "again.json").read_text())["reused_stages"] == ["apgd-ce"]
    assert main([*evaluation, "--stage-cache", "none", "--stages", "apgd-ce", "--out", str(run / "none.json")]) == 0
    assert json.loads((run / "none.json").read_text())["reused_stages"] == []
    assert len(list((run / "autoattack_stages").iterdir())) == 1
