"""AutoAttack's finished stages kept on disk: which samples each stage left robust, under a key made of all
that decides them (the model's weights, the images and labels, the attack's settings, the software), so that
an evaluation cut short resumes at its next stage, and a standard evaluation that follows an APGD-CE + APGD-T
one of the same model runs only FAB-T and Square. A stage's flags are written once it ends, atomically."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from advprune._files import write_bytes_atomic
from advprune._warn import warn
from advprune.autoattack import reusable_stages


def tensor_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 of names, dtypes, shapes and bytes, in order: the same digest wherever the tensors live."""
    digest = hashlib.sha256()
    for name, tensor in named:
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """The digest of the model's state (parameters and buffers, by name)."""
    return tensor_digest(model.state_dict().items())


class StageCache:
    """The stages run so far under one key, in order, with the robust flags each left. A file whose key
    differs (another model or setting) is another file; an unreadable one is named and replaced."""

    def __init__(self, folder: str | Path, key: dict) -> None:
        self.key = json.loads(json.dumps(key))  # as it reads back from the file
        name = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:20]
        self.path = Path(folder) / f"{name}.json"
        self._stages: list[list[str]] = []

    def start(self, stages: Sequence[str]) -> list[tuple[str, torch.Tensor]]:
        """(stage, robust flags after it) of the first of `stages` already run under this key, in order: the
        saved run's longest prefix they share. Saved stages after it are forgotten (this run replaces them)."""
        done = reusable_stages(stages, self._saved())
        self._stages = [[name, _bits(flags)] for name, flags in done]
        return done

    def add(self, stage: str, robust: torch.Tensor) -> None:
        """Records that `stage`, run after the ones before it, left `robust`; the file is replaced atomically."""
        self._stages.append([stage, _bits(robust)])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"key": self.key, "stages": self._stages})
        write_bytes_atomic(self.path, text.encode(), durable=True)

    def _saved(self) -> list[tuple[str, torch.Tensor]]:
        if not self.path.exists():
            return []
        try:
            saved = json.loads(self.path.read_text())
            if saved["key"] != self.key:
                raise ValueError("its key is not this evaluation's")
            return [(str(name), _flags(bits)) for name, bits in saved["stages"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warn(f"{self.path}: unreadable AutoAttack stage cache ({exc}): its stages run again")
            return []


def _bits(flags: torch.Tensor) -> str:
    return "".join("1" if flag else "0" for flag in flags.tolist())


def _flags(bits: str) -> torch.Tensor:
    if set(bits) - {"0", "1"}:
        raise ValueError("its flags are not a string of 0s and 1s")
    return torch.tensor([bit == "1" for bit in bits], dtype=torch.bool)
