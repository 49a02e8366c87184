"""DEKR training losses.

* Heatmap loss: ``mean_{n,c,y,x} (pred - gt)^2 * weight``, where ``weight`` is 1 inside each
  Gaussian's window, the background weight (0.1) elsewhere and 0 in ignored regions (the target
  encoder builds it). The mean runs over every element, as in the reference.
* Offset loss: smooth-L1 (``beta = 1/9``) times the per-pixel weights (``1/sqrt(area)`` inside each
  person's centre window, 0 elsewhere), summed and divided by the number of entries with a
  positive weight in the batch (1 when there are none, so empty batches give 0).

The total is ``heatmap_factor * heatmap + offset_factor * offset`` (1.0 and 0.03 in the paper).
"""

from __future__ import annotations

import torch
from torch import nn


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted squared error averaged over all elements. All tensors ``[N, K+1, h, w]``."""
    if pred.shape != target.shape or target.shape != weight.shape:
        raise ValueError(f"heatmap shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}, "
                         f"weight {tuple(weight.shape)}")
    return ((pred - target) ** 2 * weight).mean()


def smooth_l1(diff: torch.Tensor, beta: float) -> torch.Tensor:
    """Elementwise smooth-L1 of a difference: quadratic below ``beta``, linear above."""
    a = diff.abs()
    return torch.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def offset_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, beta: float = 1.0 / 9
) -> torch.Tensor:
    """Weighted smooth-L1 normalised by the count of positive weights. Tensors ``[N, 2K, h, w]``."""
    if pred.shape != target.shape or target.shape != weight.shape:
        raise ValueError(f"offset shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}, "
                         f"weight {tuple(weight.shape)}")
    num_pos = (weight > 0).sum().clamp(min=1)
    return (smooth_l1(pred - target, beta) * weight).sum() / num_pos


class DEKRLoss(nn.Module):
    """Heatmap + offset loss with configurable factors.

    ``forward(heatmaps, offsets, batch)`` reads ``batch["heatmaps"]``, ``batch["heatmap_weights"]``,
    ``batch["offsets"]`` and ``batch["offset_weights"]`` and returns a dict with ``heatmap``,
    ``offset`` (both already multiplied by their factors) and ``total``.
    """

    def __init__(self, heatmap_factor: float = 1.0, offset_factor: float = 0.03, beta: float = 1.0 / 9) -> None:
        super().__init__()
        self.heatmap_factor = heatmap_factor
        self.offset_factor = offset_factor
        self.beta = beta

    def forward(
        self, heatmaps: torch.Tensor, offsets: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        hm = self.heatmap_factor * heatmap_loss(heatmaps.float(), batch["heatmaps"], batch["heatmap_weights"])
        off = self.offset_factor * offset_loss(
            offsets.float(), batch["offsets"], batch["offset_weights"], self.beta
        )
        return {"heatmap": hm, "offset": off, "total": hm + off}
