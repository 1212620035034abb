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


def _training_data(args: argparse.Namespace):
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


class RunFactory:
    """Builds this command's models, loaders and trainers from its options, so that the main run,
    the warm-up runs of a scoring pass and `advprune score` all train the same way."""

    def __init__(self, args: argparse.Namespace, data) -> None:
        import torch

        self.args, self.data = args, data
        self.model_name = args.model or DEFAULT_MODEL[args.dataset]
        self.channels = data.images.shape[3]
        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.meta = {"model": self.model_name, "num_classes": data.num_classes, "in_channels": self.channels,
                     "dataset": args.dataset, "eps": args.eps, "attack": args.attack}  # fmt: skip

    def model(self, seed: int):
        import torch

        from advprune import models

        torch.manual_seed(seed)  # the initial weights follow the seed
        return models.create(self.model_name, self.data.num_classes, **_model_kwargs(self.model_name, self.channels))

    def loader(self, out: Path | None, *, indices=None, seed: int):
        from advprune.data import make_loader

        source = self.data if self.args.backend == "memory" or out is None else _beton_for(out, self.data)
        backend = self.args.backend if out is not None else "memory"
        return make_loader(source, backend=backend, batch_size=self.args.batch_size, device=self.device, seed=seed,
                           indices=indices)  # fmt: skip

    def trainer(self, model, *, epochs: int, out: Path | None, seed: int, quiet: bool, **hooks):
        from advprune.train import Trainer

        a = self.args
        return Trainer(
            model, attack=a.attack, eps=a.eps, step_size=a.step_size, steps=a.steps, epochs=epochs, lr=a.lr,
            lr_schedule=a.lr_schedule, amp=None if a.amp == "none" else a.amp, device=self.device, out_dir=out,
            seed=seed, quiet=quiet, meta=self.meta, **hooks,
        )  # fmt: skip

    def warmup_scores(self, epochs: int, seeds: int, attack: str):
        """Scores averaged over `seeds` short runs of `epochs` epochs on all the data."""
        from advprune.prune_setup import warmup_scores

        if epochs < 1:
            raise UsageError(f"--score-epochs must be >= 1, got {epochs}")

        def train_briefly(seed: int, tracker):
            run_seed = self.args.seed + 1000 * (seed + 1)
            trainer = self.trainer(self.model(run_seed), epochs=epochs, out=None, seed=run_seed, quiet=True,
                                   trackers=[tracker])  # fmt: skip
            return trainer.fit(self.loader(None, seed=run_seed)).model

        return warmup_scores(train_briefly, self.data, seeds=seeds, attack=attack, eps=self.args.eps,
                             device=self.device)  # fmt: skip


def _pruning(args: argparse.Namespace, factory: RunFactory, out: Path):
    """(kept ids or None, dynamic pruner or None, the record of the selection for metrics.jsonl)."""
    import torch

    from advprune.prune_setup import Stopwatch, dynamic_pruner, static_indices, warmup_selector
    from advprune.pruning import load_indices, parse_spec, save_indices
    from advprune.scores import load_scores, save_scores

    if args.prune is None:
        if args.scores is not None:
            raise UsageError("--scores is read by a score-based --prune (el2n:0.4, ccs:0.3, forgetting:0.5)")
        return None, None, None
    spec = parse_spec(args.prune)
    n = len(factory.data)
    record = {"phase": "pruning", "prune": args.prune, "scoring_seconds": 0.0}
    if spec.is_dynamic:
        if args.scores is not None:
            raise UsageError(f"--prune {args.prune} uses the training losses, not --scores")
        return None, dynamic_pruner(spec, n, args.epochs, seed=args.seed), record
    if args.scores is not None and not spec.needs_scores:
        raise UsageError(f"--scores is read by a score-based --prune (el2n:0.4, ccs:0.3), not by {spec.method}")
    kept_file = out / "kept.npy"
    if args.resume and kept_file.is_file():
        return load_indices(kept_file, n), None, None  # the selection of the run being resumed
    labels = torch.from_numpy(factory.data.labels.astype("int64"))
    if spec.needs_scores and args.scores is None and not args.score_pass:
        if not 1 <= args.score_epochs < args.epochs:
            raise UsageError(f"--score-epochs must be >= 1 and below --epochs ({args.epochs}), got {args.score_epochs}")
        selector = warmup_selector(spec, n, labels, warmup_epochs=args.score_epochs,
                                   class_balanced=args.class_balanced, seed=args.seed)  # fmt: skip
        return None, selector, {**record, "scores": "the training step"}
    scores = None
    if spec.needs_scores and args.scores is not None:
        scores, scores_meta = load_scores(args.scores)
        record.update(scores_file=str(args.scores), scoring_seconds=float(scores_meta.get("seconds", 0.0)))
    elif spec.needs_scores:
        with Stopwatch() as watch:
            scores = factory.warmup_scores(args.score_epochs, args.score_seeds, args.score_attack)
        save_scores(out / "scores.npz", scores, {"seconds": watch.seconds, "warmup_epochs": args.score_epochs,
                                                   "seeds": args.score_seeds, "attack": args.score_attack})  # fmt: skip
        record.update(scores_file=str(out / "scores.npz"), scoring_seconds=watch.seconds)
    indices = static_indices(spec, n, labels, scores=scores, class_balanced=args.class_balanced, seed=args.seed)
    save_indices(kept_file, indices)
    record["kept"] = len(indices)
    return indices, None, record


