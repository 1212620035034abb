"""How a batch was cut from its source images, as a loader that augments on its own reports it (the
in-memory loader's `last_augmentation`): what perturbation memory needs to keep a pixel's perturbation on
the same source pixel whatever crop and flip the next epoch draws."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Augmentation:
    """How a batch was cut from its source images: each sample's window offset (rows, cols) into the image
    zero-padded by `padding` on every side, and whether the window was then flipped left-right."""

    rows: torch.Tensor
    cols: torch.Tensor
    flips: torch.Tensor
    padding: int

    @staticmethod
    def identity(batch_size: int, device: torch.device | str) -> Augmentation:
        """A batch served as stored: no padding, no crop, no flip."""
        zeros = torch.zeros(batch_size, dtype=torch.int64, device=device)
        return Augmentation(zeros, zeros, torch.zeros(batch_size, dtype=torch.bool, device=device), 0)

    def pixel_index(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For each sample, the padded-frame row [B, H, 1] and column [B, 1, W] of each batch pixel."""
        steps_h = torch.arange(height, device=self.rows.device)
        steps_w = torch.arange(width, device=self.rows.device)
        rows = self.rows[:, None] + steps_h  # [B, H]
        cols = self.cols[:, None] + torch.where(self.flips[:, None], width - 1 - steps_w, steps_w)  # [B, W]
        return rows[:, :, None], cols[:, None, :]

    def to(self, device: torch.device | str) -> Augmentation:
        return Augmentation(self.rows.to(device), self.cols.to(device), self.flips.to(device), self.padding)
