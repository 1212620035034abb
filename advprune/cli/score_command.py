"""`advprune score`: per-sample scores of the training set, from checkpoints or from short warm-up
runs, saved for `advprune train --prune ... --scores FILE`."""

from __future__ import annotations

import argparse
from pathlib import Path

from advprune.cli.common import UsageError, resolve_device
from advprune.cli.factory import RunFactory, checkpoint_model, training_data


def score_command(args: argparse.Namespace) -> None:
    from advprune.prune_setup import Stopwatch, score_model
    from advprune.scores import average_scores, save_scores

    out = Path(args.out)
    if out.suffix != ".npz":
        raise UsageError(f"--out must name a .npz file, got {out}")
    if bool(args.checkpoint) == (args.warmup_epochs is not None):
        raise UsageError("score from --checkpoint FILE [FILE ...] or from --warmup-epochs W runs (one of the two)")
    if args.warmup_epochs is not None and args.warmup_epochs < 1:
        raise UsageError(f"--warmup-epochs must be >= 1, got {args.warmup_epochs}")
    data, _ = training_data(args)
    with Stopwatch() as watch:
        if args.checkpoint:
            runs = []
            for path in args.checkpoint:
                model, meta = checkpoint_model(path)
                eps = args.eps if args.eps is not None else meta.get("eps")
                if args.attack_for_scores != "none" and eps is None:
                    raise UsageError("the checkpoint records no eps: pass --eps")
                runs.append(
                    score_model(
                        model,
                        data,
                        attack=args.attack_for_scores,
                        eps=eps or 0.0,
                        steps=args.score_steps,
                        device=resolve_device(args.device),
                        seed=args.seed,
                        deepfool=args.deepfool,
                    )
                )
            scores = average_scores(runs)
        else:
            args.eps = 0.1 if args.eps is None else args.eps
            factory = RunFactory(args, data)
            scores = factory.warmup_scores(args.warmup_epochs, args.seeds, args.attack_for_scores, args.deepfool)
    meta = {
        "seconds": watch.seconds,
        "dataset": args.dataset,
        "limit": args.limit,
        "attack": args.attack_for_scores,
        "checkpoints": args.checkpoint,
        "warmup_epochs": args.warmup_epochs,
        "seeds": args.seeds,
    }
    save_scores(out, scores, meta)
    print(f"wrote {out}: {', '.join(sorted(scores))} for {len(data)} samples in {watch.seconds:.1f} s")
