"""Pruning in training: the Trainer with a dynamic pruner (resume selects the same subsets;
any DataLoader over a PrunedSampler works), and `advprune train --prune` end to end with
each strategy on a small real subset of Fashion-MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from advprune.cli import main
from advprune.data.readers import FASHION_MNIST_DIR
from advprune.pruning import DynamicPruner, KeepHardPruner, PrunedSampler, load_indices
from advprune.scores import load_scores
from tests.test_train import fashion, loader, trainer  # noqa: F401 (fashion is a fixture)

needs_fashion = pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is missing")


def recorded(data_loader):
    """The loader, with every subset handed to it recorded."""
    subsets = []
    original = data_loader.set_indices

    def set_indices(ids):
        subsets.append(torch.as_tensor(ids).clone())
        original(ids)

    data_loader.set_indices = set_indices
    return data_loader, subsets


def test_dynamic_pruning_trains_fewer_samples_and_resumes_the_same_subsets(tmp_path, fashion):  # noqa: F811
    train, val = fashion
    straight_loader, straight = recorded(loader(train))
    run = trainer(tmp_path / "a", epochs=4, pruner=DynamicPruner(512, 4, ratio=0.5)).fit(straight_loader, val)
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    samples = [r["samples"] for r in records]
    assert samples[0] == 512 and samples[1] < 512 and samples[2] < 512 and samples[3] == 512  # annealed at the end
    first_loader, _ = recorded(loader(train))
    first = trainer(tmp_path / "b", epochs=4, pruner=DynamicPruner(512, 4, ratio=0.5))
    first.epochs = 2  # interrupted after two epochs
    first.fit(first_loader, val)
    resumed_loader, resumed = recorded(loader(train))
    again = trainer(tmp_path / "b", epochs=4, pruner=DynamicPruner(512, 4, ratio=0.5))
    again.fit(resumed_loader, val, resume=True)
    assert torch.equal(resumed[0], straight[2]) and torch.equal(resumed[1], straight[3])
    for (name, a), b in zip(run.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


class IndexedImages(Dataset):
    """A plain torch Dataset yielding (x, y, id), as another codebase would have."""

    def __init__(self, data) -> None:
        self.x = torch.from_numpy(data.images.copy()).permute(0, 3, 1, 2).float() / 255
        self.y = torch.from_numpy(data.labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def test_a_dataloader_over_a_pruned_sampler_takes_the_pruners_subsets(tmp_path, fashion):  # noqa: F811
    train, val = fashion
    sampler = PrunedSampler(torch.arange(512), num_samples=512, seed=0)
    data_loader = DataLoader(IndexedImages(train), batch_size=64, sampler=sampler)
    trainer(tmp_path, epochs=2, pruner=KeepHardPruner(512, 2, keep=0.25)).fit(data_loader, val)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in records] == [128, 128]


def test_a_pruner_needs_data_that_can_change_its_subset(tmp_path, fashion):  # noqa: F811
    train, _ = fashion
    batches = list(loader(train))
    with pytest.raises(TypeError, match="cannot change its subset"):
        trainer(tmp_path, pruner=DynamicPruner(512, 2)).fit(batches)


# -------------------------------------------------------------- the command

BASE = [
    "--limit",
    "512",
    "--epochs",
    "2",
    "--steps",
    "1",
    "--eval-n",
    "64",
    "--val-n",
    "64",
    "--batch-size",
    "64",
    "--quiet",
]


POOL = 448  # --limit 512 less the 64 held-out validation samples


def train_run(out: Path, *extra: str) -> tuple[list[dict], dict]:
    """(the pruning record, if any, then the epoch records; eval.json) of `advprune train`."""
    assert main(["train", *BASE, "--out", str(out), *extra]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    setup = lines.pop(0)
    assert setup["phase"] == "setup" and setup["train_samples"] == POOL and setup["val"]["n"] == 64
    return lines, json.loads((out / "eval.json").read_text())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A run on all 512 samples: its train_scores.npz holds the forgetting counts."""
    if not Path(FASHION_MNIST_DIR).is_dir():
        pytest.skip("dataset-fashion-mnist is missing")
    out = tmp_path_factory.mktemp("full") / "run"
    train_run(out)
    return out


