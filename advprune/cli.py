"""The `advprune` command. Bad input prints one line saying what was wrong and exits 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


class UsageError(Exception):
    """A mistake of the caller: printed as one line, exit code 2."""


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


def build_parser() -> argparse.ArgumentParser:
    from advprune.data.readers import DATASETS

    parser = argparse.ArgumentParser(prog="advprune", description="Fast adversarial training on pruned data.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="write a dataset as an FFCV .beton (image, label, sample id)")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data-dir", default=None, help="the dataset folder (fashion-mnist: the Debian package's)")
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--out", required=True, help="the .beton file to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(run=prepare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError) as exc:
        print(f"advprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
