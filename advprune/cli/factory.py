"""From the command's options to the run's parts: the training data with its held-out validation
ids, models fitted to the data (channels, size, normalisation statistics), loaders and trainers, so
that the main run, the warm-up runs of a scoring pass and `advprune score` all train the same way."""

from __future__ import annotations

import argparse
from pathlib import Path

from advprune.cli.common import UsageError, resolve_device

DEFAULT_MODEL = {
    "fashion-mnist": "small-cnn",
    "mnist": "small-cnn",
    "cifar10": "preact-resnet18",
    "cifar100": "preact-resnet18",
    "folder": "preact-resnet18",
}
VAL_SEED = 0  # the held-out ids depend on the data alone: every run on the same data validates on the same


def training_data(args: argparse.Namespace):
    """The training set (its first --limit samples) and the test set."""
    from advprune.data import from_arrays
    from advprune.data.readers import read_dataset

    data = read_dataset(args.dataset, args.data_dir, train=True)
    test = read_dataset(args.dataset, args.data_dir, train=False)
    if args.limit is not None:
        if args.limit < 1:
            raise UsageError(f"--limit must be >= 1, got {args.limit}")
        data = from_arrays(data.images[: args.limit], data.labels[: args.limit], data.classes)
    return data, test


def training_configs(args: argparse.Namespace):
    """The Trainer's (attack, optimiser, validation) options from the command's flags, and its batch size
    checked: UsageError naming a bad value. `advprune train` asks before it makes or locks the run folder,
    so that a mistyped flag leaves nothing behind."""
    from advprune.train import AttackConfig, OptimConfig, ValidationConfig

    a = args
    if isinstance(a.batch_size, bool) or not isinstance(a.batch_size, int) or a.batch_size < 1:
        raise UsageError(f"--batch-size must be an int >= 1, got {a.batch_size!r}")
    try:
        attack = AttackConfig(
            a.attack, a.eps, a.step_size, a.steps, a.norm, reuse=a.reuse_perturbation, reuse_refresh=a.reuse_refresh,
            eps_warmup=a.eps_warmup,
        )  # fmt: skip
        optim = OptimConfig(lr=a.lr, schedule=a.lr_schedule, weight_decay=a.weight_decay, ema=getattr(a, "ema", None))
        validation = ValidationConfig(steps=getattr(a, "val_steps", 10), every=getattr(a, "val_every", 1))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if attack.reuse is not None and a.backend != "memory":
        raise UsageError("--reuse-perturbation needs --backend memory: ffcv does not report each crop and flip")
    return attack, optim, validation


def check_training_options(args: argparse.Namespace) -> None:
    """Everything of `advprune train`'s options that can be checked before the data is read or the run folder
    made (the sweep checks every run with it before the first starts): UsageError or ValueError naming it."""
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    training_configs(args)
    if args.prune is not None:
        from advprune.pruning import parse_spec

        parse_spec(args.prune)


