"""DEKR training losses, on the compact training batch (see ``CONVENTIONS.md`` and :mod:`dekr.codec.encode`).

* Heatmap loss: ``mean_{n,c,y,x} (pred - gt)^2 * weight`` over every element, as in the reference.
  The weight is rebuilt here from the batch: the loss mask inside each Gaussian's window (where the
  target heatmap is positive) and ``bg_weight`` (the codec's) times the mask elsewhere; the mask is 0 on
  ignored regions.
* Offset loss: smooth-L1 (``beta = 1/9``) times the per-pixel weights (``1/sqrt(area)`` inside each
  person's centre window, 0 elsewhere), summed and divided by the number of positive weights in the
  batch (1 when there are none, so empty batches give 0). Only the pixels listed in the batch carry
  weight, so the predictions are read there and nowhere else.

Both equal the reference's losses on its dense targets (tested against :meth:`TargetEncoder.densify`).
The total is ``heatmap_factor * heatmap + offset_factor * offset`` (1.0 and 0.03 in the paper).
"""

from __future__ import annotations

import torch
from torch import nn


def heatmap_weights(target: torch.Tensor, mask: torch.Tensor, bg_weight: float) -> torch.Tensor:
    """Loss weights ``[N, K+1, h, w]`` from the target heatmaps and the loss mask ``[N, h, w]``."""
    mask = mask.unsqueeze(1).to(target.dtype)
    return torch.where(target > 0, mask, mask * bg_weight)


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, bg_weight: float) -> torch.Tensor:
    """Weighted squared error averaged over all elements: ``pred``/``target [N, K+1, h, w]``,
    ``mask [N, h, w]``."""
    if pred.shape != target.shape or mask.shape != (target.shape[0], *target.shape[2:]):
        raise ValueError(
            f"heatmap shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}, mask {tuple(mask.shape)}"
        )
    return ((pred - target) ** 2 * heatmap_weights(target, mask, bg_weight)).mean()


def smooth_l1(diff: torch.Tensor, beta: float) -> torch.Tensor:
    """Elementwise smooth-L1 of a difference: quadratic below ``beta``, linear above."""
    a = diff.abs()
    return torch.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def gather_offsets(pred: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
    """Predicted offsets ``[M, K, 2]`` at batch-wide pixels ``pixel [M]`` (``(n * h + y) * w + x``) of
    ``pred [N, 2K, h, w]`` (channels ``x0, y0, x1, y1, ...``)."""
    n, c, h, w = pred.shape
    image, local = pixel // (h * w), pixel % (h * w)
    return pred.reshape(n, c, h * w)[image, :, local].reshape(-1, c // 2, 2)


def offset_loss(
    pred: torch.Tensor, pixel: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, beta: float = 1.0 / 9
) -> torch.Tensor:
    """Weighted smooth-L1 normalised by the count of positive weights.

    Args:
        pred: ``[N, 2K, h, w]`` predicted offsets.
        pixel: ``[M]`` batch-wide pixels that have targets.
        target: ``[M, K, 2]`` target offsets there.
        weight: ``[M, K]`` weights (0 where a keypoint has no target); each applies to ``x`` and ``y``.
    """
    m, k = weight.shape[0], pred.shape[1] // 2
    if pixel.shape != (m,) or target.shape != (m, k, 2) or weight.shape != (m, k):
        raise ValueError(
            f"offset entries do not match {k} keypoints: pixel {tuple(pixel.shape)}, target "
            f"{tuple(target.shape)}, weight {tuple(weight.shape)}"
        )
    num_pos = 2 * (weight > 0).sum().clamp(min=1)
    diff = gather_offsets(pred, pixel) - target
    return (smooth_l1(diff, beta) * weight.unsqueeze(-1)).sum() / num_pos


class DEKRLoss(nn.Module):
    """Heatmap + offset loss with configurable factors.

    ``forward(heatmaps, offsets, batch)`` reads ``batch["heatmaps"]``, ``batch["heatmap_mask"]``,
    ``batch["offset_pixel"]``, ``batch["offset_target"]`` and ``batch["offset_weight"]`` and returns a
    dict with ``heatmap``, ``offset`` (both already multiplied by their factors) and ``total``.
    Values come from ``conf/train.yaml``'s ``module.loss`` (paper: 1.0, 0.03, beta 1/9); ``bg_weight``
    is the codec's ``targets.bg_weight``, the same value the target encoder uses.
    """

    def __init__(self, heatmap_factor: float, offset_factor: float, beta: float, bg_weight: float) -> None:
        super().__init__()
        self.heatmap_factor = heatmap_factor
        self.offset_factor = offset_factor
        self.beta = beta
        self.bg_weight = bg_weight

    def forward(
        self, heatmaps: torch.Tensor, offsets: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        hm = self.heatmap_factor * heatmap_loss(
            heatmaps.float(), batch["heatmaps"], batch["heatmap_mask"], self.bg_weight
        )
        off = self.offset_factor * offset_loss(
            offsets.float(), batch["offset_pixel"], batch["offset_target"], batch["offset_weight"], self.beta
        )
        return {"heatmap": hm, "offset": off, "total": hm + off}
