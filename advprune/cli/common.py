"""What every `advprune` subcommand shares: one-line errors, numbers written as fractions, and
config files."""

from __future__ import annotations

import argparse
import sys
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


def load_config(path: str) -> dict:
    """Options from a TOML or YAML file (keys as the long flags, - or _)."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"no config file at {file}")
    text = file.read_text()
    if file.suffix == ".toml":
        from advprune._deps import load_toml

        config = load_toml(text, purpose="reading a TOML config")
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


def tensors(data, ids=None):
    """Images as float [N, C, H, W] in [0, 1] and int64 labels of a Dataset (the rows `ids`, or all)."""
    import numpy as np
    import torch

    rows = None if ids is None else np.asarray(ids, dtype=np.int64)
    images, labels = (data.images, data.labels) if rows is None else (data.images[rows], data.labels[rows])
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255).contiguous()
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())


def resolve_device(name: str | None):
    """The torch device of --device (default: cuda when there is one); UsageError for an unusable one."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device (write cpu, cuda or cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this machine has no CUDA device (torch.cuda.is_available() is False)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")
    return device