@needs_fashion
@pytest.mark.parametrize(
    "spec,extra,kept",
    [("random:0.5", [], 224), ("balanced:0.25", [], 112), ("el2n:0.5", ["--score-pass", "--score-attack", "pgd"], 224)],
)
def test_train_with_a_static_spec(tmp_path, spec, extra, kept):
    metrics, result = train_run(tmp_path / "run", "--prune", spec, *extra)
    selection, *epochs = metrics
    assert selection["phase"] == "pruning" and selection["kept"] == kept
    assert [r["samples"] for r in epochs] == [kept, kept]
    chosen = load_indices(tmp_path / "run" / "kept.npy", 512)
    held_out = load_indices(tmp_path / "run" / "val_ids.npy", 512)
    assert len(chosen) == kept and not set(chosen.tolist()) & set(held_out.tolist())
    assert 0 <= result["robust_acc"] <= result["clean_acc"] and result["prune"] == spec and result["split"] == "test"
    if spec.startswith("el2n"):  # scored by a warm-up run and a scoring pass inside the run, and timed
        assert selection["scoring_seconds"] > 0 and result["scoring_seconds"] == selection["scoring_seconds"]
        scores, meta = load_scores(tmp_path / "run" / "scores.npz")
        assert len(scores["adv_el2n"]) == 512 and meta["warmup_epochs"] == 1 and meta["attack"] == "pgd"


@needs_fashion
@pytest.mark.parametrize(
    "spec,warmup",
    [
        ("ccs:0.25", 1),
        ("el2n:0.25", 1),
        ("adv_loss:0.25", 1),
        ("easiest:0.25:margin", 1),
        ("forgetting:0.25", 2),
        ("low+high:0.25", 1),
        ("deepfool:0.25", 1),
    ],
)
def test_train_scoring_in_the_run(tmp_path, spec, warmup):
    """Without --scores, the warm-up epochs train on the whole pool, then one scoring pass with the model as it
    is then scores every pooled sample (its time in the epoch's record); forgetting comes from the steps."""
    metrics, _ = train_run(
        tmp_path / "run", "--prune", spec, "--epochs", "3", "--class-balanced", "--score-epochs", str(warmup)
    )
    selection, *epochs = metrics
    assert selection["scores"] == "a scoring pass at the end of the warm-up" and selection["scoring_seconds"] == 0
    assert [r["samples"] for r in epochs] == [POOL] * warmup + [112] * (3 - warmup)
    assert ("scoring_pass_seconds" in epochs[warmup]) == (not spec.startswith("forgetting"))
    kept = load_indices(tmp_path / "run" / "kept.npy", 512)
    scores, _ = load_scores(tmp_path / "run" / "scores.npz")
    held_out = load_indices(tmp_path / "run" / "val_ids.npy", 512)
    assert len(kept) == 112 and not set(kept.tolist()) & set(held_out.tolist())
    pool = torch.tensor(sorted(set(range(512)) - set(held_out.tolist())))
    if spec.startswith("el2n"):  # the hardest quarter of each class by the clean EL2N at the end of the warm-up
        assert scores["el2n"][kept].mean() > scores["el2n"][pool].mean()
        assert torch.isnan(scores["el2n"][held_out]).all()  # the held-out samples are not even scored
    if spec.startswith("deepfool"):  # the quarter of each class nearest the boundary
        assert scores["deepfool"][kept].mean() < scores["deepfool"][pool].mean()
        assert torch.isnan(scores["deepfool"][held_out]).all()
    if spec.startswith("low+high"):  # both ends of each class by the adversarial loss: the pool's extremes too
        loss = scores["adv_loss"][pool]
        assert {int(pool[loss.argmax()]), int(pool[loss.argmin()])} <= set(kept.tolist())
    if spec.startswith("adv_loss"):
        assert (scores["adv_loss"][kept] >= scores["adv_loss"][kept].min()).all() and "loss" not in scores


@needs_fashion
def test_train_with_forgetting_scores_of_an_earlier_run(tmp_path, full_run):
    metrics, _ = train_run(
        tmp_path / "run", "--prune", "forgetting:0.5", "--scores", str(full_run / "train_scores.npz")
    )
    assert metrics[0]["kept"] == 224 and metrics[0]["scores_file"].endswith("train_scores.npz")


