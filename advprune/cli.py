"""The `advprune` command: prepare, train, eval. Bad input prints one line saying what was
wrong and how to fix it, and exits 2, without a traceback."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path


class UsageError(Exception):
    """A mistake of the caller: printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and exit code 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def number(text: str) -> float:
    """A float or a fraction such as 8/255."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (write 0.03 or 8/255)") from None


# ------------------------------------------------------------------ prepare


def prepare(args: argparse.Namespace) -> None:
    """Writes a dataset split as an FFCV .beton (image, label, sample id)."""
    from advprune.data import write_beton
    from advprune.data.readers import read_dataset

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists: pass --force to overwrite it")
    data = read_dataset(args.dataset, args.data_dir, train=args.split == "train")
    write_beton(out, data.images, data.labels, force=args.force)
    print(f"wrote {out}: {len(data)} {args.split} samples of {args.dataset}, images {list(data.images.shape[1:])}")


# -------------------------------------------------------------------- train

DEFAULT_MODEL = {"fashion-mnist": "small-cnn", "mnist": "small-cnn", "cifar10": "preact-resnet18",
                 "cifar100": "preact-resnet18", "folder": "preact-resnet18"}  # fmt: skip


def _model_kwargs(name: str, channels: int) -> dict:
    """The 32x32 models take RGB by default, the small CNN grayscale: say so when the data differ."""
    return {} if name == "small-cnn" or channels == 3 else {"in_channels": channels}


def _tensors(data, n: int | None = None):
    import torch

    images = data.images if n is None else data.images[:n]
    labels = data.labels if n is None else data.labels[:n]
    x = torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float().div_(255)
    return x, torch.from_numpy(labels.copy())


def train(args: argparse.Namespace) -> None:
    """PGD (or FGSM-RS, TRADES, clean) training, then clean and PGD-20 accuracy on the test set."""
    import torch

    from advprune import models
    from advprune.data import from_arrays, make_loader
    from advprune.data.readers import read_dataset
    from advprune.evaluate import evaluate, format_result
    from advprune.train import Trainer

    out = Path(args.out)
    if (out / "last.pt").exists() and not args.resume:
        raise UsageError(f"{out} holds a run already: pass --resume to continue it, or choose another --out")
    started = time.perf_counter()
    data = read_dataset(args.dataset, args.data_dir, train=True)
    test = read_dataset(args.dataset, args.data_dir, train=False)
    if args.limit is not None:
        if args.limit < 1:
            raise UsageError(f"--limit must be >= 1, got {args.limit}")
        data = from_arrays(data.images[: args.limit], data.labels[: args.limit], data.classes)
    model_name = args.model or DEFAULT_MODEL[args.dataset]
    channels = data.images.shape[3]
    model = models.create(model_name, data.num_classes, **_model_kwargs(model_name, channels))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    loader = make_loader(
        data if args.backend == "memory" else _beton_for(out, data),
        backend=args.backend, batch_size=args.batch_size, device=device, seed=args.seed,
    )  # fmt: skip
    meta = {"model": model_name, "num_classes": data.num_classes, "in_channels": channels, "dataset": args.dataset,
            "eps": args.eps, "attack": args.attack}  # fmt: skip
    trainer = Trainer(
        model, attack=args.attack, eps=args.eps, step_size=args.step_size, steps=args.steps, epochs=args.epochs,
        lr=args.lr, lr_schedule=args.lr_schedule, amp=None if args.amp == "none" else args.amp, device=device,
        out_dir=out, seed=args.seed, quiet=args.quiet, meta=meta,
    )  # fmt: skip
    trainer.fit(loader, _tensors(test, args.val_n), resume=args.resume)
    x_test, y_test = _tensors(test, args.eval_n)
    result = evaluate(trainer.model, x_test, y_test, attack="pgd", eps=args.eps, steps=20, progress=not args.quiet)
    result["wall_seconds"] = time.perf_counter() - started
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    print(format_result(result))


def _beton_for(out: Path, data) -> Path:
    from advprune.data import write_beton

    path = out / "train.beton"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_beton(path, data.images, data.labels)
    return path


# --------------------------------------------------------------------- eval


def eval_command(args: argparse.Namespace) -> None:
    """Clean and PGD / AutoAttack accuracy of a checkpoint on the test set."""
    from advprune import models
    from advprune.checkpoint import load_checkpoint
    from advprune.data.readers import read_dataset
    from advprune.evaluate import evaluate, format_result

    state = load_checkpoint(args.checkpoint)
    meta = state.get("meta") or {}
    if "model" not in meta:
        raise UsageError(f"{args.checkpoint} does not say which model it holds (written by an older advprune?)")
    model = models.create(
        meta["model"], meta["num_classes"], **_model_kwargs(meta["model"], meta.get("in_channels", 3))
    )
    model.load_state_dict(state["model"])
    test = read_dataset(args.dataset or meta.get("dataset"), args.data_dir, train=False)
    eps = args.eps if args.eps is not None else meta.get("eps")
    if eps is None:
        raise UsageError("the checkpoint records no eps: pass --eps")
    x, y = _tensors(test, args.n)
    result = evaluate(model, x, y, attack=args.attack, eps=eps, steps=args.steps, restarts=args.restarts,
                      progress=not args.quiet)  # fmt: skip
    print(format_result(result))


# ------------------------------------------------------------------- parser


def load_config(path: str) -> dict:
    """Options from a TOML or YAML file (keys as the long flags, - or _)."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"no config file at {file}")
    text = file.read_text()
    if file.suffix == ".toml":
        import tomllib

        config = tomllib.loads(text)
    elif file.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UsageError("reading YAML needs pyyaml: pip install pyyaml, or write the config as TOML") from None
        config = yaml.safe_load(text) or {}
    else:
        raise UsageError(f"{file}: a config file must end in .toml, .yaml or .yml")
    if not isinstance(config, dict):
        raise UsageError(f"{file} must hold a table of options")
    return {k.replace("-", "_"): v for k, v in config.items()}