class RunFactory:
    """Builds this command's models, loaders and trainers from its options. The training set is split
    once: val_ids (--val-n samples, class-stratified) are held out for validation, pool the rest."""

    def __init__(self, args: argparse.Namespace, data, dataset: str | None = None, world=None) -> None:
        import torch

        from advprune.distributed import World
        from advprune.ids import holdout_split
        from advprune.models import data_kwargs

        self.args, self.data, self.world = args, data, world or World()
        self.model_name = args.model or DEFAULT_MODEL[args.dataset]
        no_device = args.device is None and self.world.distributed
        self.device = self.world.device() if no_device else resolve_device(args.device)
        val_n = getattr(args, "val_n", 0) or 0
        if not 0 <= val_n < len(data):
            raise UsageError(f"--val-n must be in [0, {len(data)}) (training samples left to train on), got {val_n}")
        self.pool, self.val_ids = holdout_split(torch.from_numpy(data.labels), val_n, seed=VAL_SEED)
        self.model_kwargs = data_kwargs(self.model_name, data.images, dataset or args.dataset)
        self.meta = {
            "model": self.model_name,
            "num_classes": data.num_classes,
            "model_kwargs": self.model_kwargs,
            "dataset": args.dataset,
            "eps": args.eps,
            "norm": args.norm,
            "attack": args.attack,
        }

    def model(self, seed: int):
        import torch

        from advprune import models

        torch.manual_seed(seed)  # the initial weights follow the seed
        return models.create(self.model_name, self.data.num_classes, **self.model_kwargs)

    def loader(self, out: Path | None, *, indices=None, seed: int):
        """A loader over `indices` (default: the pool, never the held-out ids); the .beton backend writes
        the training set into the run folder once."""
        from advprune.data import make_loader

        ffcv = self.args.backend == "ffcv" and out is not None
        source = _beton_for(out, self.data, self.world) if ffcv else self.data
        return make_loader(
            source,
            backend="ffcv" if ffcv else "memory",
            batch_size=self.args.batch_size,
            device=self.device,
            seed=seed,
            indices=self.pool if indices is None else indices,
            channels_last=True,
            augment={"auto": None, "on": True, "off": False}[self.args.augment],
        )

    def val(self):
        """The held-out validation tensors, or None with --val-n 0."""
        from advprune.cli.common import tensors

        return tensors(self.data, self.val_ids.numpy()) if len(self.val_ids) else None

    def trainer(self, model, *, epochs: int, out: Path | None, seed: int, quiet: bool, **hooks):
        from advprune.train import RunConfig, Trainer

        a = self.args
        attack, optim, validation = training_configs(a)
        return Trainer(
            model,
            attack,
            epochs=epochs,
            optim=optim,
            run=RunConfig(
                world=self.world,
                sync_batchnorm=getattr(a, "sync_batchnorm", False),
                keyed_noise=True if getattr(a, "keyed_noise", False) else None,
                out_dir=out,
                seed=seed,
                amp=None if a.amp == "none" else a.amp,
                device=self.device,
                quiet=quiet,
                meta=self.meta,
                compile=getattr(a, "compile", False),
                tune_cpu_allocator=not getattr(a, "default_malloc", False),
            ),
            validation=validation,
            **hooks,
        )

    def warmup_scores(self, epochs: int, seeds: int, attack: str, deepfool: bool = False):
        """Scores averaged over `seeds` short runs of `epochs` epochs on the pool (deepfool: DeepFool distances
        too)."""
        from advprune.prune_setup import warmup_scores

        if epochs < 1:
            raise UsageError(f"--score-epochs must be >= 1, got {epochs}")

        def train_briefly(seed: int, tracker):
            run_seed = self.args.seed + 1000 * (seed + 1)
            trainer = self.trainer(
                self.model(run_seed), epochs=epochs, out=None, seed=run_seed, quiet=True, trackers=[tracker]
            )
            return trainer.fit(self.loader(None, seed=run_seed)).model

        return warmup_scores(
            train_briefly,
            self.data,
            seeds=seeds,
            attack=attack,
            eps=self.args.eps,
            device=self.device,
            deepfool=deepfool,
        )


def _beton_for(out: Path, data, world) -> Path:
    """The run folder's train.beton, written once (by rank 0; the other ranks wait for it)."""
    from advprune.data import write_beton

    path = out / "train.beton"
    if world.is_main and not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_beton(path, data.images, data.labels)
    world.barrier()
    return path


def checkpoint_model(path: str | Path, weights: str = "average"):
    """(the model a checkpoint holds, with its weights; the checkpoint's meta, with "weights": which ones).
    weights "average": the weight average where the run kept one (--ema), else the model's own; "raw": the
    model's own. Checkpoints of older advprune versions record no model options: their models are rebuilt
    with the defaults they had."""
    from advprune import models
    from advprune.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    meta = state.get("meta") or {}
    if "model" not in meta:
        raise UsageError(f"{path} does not say which model it holds (written by an older advprune?)")
    kwargs = meta.get("model_kwargs")
    if kwargs is None:  # before model_kwargs: the channels only
        kwargs = {} if meta["model"] == "small-cnn" else {"in_channels": meta.get("in_channels", 3)}
    model = models.create(meta["model"], meta["num_classes"], **kwargs)
    average = state.get("ema")
    if weights == "average" and average is not None:
        model.load_state_dict(average["model"])
        return model, {**meta, "weights": f"average (EMA, decay {average['decay']:g}, {average['updates']} updates)"}
    model.load_state_dict(state["model"])
    return model, {**meta, "weights": "raw"}
