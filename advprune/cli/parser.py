"""The `advprune` command line: subcommands, their options, and --config files under the flags."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from advprune.cli.common import OneLineParser, UsageError, load_config, number

DEFAULT_EPOCHS = 5  # `advprune train --epochs`; the sweep reads it for a [train] table that names none


DEFAULT_MALLOC_HELP = "leave glibc's malloc as it is (no advprune.tune_cpu_allocator), to time as untuned runs did"


def model_name(text: str) -> str:
    """--model: one of advprune's models, or torchvision:NAME for a torchvision classification model."""
    from advprune.models import MODELS, TORCHVISION_PREFIX

    if text.startswith(TORCHVISION_PREFIX):
        from advprune._deps import require

        torchvision = require("torchvision", extra="torchvision", purpose="--model torchvision:NAME")

        name = text.removeprefix(TORCHVISION_PREFIX)
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise argparse.ArgumentTypeError(f"torchvision has no classification model {name!r}")
        return text
    if text not in MODELS:
        raise argparse.ArgumentTypeError(
            f"unknown model {text!r}: choose one of {', '.join(MODELS)} or torchvision:NAME"
        )
    return text


def _add_training_options(p: argparse.ArgumentParser, eps_default: float | None = 0.1) -> None:
    """The options of how a model is trained: shared by train and score (its warm-up runs)."""
    from advprune.models import MODELS
    from advprune.train import OBJECTIVES

    p.add_argument(
        "--model",
        type=model_name,
        default=None,
        metavar="{" + ",".join(MODELS) + ",torchvision:NAME}",
        help="default: small-cnn for 28x28 data, preact-resnet18 otherwise",
    )
    p.add_argument("--attack", choices=OBJECTIVES, default="pgd")
    p.add_argument("--eps", type=number, default=eps_default, help="in [0, 1] pixel space; fractions (8/255) work")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument(
        "--step-size", type=number, default=None, help="default: 1.25 eps for fgsm_rs, eps for n_fgsm, eps/4 otherwise"
    )
    p.add_argument("--steps", type=int, default=3)
    p.add_argument(
        "--reuse-perturbation",
        choices=("int8", "bf16"),
        default=None,
        help="start each sample's attack from its perturbation of the last epoch (ATTA), stored so (memory backend)",
    )
    p.add_argument(
        "--reuse-refresh",
        type=number,
        default=0.0,
        help="with --reuse-perturbation: each sample's chance per epoch of a fresh random start instead",
    )
    p.add_argument(
        "--eps-warmup",
        type=number,
        default=0.0,
        metavar="EPOCHS",
        help="ramp the training attack's eps (and step) linearly from 0 over the first EPOCHS epochs",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=number, default=0.05)
    p.add_argument("--lr-schedule", choices=("piecewise", "cosine", "onecycle", "constant"), default="cosine")
    p.add_argument("--weight-decay", type=number, default=5e-4, help="SGD's L2 penalty (the paper's 5e-4)")
    p.add_argument(
        "--augment",
        choices=("auto", "on", "off"),
        default="auto",
        help="random crop (4-pixel padding) and horizontal flip; auto: for colour images only",
    )
    p.add_argument(
        "--ema",
        type=number,
        default=None,
        metavar="DECAY",
        help="keep an exponential moving average of the weights (e.g. 0.999), which advprune eval evaluates",
    )
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto")
    p.add_argument("--backend", choices=("memory", "ffcv"), default="memory")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when there is one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--default-malloc", action="store_true", help=DEFAULT_MALLOC_HELP)
    p.add_argument("--val-n", type=int, default=500, help="training samples held out for validation, never trained on")


def _add_pruning_options(t: argparse.ArgumentParser) -> None:
    t.add_argument(
        "--prune",
        default=None,
        metavar="SPEC",
        help="random:0.2 | balanced:0.2 | el2n:0.4 | ccs:0.3 | forgetting:0.5 | dynamic:0.5 | keep-hard:0.5 "
        "| resample:0.2 (a fresh random share each epoch)",
    )
    t.add_argument("--scores", default=None, metavar="FILE", help="scores (.npz from advprune score) for --prune")
    t.add_argument("--class-balanced", action="store_true", help="apply a score-based selector inside each class")
    t.add_argument(
        "--score-epochs",
        type=int,
        default=1,
        help="without --scores: the warm-up epochs on all data, then a scoring pass chooses the subset",
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


def _train_parser(commands) -> None:
    from advprune.cli.train_command import train
    from advprune.data.readers import DATASETS

    t = commands.add_parser("train", help="adversarial training, then clean and PGD-20 accuracy on the test set")
    t.add_argument("--config", default=None, help="a TOML or YAML file of options; flags override it")
    t.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    t.add_argument("--data-dir", default=None)
    _add_training_options(t)
    t.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    t.add_argument("--limit", type=int, default=None, help="use the first N training samples (validation included)")
    _add_pruning_options(t)
    t.add_argument("--val-steps", type=int, default=10, help="PGD steps of the per-epoch validation")
    t.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and after the last)")
    t.add_argument("--eval-n", type=int, default=1000, help="test samples of the final evaluation (the first N)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--sync-batchnorm", action="store_true", help="under torchrun: BatchNorm over the global batch")
    t.add_argument(
        "--keyed-noise",
        action="store_true",
        help="random starts by sample id, as under torchrun: one process that matches an N-rank run",
    )
    t.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        help="under torchrun: seconds a rank waits for the others before it fails",
    )
    t.add_argument("--out", required=False, default=None, help="the run folder (checkpoints, metrics.jsonl)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    t.add_argument(
        "--resume-from",
        default=None,
        metavar="CHECKPOINT",
        help="continue the run in --out from this checkpoint instead (e.g. its best.pt)",
    )
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(run=train)