def train(args: argparse.Namespace) -> None:
    """PGD (or FGSM-RS, TRADES, clean) training, optionally on pruned data, then clean and PGD-20 accuracy."""
    from advprune.evaluate import evaluate, format_result
    from advprune.pruning import save_indices
    from advprune.scores import ForgettingTracker, save_scores

    out = Path(args.out)
    if (out / "last.pt").exists() and not args.resume:
        raise UsageError(f"{out} holds a run already: pass --resume to continue it, or choose another --out")
    started = time.perf_counter()
    data, test = _training_data(args)
    factory = RunFactory(args, data)
    indices, pruner, record = _pruning(args, factory, out)
    forgetting = ForgettingTracker(len(data))
    trainer = factory.trainer(factory.model(args.seed), epochs=args.epochs, out=out, seed=args.seed, quiet=args.quiet,
                              pruner=pruner, trackers=[forgetting])  # fmt: skip
    if record is not None and not args.resume:
        trainer.log(record)
    trainer.fit(factory.loader(out, indices=indices, seed=args.seed), _tensors(test, args.val_n), resume=args.resume)
    save_scores(out / "train_scores.npz", {"forgetting": forgetting.scores()},
                {"source": "training run", "epochs": args.epochs, "prune": args.prune})  # fmt: skip
    if getattr(pruner, "kept", None) is not None:  # selected in the run from the step's scores
        save_indices(out / "kept.npy", pruner.kept)
        save_scores(out / "scores.npz", pruner.scores(), {"source": "training step", "epochs": args.score_epochs})
    x_test, y_test = _tensors(test, args.eval_n)
    result = evaluate(trainer.model, x_test, y_test, attack="pgd", eps=args.eps, steps=20, progress=not args.quiet)
    result["wall_seconds"] = time.perf_counter() - started
    result["prune"] = args.prune
    if record is not None:
        result["scoring_seconds"] = record["scoring_seconds"]
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    print(format_result(result))


def _beton_for(out: Path, data) -> Path:
    from advprune.data import write_beton

    path = out / "train.beton"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_beton(path, data.images, data.labels)
    return path


# -------------------------------------------------------------------- score


def score_command(args: argparse.Namespace) -> None:
    """Per-sample scores of the training set, from checkpoints or short warm-up runs, saved for --scores."""
    from advprune.checkpoint import load_checkpoint
    from advprune.prune_setup import Stopwatch, score_model
    from advprune.scores import average_scores, save_scores

    out = Path(args.out)
    if out.suffix != ".npz":
        raise UsageError(f"--out must name a .npz file, got {out}")
    if bool(args.checkpoint) == (args.warmup_epochs is not None):
        raise UsageError("score from --checkpoint FILE [FILE ...] or from --warmup-epochs W runs (one of the two)")
    data, _ = _training_data(args)
    with Stopwatch() as watch:
        if args.checkpoint:
            runs = []
            for path in args.checkpoint:
                state = load_checkpoint(path)
                meta = state.get("meta") or {}
                if "model" not in meta:
                    raise UsageError(f"{path} does not say which model it holds (written by an older advprune?)")
                args.model, args.eps = meta["model"], args.eps if args.eps is not None else meta.get("eps")
                if args.attack_for_scores != "none" and args.eps is None:
                    raise UsageError("the checkpoint records no eps: pass --eps")
                factory = RunFactory(args, data)
                model = factory.model(args.seed)
                model.load_state_dict(state["model"])
                runs.append(score_model(model, data, attack=args.attack_for_scores, eps=args.eps or 0.0,
                                        steps=args.score_steps, device=factory.device, seed=args.seed))  # fmt: skip
            scores = average_scores(runs)
        else:
            args.eps = 0.1 if args.eps is None else args.eps
            factory = RunFactory(args, data)
            scores = factory.warmup_scores(args.warmup_epochs, args.seeds, args.attack_for_scores)
    meta = {"seconds": watch.seconds, "dataset": args.dataset, "limit": args.limit, "attack": args.attack_for_scores,
            "checkpoints": args.checkpoint, "warmup_epochs": args.warmup_epochs, "seeds": args.seeds}  # fmt: skip
    save_scores(out, scores, meta)
    print(f"wrote {out}: {', '.join(sorted(scores))} for {len(data)} samples in {watch.seconds:.1f} s")


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