@needs_fashion
def test_score_command_then_ccs(tmp_path):
    scores = tmp_path / "scores.npz"
    argv = [
        "score",
        "--limit",
        "512",
        "--warmup-epochs",
        "1",
        "--steps",
        "1",
        "--batch-size",
        "64",
        "--out",
        str(scores),
    ]
    assert main(argv) == 0
    loaded, meta = load_scores(scores)
    assert {"el2n", "adv_el2n", "grand", "forgetting"} <= set(loaded) and meta["seconds"] > 0
    metrics, _ = train_run(tmp_path / "run", "--prune", "ccs:0.3", "--scores", str(scores), "--class-balanced")
    assert metrics[0]["kept"] == 134 and metrics[0]["scoring_seconds"] == meta["seconds"]


@needs_fashion
def test_score_command_from_checkpoints(tmp_path, full_run):
    out = tmp_path / "ckpt.npz"
    argv = [
        "score",
        "--limit",
        "512",
        "--checkpoint",
        str(full_run / "last.pt"),
        str(full_run / "best.pt"),
        "--score-attack",
        "pgd",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    loaded, meta = load_scores(out)
    assert len(loaded["adv_loss"]) == 512 and (loaded["adv_loss"] > loaded["loss"]).float().mean() > 0.9
    assert len(meta["checkpoints"]) == 2


def test_score_command_names_its_own_flag_when_refusing(tmp_path, capsys):
    assert main(["score", "--warmup-epochs", "0", "--out", str(tmp_path / "s.npz")]) == 2
    assert "--warmup-epochs must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()


@needs_fashion
@pytest.mark.parametrize("spec", ["dynamic:0.5", "keep-hard:0.5"])
def test_train_with_a_dynamic_spec(tmp_path, spec):
    metrics, result = train_run(tmp_path / "run", "--prune", spec, "--epochs", "3")
    epochs = metrics[1:]
    if spec.startswith("dynamic"):
        assert epochs[0]["samples"] == POOL and epochs[1]["samples"] < POOL and epochs[2]["samples"] == POOL
    else:
        assert [r["samples"] for r in epochs] == [224, 224, 224]
    assert result["prune"] == spec


@needs_fashion
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prune", "bogus:0.2"], "unknown method 'bogus'"),
        (["--prune", "random:1.5"], "the kept fraction must be in (0, 1], got 1.5"),
        (["--prune", "random:0.5", "--scores", "s.npz"], "--scores is read by a score-based --prune"),
        (["--scores", "s.npz"], "--scores is read by a score-based --prune"),
        (["--prune", "el2n:0.5", "--scores", "missing.npz"], "no scores file at missing.npz"),
        (["--prune", "dynamic:0.5", "--scores", "s.npz"], "uses the training losses, not --scores"),
        (["--prune", "forgetting:0.5"], "needs at least 2 warm-up epochs (--score-epochs 2), got 1"),
        (["--val-n", "512"], "--val-n must be in [0, 512)"),
        (["--prune", "ccs:0.5", "--score-epochs", "2"], "--score-epochs must be >= 1 and below --epochs (2)"),
    ],
)
def test_train_refuses_bad_prune_options(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *BASE, "--out", "run", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@needs_fashion
def test_scores_of_other_data_are_refused(tmp_path, full_run, capsys):
    argv = [
        "train",
        *BASE,
        "--limit",
        "256",
        "--out",
        str(tmp_path / "run"),
        "--prune",
        "forgetting:0.5",
        "--scores",
        str(full_run / "train_scores.npz"),
    ]
    assert main(argv) == 2
    assert "the scores cover 512 samples but the training set has 256" in capsys.readouterr().err


def test_a_short_last_batch_moves_the_weights_in_proportion_to_its_samples(tmp_path, fashion):  # noqa: F811
    """Pruned subsets leave short last batches: a batch of 1 must not step as hard as a full one."""
    train, _ = fashion
    x, y, ids = next(iter(loader(train)))
    deltas = []
    for batch_size in (None, 64):
        t = trainer(tmp_path, weight_decay=0.0, lr_schedule="constant", steps=0)
        before = [p.detach().clone() for p in t.model.parameters()]
        timing = {"attack": 0.0, "update": 0.0, "scoring": 0.0}
        t.step(
            x[:1],
            y[:1],
            ids[:1],
            generator=torch.Generator().manual_seed(0),
            weights=None,
            batch_size=batch_size,
            observers=[],
            timing=timing,
            epoch=0,
        )
        deltas.append(
            torch.cat([(p.detach() - b).flatten() for p, b in zip(t.model.parameters(), before, strict=True)])
        )
    assert deltas[0].abs().max() > 0
    assert torch.allclose(deltas[1] * 64, deltas[0], rtol=1e-2, atol=2e-6)  # float32 differences of weights
