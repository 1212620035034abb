"""Result types shared by the ops and their reference."""

from __future__ import annotations

from typing import NamedTuple

import torch


class SampleScores(NamedTuple):
    """Per-sample scores of a batch of logits, each a [N] tensor (ops.sample_scores)."""

    loss: torch.Tensor  # cross-entropy, float32
    margin: torch.Tensor  # logit_y - max over j != y of logit_j, float32
    el2n: torch.Tensor  # ||softmax - onehot(y)||_2, float32
    entropy: torch.Tensor  # entropy of the softmax, float32
    confidence: torch.Tensor  # softmax_y, float32
    correct: torch.Tensor  # argmax == y, bool
