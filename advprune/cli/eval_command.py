"""`advprune eval`: clean and PGD / AutoAttack accuracy of a checkpoint on the test set, on the
device asked for."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from advprune._files import write_bytes_atomic
from advprune.cli.common import UsageError, resolve_device, tensors
from advprune.cli.factory import checkpoint_model
from advprune.cpu_allocator import tune_cpu_allocator


def eval_command(args: argparse.Namespace) -> None:
    import torch

    from advprune.autoattack import STAGES, parse_stages
    from advprune.data.readers import read_dataset
    from advprune.evaluate import evaluate, format_result

    model, meta = checkpoint_model(args.checkpoint, args.weights)
    device = resolve_device(args.device)
    layout = "contiguous" if args.contiguous else "channels_last"  # the models are advprune's own
    memory_format = torch.contiguous_format if args.contiguous else torch.channels_last
    model.to(device, memory_format=memory_format)
    if device.type == "cpu" and not args.default_malloc:
        tune_cpu_allocator()  # the attacks' temporaries reuse freed memory instead of faulting pages in
    test = read_dataset(args.dataset or meta.get("dataset"), args.data_dir, train=False)
    eps = args.eps if args.eps is not None else meta.get("eps")
    if eps is None:
        raise UsageError("the checkpoint records no eps: pass --eps")
    norm = args.norm or meta.get("norm", "linf")
    stages = parse_stages(args.stages, "--stages") if args.stages else STAGES
    x, y = tensors(test, range(min(args.n, len(test))))
    result = evaluate(
        model,
        x,
        y,
        attack=args.attack,
        eps=eps,
        steps=args.steps,
        restarts=args.restarts,
        norm=norm,
        batch_size=args.batch_size,
        stages=stages,
        progress=not args.quiet,
        memory_format=memory_format,
        stage_cache=stage_cache_folder(args.stage_cache, args.out),
    )
    result.update(
        split="test",
        test_ids=f"the first {result['n']} of the test set",
        checkpoint=str(args.checkpoint),
        weights=meta["weights"],
        layout=layout,
    )
    if args.out:
        write_bytes_atomic(args.out, json.dumps(result, indent=1).encode())  # whole or not at all
    print(format_result(result))


def stage_cache_folder(option: str | None, out: str | None) -> Path | None:
    """--stage-cache's folder: as given, "none" for none, by default autoattack_stages/ beside --out."""
    if option is not None:
        return None if option == "none" else Path(option)
    return Path(out).parent / "autoattack_stages" if out else None
