"""The body of one rank in the distributed tests (torch.multiprocessing.spawn, gloo on the CPU): it trains
a small CNN on synthetic data with a pruner (or perturbation memory: kind "reuse") and saves what the
tests compare (the ids it served each epoch, the ids every observer saw, the pruner's state, the memory,
the final weights, the DDP all-reduces)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from advprune import models
from advprune.data import from_arrays, make_loader
from advprune.distributed import World
from advprune.pruning import DynamicPruner, PrunerBase, WarmupSelector, select
from advprune.train import AttackConfig, OptimConfig, RunConfig, Trainer

NUM_SAMPLES, IMAGE = 256, 12


def synthetic_data():
    """Images whose class follows a fixed linear function of the pixels: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (NUM_SAMPLES, IMAGE, IMAGE, 1), generator=g, dtype=torch.uint8)
    w = torch.randn(IMAGE * IMAGE, 4, generator=g)
    labels = ((images.float().flatten(1) / 255 - 0.5) @ w).argmax(1)
    return from_arrays(images.numpy(), labels.numpy())


class Recorder(PrunerBase):
    """A tracker of the ids every observer sees (all ranks' ids under torch.distributed), by epoch."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []
        self.losses: list[torch.Tensor] = []

    def on_batch(self, ids, scores, adv_loss) -> None:
        self.seen.append(ids.cpu().clone())
        self.losses.append(adv_loss.cpu().clone())


def make_pruner(kind: str):
    if kind == "dynamic":
        return DynamicPruner(NUM_SAMPLES, epochs=3, ratio=0.5)
    if kind == "ccs":
        return WarmupSelector(NUM_SAMPLES, 0.25, "ccs", "el2n", warmup_epochs=1)
    return None


class StaticRandom(PrunerBase):
    def epoch_indices(self, epoch, num_samples=None):
        return select(NUM_SAMPLES, 0.5, "random", seed=epoch)


def run(rank: int, world_size: int, port: int, out: str, kind: str, batch_size: int) -> None:
    """One rank (world_size 1: a plain process without torch.distributed)."""
    if world_size > 1:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(rank),
        )
    torch.set_num_threads(1)
    world = World.from_environment(timeout_s=60)
    columns = world.gather_columns(rank_columns(rank))
    torch.manual_seed(0)
    model = models.create("small-cnn", 4, image_size=(IMAGE, IMAGE))
    pruner = StaticRandom() if kind == "random" else make_pruner(kind)
    recorder = Recorder()
    served: list[list[int]] = []
    attack_checks: list[bool] = []  # per attack: no weight gradient touched, no all-reduce
    loader = make_loader(synthetic_data(), batch_size=batch_size, seed=0)
    trainer = Trainer(
        model,
        AttackConfig("pgd", eps=0.1, steps=2, reuse="int8" if kind == "reuse" else None),
        epochs=3,
        optim=OptimConfig(lr=0.05, schedule="cosine"),
        run=RunConfig(device="cpu", amp=None, quiet=True, world=world, keyed_noise=True),
        pruner=pruner,
        trackers=[recorder],
    )
    allreduces = []
    if world.distributed:
        trainer.step.train_forward.register_comm_hook(allreduces, _counting_allreduce)
    perturb = trainer.step.perturb

    def checked_perturb(x, y, generator, start=None):
        before = len(allreduces)
        grads = [p.grad.clone() if p.grad is not None else None for p in trainer.model.parameters()]
        x_adv = perturb(x, y, generator, start)
        untouched = all(
            (g is None and p.grad is None) or (g is not None and torch.equal(g, p.grad))
            for g, p in zip(grads, trainer.model.parameters(), strict=True)
        )
        attack_checks.append(untouched and len(allreduces) == before)
        return x_adv

    trainer.step.perturb = checked_perturb
    original_iter = type(loader).__iter__

    class Watched(type(loader)):
        def __iter__(self):
            served.append([])
            for batch in original_iter(self):
                served[-1].extend(batch[2].tolist())
                yield batch

    loader.__class__ = Watched
    trainer.fit(loader)
    torch.save(
        {
            "served": served,
            "seen": recorder.seen,
            "losses": recorder.losses,
            "columns": columns,
            "weights": trainer.model.state_dict(),
            "pruner": pruner.state_dict() if pruner is not None else None,
            "memory": trainer.step.memory.state_dict() if trainer.step.memory is not None else None,
            "allreduces": len(allreduces),
            "attack_checks": attack_checks,
        },
        Path(out) / f"rank{rank}.pt",
    )
    world.close()


def rank_columns(rank: int) -> list[torch.Tensor]:
    """Three samples' worth of per-sample results of one rank, in the dtypes a step gathers."""
    ids = torch.tensor([2**40 + 7, 3, 255]) + rank
    return [
        ids,
        torch.tensor([0.1, -2.5, 1e-30]) * (rank + 1),
        ids % 2 == 0,
        torch.full((3,), 1.5 + rank, dtype=torch.bfloat16),
    ]


def _counting_allreduce(state: list, bucket):
    """DDP's default gradient all-reduce, counted."""
    import torch.distributed as dist

    state.append(1)
    tensor = bucket.buffer().div_(dist.get_world_size())
    return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])
