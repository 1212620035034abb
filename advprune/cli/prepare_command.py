"""`advprune prepare`: a dataset split written as an FFCV .beton (image, label, sample id)."""

from __future__ import annotations

import argparse
from pathlib import Path

from advprune.cli.common import UsageError


def prepare(args: argparse.Namespace) -> None:
    from advprune.data import write_beton
    from advprune.data.readers import read_dataset

    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: name the .beton file to write (e.g. {out / 'train.beton'})")
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists: pass --force to overwrite it")
    data = read_dataset(args.dataset, args.data_dir, train=args.split == "train")
    write_beton(out, data.images, data.labels, force=args.force)
    print(f"wrote {out}: {len(data)} {args.split} samples of {args.dataset}, images {list(data.images.shape[1:])}")