def _add_training_options(p: argparse.ArgumentParser, eps_default: float | None = 0.1) -> None:
    """The options of how a model is trained: shared by train and score (its warm-up runs)."""
    from advprune.models import MODELS
    from advprune.train import OBJECTIVES

    p.add_argument("--model", choices=tuple(MODELS), default=None, help="default: small-cnn for 28x28 data")
    p.add_argument("--attack", choices=OBJECTIVES, default="pgd")
    p.add_argument("--eps", type=number, default=eps_default, help="in [0, 1] pixel space; fractions (8/255) work")
    p.add_argument("--step-size", type=number, default=0.025)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=number, default=0.05)
    p.add_argument("--lr-schedule", choices=("piecewise", "cosine", "onecycle", "constant"), default="cosine")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto")
    p.add_argument("--backend", choices=("memory", "ffcv"), default="memory")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    from advprune.data.readers import DATASETS

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
    _add_training_options(t)
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--limit", type=int, default=None, help="train on the first N training samples")
    t.add_argument(
        "--prune",
        default=None,
        metavar="SPEC",
        help="random:0.2 | balanced:0.2 | el2n:0.4 | ccs:0.3 | forgetting:0.5 | dynamic:0.5 | keep-hard:0.5",
    )
    t.add_argument("--scores", default=None, metavar="FILE", help="scores (.npz from advprune score) for --prune")
    t.add_argument("--class-balanced", action="store_true", help="apply a score-based selector inside each class")
    t.add_argument(
        "--score-epochs",
        type=int,
        default=1,
        help="without --scores: the first epochs, on all data, whose training steps score the samples",
    )
    t.add_argument(
        "--score-pass",
        action="store_true",
        help="score with separate warm-up runs and a scoring pass instead (any score, e.g. grand)",
    )
    t.add_argument("--score-seeds", type=int, default=1, help="warm-up runs whose scores are averaged (--score-pass)")
    t.add_argument(
        "--score-attack",
        choices=("none", "fgsm", "pgd"),
        default="fgsm",
        help="adversarial inputs scored besides the clean ones (adv_el2n, ...)",
    )
    t.add_argument("--val-n", type=int, default=500, help="held-out test samples checked after each epoch")
    t.add_argument("--eval-n", type=int, default=1000, help="test samples of the final evaluation")
    t.add_argument("--out", required=False, default=None, help="the run folder (checkpoints, metrics.jsonl)")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(run=train)

    sc = commands.add_parser("score", help="per-sample scores of the training set (for --prune ... --scores)")
    sc.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    sc.add_argument("--data-dir", default=None)
    sc.add_argument("--limit", type=int, default=None, help="score the first N training samples")
    sc.add_argument("--checkpoint", nargs="+", default=None, help="checkpoints whose scores are averaged")
    sc.add_argument("--warmup-epochs", type=int, default=None, help="or: train fresh models W epochs, then score")
    sc.add_argument("--seeds", type=int, default=1, help="warm-up runs whose scores are averaged")
    sc.add_argument(
        "--score-attack",
        dest="attack_for_scores",
        choices=("none", "fgsm", "pgd"),
        default="fgsm",
        help="adversarial inputs scored besides the clean ones (adv_el2n, ...)",
    )
    sc.add_argument("--score-steps", type=int, default=2, help="PGD steps of --attack pgd")
    sc.add_argument("--out", required=True, help="the .npz file to write (metadata beside it as .json)")
    _add_training_options(sc, eps_default=None)
    sc.set_defaults(run=score_command)

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
