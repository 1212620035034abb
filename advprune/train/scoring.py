"""The scoring pass a pruner may ask for before an epoch (pruning.ScoringRequest): the training data
serves exactly the requested ids once, and the model as it is then scores each of them (eval mode,
nothing trained), on clean inputs or on adversarial examples with the training attack's budget."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from advprune.distributed import World
from advprune.ids import epoch_generator
from advprune.pruning.protocol import ScoringRequest
from advprune.scores import score_pass
from advprune.train.batches import SubsetControl, unpack_batch
from advprune.train.config import SINGLE_STEP, AttackConfig


def _scoring_attack(attack: AttackConfig) -> dict:
    """score_pass's attack options for the training attack: FGSM-RS for fgsm_rs and n_fgsm (within the eps
    ball: the loss there ranks the samples), PGD with the same eps, steps and step size for pgd and trades
    (TRADES' KL attack scored by the cross-entropy one)."""
    if attack.kind in SINGLE_STEP:
        return {"attack": "fgsm", "eps": attack.eps, "step_size": attack.step_size}
    if attack.kind == "clean":
        raise ValueError("clean training has no attack to score adversarial examples with: rank by a clean score")
    return {
        "attack": "pgd",
        "eps": attack.eps,
        "steps": max(attack.steps, 1),
        "step_size": attack.step_size,
        "norm": attack.norm,
    }


def run_scoring_pass(
    world: World,
    model: torch.nn.Module,
    train: Iterable,
    subset: SubsetControl,
    request: ScoringRequest,
    *,
    num_samples: int,
    attack: AttackConfig,
    autocast,
    epoch: int,
    seed: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """The scores of every requested id ([num_samples] tensors by id; adversarial ones named adv_*). Under
    torch.distributed each rank scores its share and every rank gets all the scores."""
    subset.set_indices(request.ids)
    subset.set_epoch(epoch)
    batches = (unpack_batch(batch) for batch in train)
    options = _scoring_attack(attack) if request.adversarial else {"attack": "none", "deepfool": request.deepfool}
    pass_seed = epoch_generator(seed, epoch).initial_seed()  # the epoch's own seed, as its training steps use
    own_share = torch.zeros(0, dtype=torch.int64)  # checked once the shares are put together
    covering = own_share if world.distributed else request.ids
    with autocast:
        scores = score_pass(model, batches, num_samples, seed=pass_seed, device=device, covering=covering, **options)
    if world.distributed:
        scores = _combine(world, scores)
        if torch.isnan(scores["loss"][request.ids]).any():
            raise RuntimeError("the ranks' scoring passes did not cover every requested sample")
    if request.adversarial:
        scores = {f"adv_{name}": values for name, values in scores.items()}
    return scores


def _combine(world: World, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's scores put together: each id holds the value of the rank that scored it (ids that two
    ranks scored, the few repeated to even the shares, hold the same value on both)."""
    combined = {}
    for name, values in scores.items():
        gathered = world.gather(values.to(world.device())[None].float()).cpu()
        combined[name] = gathered.amax(0).bool() if values.dtype == torch.bool else gathered.nanmean(0)
    return combined