def _score_parser(commands) -> None:
    from advprune.cli.score_command import score_command
    from advprune.data.readers import DATASETS

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
    sc.add_argument("--score-steps", type=int, default=2, help="PGD steps of --score-attack pgd")
    sc.add_argument("--deepfool", action="store_true", help="also each sample's DeepFool distance to the boundary")
    sc.add_argument("--out", required=True, help="the .npz file to write (metadata beside it as .json)")
    _add_training_options(sc, eps_default=None)
    sc.set_defaults(run=score_command)


def _eval_parser(commands) -> None:
    from advprune.cli.eval_command import eval_command
    from advprune.data.readers import DATASETS

    e = commands.add_parser("eval", help="clean and robust accuracy of a checkpoint on the test set")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--dataset", choices=DATASETS, default=None, help="default: the one it was trained on")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--attack", choices=("pgd", "autoattack", "clean"), default="pgd")
    e.add_argument("--eps", type=number, default=None, help="default: the training eps")
    e.add_argument("--norm", choices=("linf", "l2"), default=None, help="default: the training norm")
    e.add_argument("--steps", type=int, default=20, help="PGD steps")
    e.add_argument("--restarts", type=int, default=1, help="PGD restarts (robust only if every restart fails)")
    e.add_argument("--stages", default=None, help="AutoAttack stages, e.g. apgd-ce,apgd-t (default: all four)")
    e.add_argument("--n", type=int, default=1000, help="the first N test samples")
    e.add_argument(
        "--weights",
        choices=("average", "raw"),
        default="average",
        help="average: the weight average where the run kept one (--ema), else the model's own",
    )
    e.add_argument("--batch-size", type=int, default=250, help="250 as the official AutoAttack run")
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when there is one)")
    e.add_argument("--default-malloc", action="store_true", help=DEFAULT_MALLOC_HELP)
    e.add_argument(
        "--contiguous",
        action="store_true",
        help="keep model and images contiguous (default: channels_last for advprune's models, as in training)",
    )
    e.add_argument("--out", default=None, help="also write the result as JSON to this file")
    e.add_argument(
        "--stage-cache",
        default=None,
        help="folder where AutoAttack keeps each finished stage, so that a cut-short evaluation resumes and a "
        "later one of the same model and settings skips the stages it shares (default: autoattack_stages/ beside "
        "--out; none: keep nothing)",
    )
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(run=eval_command)


def _sweep_parsers(commands) -> None:
    from advprune.cli.sweep_command import report_command, sweep_command

    s = commands.add_parser("sweep", help="a resumable grid of (strategy, fraction, seed) runs, results.jsonl")
    s.add_argument("sweep_config", metavar="CONFIG", help="a sweep TOML file, or a preset: paper-cifar10-cpu, ...")
    s.add_argument("--out", default=None, help="the sweep folder (default: sweeps/CONFIG)")
    s.add_argument(
        "--only",
        default=None,
        type=lambda text: [p.strip() for p in text.split(",") if p.strip()],
        help="run only the runs whose names match these comma-separated patterns ('full-*,random-0.2-*'); "
        "several sweep processes may share one folder, each skipping the runs another has started",
    )
    s.add_argument(
        "--no-final",
        action="store_true",
        help="leave the [final] table's evaluations for a later sweep (the grid's cores stay on the grid)",
    )
    s.add_argument(
        "--rebuild-models",
        action="store_true",
        help="train a [final] run whose last.pt is gone (a copied folder) once more, into FOLDER/rebuilds, and "
        "evaluate it only if every epoch's records equal the run's own (the same model)",
    )
    s.add_argument(
        "--mixed-machines",
        action="store_true",
        help="add this machine's rows to a folder whose rows were timed on another kind of machine (refused "
        "by default: their wall times do not compare)",
    )
    s.add_argument(
        "--mixed-configs",
        action="store_true",
        help="sweep into a folder whose finished rows were made with other [train] or [eval] settings (refused by "
        "default: its table would mix them); for a change that alters nothing a run computes or times",
    )
    s.add_argument("--quiet", action="store_true")
    s.add_argument(
        "--status",
        action="store_true",
        help="run nothing: print where each run (of those --only names) stands, its final evaluation too, also "
        "while other sweep processes work in the folder",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="run N sweep processes on the folder, each pinned to its own equal share of this process's CPUs "
        "with one thread per CPU, started a few seconds apart, logging to FOLDER/worker-K.log",
    )
    s.set_defaults(run=sweep_command)
    r = commands.add_parser("report", help="a sweep's (or a run's) table and plots: report.md and PNGs")
    r.add_argument("folder", help="a sweep folder (results.jsonl) or a run folder (metrics.jsonl)")
    r.add_argument(
        "--machine",
        default=None,
        help="report only the rows timed on the machine kind whose name contains this text ('model 17'); "
        "needed where a sweep folder holds rows of several kinds",
    )
    r.add_argument(
        "--random-ref",
        default="random",
        metavar="STRATEGY",
        help="the strategy the comparison columns take as random pruning at each fraction (default random; "
        "random+noaug: a named variant's rows, for references trained in the same regime)",
    )
    r.add_argument(
        "--full-ref",
        default="full",
        metavar="STRATEGY",
        help="the strategy they take as the full data (default full; e.g. full+noaug)",
    )
    r.set_defaults(run=report_command)


def build_parser() -> argparse.ArgumentParser:
    from advprune.cli.prepare_command import prepare
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
    _train_parser(commands)
    _score_parser(commands)
    _eval_parser(commands)
    _sweep_parsers(commands)
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
