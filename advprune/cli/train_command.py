"""`advprune train`: adversarial training (optionally on pruned data) with validation on held-out
training samples, then clean and PGD-20 accuracy on the test set."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from advprune.cli.common import UsageError, tensors
from advprune.cli.factory import RunFactory, check_training_options, training_data
from advprune.machine import machine_record

if TYPE_CHECKING:
    import torch

    from advprune.pruning.spec import PruneSpec
    from advprune.train import AttackConfig


def _static_scores(
    args: argparse.Namespace, factory: RunFactory, out: Path, spec: PruneSpec, record: dict
) -> dict[str, torch.Tensor]:
    """The scores a static score-based selection ranks by: read from --scores, or made by --score-pass's
    warm-up trainings (saved as scores.npz); the record gets the file and the scoring seconds."""
    from advprune.prune_setup import Stopwatch
    from advprune.scores import load_scores, save_scores

    if args.scores is not None:
        scores, scores_meta = load_scores(args.scores)
        record.update(scores_file=str(args.scores), scoring_seconds=float(scores_meta.get("seconds", 0.0)))
        return scores
    if factory.world.distributed:
        raise UsageError(
            "--score-pass runs warm-up trainings of its own: under torchrun, score with "
            "`advprune score` first and pass --scores FILE, or let the run choose (no --score-pass)"
        )
    with Stopwatch() as watch:
        scores = factory.warmup_scores(
            args.score_epochs, args.score_seeds, args.score_attack, deepfool=spec.score == "deepfool"
        )
    meta = {"seconds": watch.seconds, "warmup_epochs": args.score_epochs, "seeds": args.score_seeds}
    save_scores(out / "scores.npz", scores, {**meta, "attack": args.score_attack})
    record.update(scores_file=str(out / "scores.npz"), scoring_seconds=watch.seconds)
    return scores


def _pruning(args: argparse.Namespace, factory: RunFactory, out: Path):
    """(kept ids or None, pruner or None, the record of the selection for metrics.jsonl). Every choice is
    made from the pool: the held-out validation ids are never trained on."""
    import torch

    from advprune.prune_setup import dynamic_pruner, static_indices, warmup_selector
    from advprune.pruning import load_indices, parse_spec, save_indices

    if args.prune is None:
        if args.scores is not None:
            raise UsageError("--scores is read by a score-based --prune (el2n:0.4, ccs:0.3, forgetting:0.5)")
        return None, None, None
    spec = parse_spec(args.prune)
    n, pool = len(factory.data), factory.pool
    record = {"phase": "pruning", "prune": args.prune, "scoring_seconds": 0.0}
    if spec.is_dynamic:
        if args.scores is not None:
            raise UsageError(f"--prune {args.prune} uses the training losses, not --scores")
        return None, dynamic_pruner(spec, n, args.epochs, seed=args.seed, pool=pool), record
    if args.scores is not None and not spec.needs_scores:
        raise UsageError(f"--scores is read by a score-based --prune (el2n:0.4, ccs:0.3), not by {spec.method}")
    kept_file = out / "kept.npy"
    if args.resume and kept_file.is_file():
        return load_indices(kept_file, n), None, None  # the selection of the run being resumed
    labels = torch.from_numpy(factory.data.labels.astype("int64"))
    if spec.needs_scores and args.scores is None and not args.score_pass:
        if not 1 <= args.score_epochs < args.epochs:
            raise UsageError(f"--score-epochs must be >= 1 and below --epochs ({args.epochs}), got {args.score_epochs}")
        selector = warmup_selector(
            spec,
            n,
            labels,
            warmup_epochs=args.score_epochs,
            class_balanced=args.class_balanced,
            seed=args.seed,
            pool=pool,
        )
        return None, selector, {**record, "scores": "a scoring pass at the end of the warm-up"}
    scores = _static_scores(args, factory, out, spec, record) if spec.needs_scores else None
    indices = static_indices(
        spec, n, labels, scores=scores, class_balanced=args.class_balanced, seed=args.seed, pool=pool
    )
    if factory.world.is_main:
        save_indices(kept_file, indices)
    record["kept"] = len(indices)
    return indices, None, record


def _setup_record(factory: RunFactory, args: argparse.Namespace, test_size: int, attack: AttackConfig) -> dict:
    """Where each number of the run comes from: which samples train, validate and test, and the training
    attack as the Trainer took it (defaults filled in)."""
    return {
        "phase": "setup",
        "train_samples": len(factory.pool),
        "val": {"split": "train (held out, never trained on)", "n": len(factory.val_ids), "ids": "val_ids.npy"},
        "test": {"split": "test", "n": min(args.eval_n, test_size), "ids": f"the first {args.eval_n}"},
        "model": factory.model_name,
        "attack": {
            "kind": attack.kind,
            "eps": attack.eps,
            "steps": attack.steps,
            "norm": attack.norm,
            "step_size": attack.step_size,
            "reuse": attack.reuse,
            "eps_warmup": attack.eps_warmup,
        },
        "weight_decay": args.weight_decay,
        "augment": args.augment,
        "default_malloc": args.default_malloc,  # False: on the CPU the Trainer tuned malloc (timings differ)
        "machine": machine_record(factory.device),
    }


def train(args: argparse.Namespace) -> None:
    """PGD (or FGSM-RS, TRADES, clean) training, optionally on pruned data, then clean and PGD-20 accuracy.
    The run folder is this process's alone from the first file written to the last (RunFolderBusy). Under
    torchrun every rank runs this; rank 0 alone writes and prints."""
    from advprune.distributed import World
    from advprune.train.folder_lock import locked

    out = Path(args.out)
    args.resume = args.resume or args.resume_from is not None
    if (out / "last.pt").exists() and not args.resume:
        raise UsageError(f"{out} holds a run already: pass --resume to continue it, or choose another --out")
    check_training_options(args)  # a bad option is refused before the run folder is made
    resume_from = Path(args.resume_from) if args.resume_from is not None else out / "last.pt"
    if args.resume and not resume_from.is_file():
        how = "" if args.resume_from is not None else ": drop --resume to start it"
        raise UsageError(f"no checkpoint at {resume_from} to resume from{how}")
    world = World.from_environment(timeout_s=args.dist_timeout)
    try:
        started = time.perf_counter()
        data, test = training_data(args)  # as the options: missing data is refused before the folder is made
        factory = RunFactory(args, data, world=world)
        with locked(out if world.is_main else None):
            _train(args, out, factory, test, started)
    finally:
        world.close()


def _train(args: argparse.Namespace, out: Path, factory: RunFactory, test, started: float) -> None:
    from advprune.pruning import save_indices
    from advprune.scores import ForgettingTracker

    world, data = factory.world, factory.data
    indices, pruner, record = _pruning(args, factory, out)
    forgetting = ForgettingTracker(len(data))
    trainer = factory.trainer(
        factory.model(args.seed),
        epochs=args.epochs,
        out=out,
        seed=args.seed,
        quiet=args.quiet,
        pruner=pruner,
        trackers=[forgetting],
    )
    trainer.folder.open(resume=args.resume)  # cleans up after a killed run; a fresh run sets an old log aside
    if args.resume:  # where each call trained: a run resumed on another kind of machine has mixed timings
        trainer.log({"phase": "resume", "machine": machine_record(factory.device)})
    else:
        trainer.log(_setup_record(factory, args, len(test), trainer.attack))
        if world.is_main:
            save_indices(out / "val_ids.npy", factory.val_ids)
        if record is not None:
            trainer.log(record)
    loader = factory.loader(out, indices=indices, seed=args.seed)
    trainer.fit(loader, factory.val(), resume=args.resume, resume_from=args.resume_from)
    _finish(args, out, trainer, pruner, forgetting, test, record, started)


def _finish(args, out: Path, trainer, pruner, forgetting, test, record, started: float) -> None:
    """The run's files (rank 0) and its evaluation on the test set (each rank its share)."""
    from advprune.evaluate import evaluate, format_result
    from advprune.pruning import save_indices
    from advprune.scores import save_scores

    world = trainer.world
    result = None
    if args.eval_n > 0:  # 0: evaluated elsewhere (advprune eval; a sweep)
        x_test, y_test = tensors(test, range(min(args.eval_n, len(test))))
        result = evaluate(
            trainer.final_model,
            x_test,
            y_test,
            attack="pgd",
            eps=args.eps,
            steps=20,
            norm=args.norm,
            progress=not args.quiet and world.is_main,
            world=world,
            memory_format=trainer.memory_format,
        )
    if not world.is_main:
        return
    save_scores(
        out / "train_scores.npz",
        {"forgetting": forgetting.scores()},
        {"source": "training run", "epochs": args.epochs, "prune": args.prune},
    )
    if getattr(pruner, "kept", None) is not None:  # selected in the run from its scoring pass
        save_indices(out / "kept.npy", pruner.kept)
        save_scores(
            out / "scores.npz",
            pruner.scores(),
            {"source": "scoring pass in the run", "warmup_epochs": args.score_epochs},
        )
    if result is None:
        print(f"no test evaluation (--eval-n 0): advprune eval --checkpoint {out / 'last.pt'}")
        return
    result.update(
        split="test",
        test_ids=f"the first {result['n']} of the test set",
        model="last.pt (final epoch)",
        wall_seconds=time.perf_counter() - started,
        prune=args.prune,
        ranks=world.size,
    )
    if record is not None:
        result["scoring_seconds"] = record["scoring_seconds"]
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    print(format_result(result))