def build_parser() -> argparse.ArgumentParser:
    from advprune.data.readers import DATASETS
    from advprune.models import MODELS
    from advprune.train import OBJECTIVES

    parser = OneLineParser(prog="advprune", description="Fast adversarial training on pruned data.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    parser.subcommands = commands.choices  # name -> its parser, for --config defaults

    p = commands.add_parser("prepare", help="write a dataset as an FFCV .beton (image, label, sample id)")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data-dir", default=None, help="the dataset folder (fashion-mnist: the Debian package's)")
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--out", required=True, help="the .beton file to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(run=prepare)

    t = commands.add_parser("train", help="adversarial training, then clean and PGD-20 accuracy")
    t.add_argument("--config", default=None, help="a TOML or YAML file of options; flags override it")
    t.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    t.add_argument("--data-dir", default=None)
    t.add_argument("--model", choices=tuple(MODELS), default=None, help="default: small-cnn for 28x28 data")
    t.add_argument("--attack", choices=OBJECTIVES, default="pgd")
    t.add_argument("--eps", type=number, default=0.1, help="in [0, 1] pixel space; fractions such as 8/255 work")
    t.add_argument("--step-size", type=number, default=0.025)
    t.add_argument("--steps", type=int, default=3)
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=number, default=0.05)
    t.add_argument("--lr-schedule", choices=("piecewise", "cosine", "onecycle", "constant"), default="cosine")
    t.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto")
    t.add_argument("--backend", choices=("memory", "ffcv"), default="memory")
    t.add_argument("--limit", type=int, default=None, help="train on the first N training samples")
    t.add_argument("--val-n", type=int, default=500, help="held-out test samples checked after each epoch")
    t.add_argument("--eval-n", type=int, default=1000, help="test samples of the final evaluation")
    t.add_argument("--device", default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=False, default=None, help="the run folder (checkpoints, metrics.jsonl)")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(run=train)

    e = commands.add_parser("eval", help="clean and robust accuracy of a checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--dataset", choices=DATASETS, default=None, help="default: the one it was trained on")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--attack", choices=("pgd", "autoattack", "clean"), default="pgd")
    e.add_argument("--eps", type=number, default=None, help="default: the training eps")
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--restarts", type=int, default=1)
    e.add_argument("--n", type=int, default=1000)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(run=eval_command)
    return parser


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags over the --config file over the defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        config = load_config(args.config)
        sub = parser.subcommands[args.command]
        known = {a.dest for a in sub._actions}
        unknown = sorted(set(config) - known)
        if unknown:
            raise UsageError(f"{args.config}: unknown options {', '.join(unknown)}")
        sub.set_defaults(**config)
        args = parser.parse_args(argv)
    if args.command == "train" and args.out is None:
        raise UsageError("train needs --out DIR (the run folder)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(argv)
    except SystemExit as exc:  # argparse: --help (0) or its one-line error (2)
        return int(exc.code or 0)
    except UsageError as exc:
        print(f"advprune: error: {exc}", file=sys.stderr)
        return 2
    try:
        args.run(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError) as exc:
        print(f"advprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
