"""Per-sample scores for pruning: scoring passes over the training set (clean and/or
adversarial inputs, averaged over checkpoints or seeds), forgetting events counted during
training at no extra cost, and the last-layer GraNd proxy. Saved as .npz with sample ids
plus a JSON file of metadata, for reuse.

Convention: a higher score means a harder sample (margin and confidence are stored as
they are, where higher means easier).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from advprune import attacks, ops
from advprune._files import write_atomic
from advprune.deepfool import deepfool_distance

SCORING_ATTACKS = ("none", "fgsm", "pgd")
FLOAT_SCORES = ("loss", "margin", "el2n", "entropy", "confidence")


class ForgettingTracker:
    """Forgetting events (Toneva et al. 2019) from each training batch's `correct` flags:
    a sample is forgotten when it was classified right at its last presentation and wrong now.
    A Trainer hook (on_batch); its state is saved in the checkpoints."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self.events = torch.zeros(num_samples, dtype=torch.int64)
        self.last_correct = torch.zeros(num_samples, dtype=torch.bool)
        self.ever_correct = torch.zeros(num_samples, dtype=torch.bool)

    def update(self, ids: torch.Tensor, correct: torch.Tensor) -> None:
        """Counts the batch's forgetting events; the counts live on the device of the updates."""
        ids, correct = ids.detach(), correct.detach().to(torch.bool)
        if self.events.device != ids.device:
            self.events, self.last_correct, self.ever_correct = (
                t.to(ids.device) for t in (self.events, self.last_correct, self.ever_correct)
            )
        self.events[ids] += (self.last_correct[ids] & ~correct).to(torch.int64)
        self.last_correct[ids] = correct
        self.ever_correct[ids] |= correct

    def on_batch(self, ids: torch.Tensor, scores: ops.SampleScores, adv_loss: torch.Tensor) -> None:
        self.update(ids, scores.correct)

    def scores(self) -> torch.Tensor:
        """Forgetting counts as float; never-learned samples rank as most forgettable (max + 1)."""
        counts = self.events.cpu().to(torch.float64)
        top = float(counts.max()) if len(counts) else 0.0
        return torch.where(self.ever_correct.cpu(), counts, torch.tensor(top + 1, dtype=torch.float64))

    def state_dict(self) -> dict:
        return {
            "events": self.events.cpu().clone(),
            "last_correct": self.last_correct.cpu().clone(),
            "ever_correct": self.ever_correct.cpu().clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["events"].shape != (self.num_samples,):
            saved = len(state["events"])
            raise ValueError(f"the saved forgetting counts cover {saved} samples, not {self.num_samples}")
        self.events = state["events"].clone()
        self.last_correct = state["last_correct"].clone()
        self.ever_correct = state["ever_correct"].clone()


def _scoring_inputs(model, x, y, attack: str, eps: float, steps: int, step_size: float | None, norm: str, generator):
    if attack == "none":
        return x
    if attack == "fgsm":
        return attacks.fgsm_rs(model, x, y, eps=eps, step_size=step_size or 1.25 * eps, generator=generator)
    return attacks.pgd(
        model, x, y, eps=eps, step_size=step_size or 2.5 * eps / steps, steps=steps, norm=norm, generator=generator
    )


@torch.no_grad()
def score_pass(
    model: nn.Module,
    batches: Iterable,
    num_samples: int,
    *,
    attack: str = "none",
    eps: float = 0.0,
    steps: int = 2,
    step_size: float | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    covering: torch.Tensor | None = None,
    norm: str = "linf",
    deepfool: bool = False,
) -> dict[str, torch.Tensor]:
    """Scores of every sample from one model in eval mode: loss, margin, el2n, entropy,
    confidence, correct (ops.sample_scores) and grand (el2n * sqrt(||h||^2 + 1), h the
    penultimate features, where the model has .features and .linear), on clean inputs
    (attack="none") or on FGSM-RS / PGD-`steps` examples. batches yields (x, y, ids); the
    results are [num_samples] tensors indexed by id, and must cover the ids `covering` (default:
    all), NaN (False for correct) elsewhere. deepfool=True adds each clean sample's DeepFool distance
    to the decision boundary (advprune.deepfool; a forward and a backward per class per iteration)."""
    if attack not in SCORING_ATTACKS:
        raise ValueError(f"attack must be one of {SCORING_ATTACKS}, got {attack!r}")
    if attack != "none" and not eps > 0:
        raise ValueError(f"an adversarial scoring pass needs eps > 0, got {eps}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    has_features = callable(getattr(model, "features", None)) and isinstance(getattr(model, "linear", None), nn.Linear)
    out = {name: torch.full((num_samples,), float("nan"), dtype=torch.float32) for name in FLOAT_SCORES}
    out["correct"] = torch.zeros(num_samples, dtype=torch.bool)
    for name in (["grand"] if has_features else []) + (["deepfool"] if deepfool else []):
        out[name] = torch.full((num_samples,), float("nan"), dtype=torch.float32)
    covered = torch.zeros(num_samples, dtype=torch.bool)
    if attack == "fgsm" and norm != "linf":
        raise ValueError("FGSM scoring is linf only: score l2 models with attack='pgd'")
    generator = torch.Generator(device=device).manual_seed(seed)
    with attacks.model_mode(model, "eval"):
        for x, y, ids in batches:
            x, y = x.to(device), y.to(device)
            ids = ids.to("cpu", torch.int64)
            if deepfool:
                out["deepfool"][ids] = deepfool_distance(model, x, y).cpu()
            with torch.enable_grad():
                x = _scoring_inputs(model, x, y, attack, eps, steps, step_size, norm, generator)
            if has_features:
                h = model.features(x)
                logits = model.linear(h)
            else:
                logits = model(x)
            s = ops.sample_scores(logits.float(), y)
            for name in (*FLOAT_SCORES, "correct"):
                out[name][ids] = getattr(s, name).cpu()
            if has_features:
                out["grand"][ids] = (s.el2n * torch.sqrt(h.float().pow(2).sum(1) + 1)).cpu()
            covered[ids] = True
    needed = covered if covering is None else covered[covering]
    if not needed.all():
        expected = num_samples if covering is None else len(covering)
        raise ValueError(f"the batches covered {int(needed.sum())} of the {expected} samples to score")
    return out


def average_scores(runs: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of each score over runs (checkpoints or seeds); `correct` becomes the share of runs right."""
    if not runs:
        raise ValueError("average_scores needs at least one run")
    names = set(runs[0])
    for r in runs[1:]:
        if set(r) != names:
            raise ValueError(f"runs hold different scores: {sorted(names)} and {sorted(r)}")
    return {name: torch.stack([r[name].to(torch.float64) for r in runs]).mean(0).to(torch.float32) for name in names}


def meta_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def save_scores(path: str | Path, scores: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    """scores (name -> [N]) as an .npz with the sample ids 0..N-1, and meta as JSON beside it."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"a scores file must end in .npz, got {path.name}")
    lengths = {name: len(v) for name, v in scores.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"all scores must have one value per sample, got lengths {lengths}")
    n = next(iter(lengths.values()))
    arrays = {name: torch.as_tensor(v).cpu().numpy() for name, v in scores.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"num_samples": n, "scores": sorted(arrays), **(meta or {})}
    write_atomic(meta_path(path), lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    write_atomic(path, lambda tmp: np.savez(tmp, ids=np.arange(n), **arrays))
    return path


def load_scores(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(scores by name, in sample-id order; metadata) from a file written by save_scores."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no scores file at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a scores .npz file ({exc})") from None
    ids = arrays.pop("ids", None)
    if ids is None or not arrays:
        raise ValueError(f"{path} holds no sample ids or no scores: write it with advprune score")
    order = np.argsort(ids)
    if not np.array_equal(ids[order], np.arange(len(ids))):
        raise ValueError(f"{path}: the ids are not 0..{len(ids) - 1}, each once")
    meta = json.loads(meta_path(path).read_text()) if meta_path(path).is_file() else {}
    return {name: torch.from_numpy(a[order].copy()) for name, a in arrays.items()}, meta
