"""Optional refinement: snap regressed joints to keypoint-heatmap peaks (reference ``MATCH_HMP``).

1. *Absorb*: on the scale-averaged, flip-fused keypoint heatmaps at input resolution, find up to
   ``centers.max_people`` peaks per keypoint (``refine.peak_kernel`` max-pool NMS); a joint moves to
   the nearest peak of its keypoint when closer than ``refine.max_distance`` input px.
2. *Adjust*: joints scoring above ``adjust_threshold`` are refined by fitting a 2-D Gaussian to the
   heatmap in a ``(2 * adjust_window + 1)²`` window around their rounded position.

Deviations from the reference (which loops in Python and calls ``scipy.optimize.curve_fit`` per
joint): peaks with zero heat are not candidates (the reference's top-k can return arbitrary
zero-valued pixels), and the Gaussian fit is the closed-form weighted log-quadratic least squares
(Guo's method), batched; a fit that fails (non-concave, or centre outside the window) leaves the
joint unchanged, as the reference does when ``curve_fit`` raises. Off by default, as in the
reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dekr.codec.config import RefineConfig
from dekr.codec.maps import max_filter, upsample


def _absorb(poses: torch.Tensor, heat: torch.Tensor, cfg: RefineConfig, max_peaks: int) -> torch.Tensor:
    """Move joints ``[B, P, K, 2]`` to the nearest keypoint peak of ``heat [B, K, H, W]``."""
    b, k, h, w = heat.shape
    peaks = heat * (max_filter(heat, cfg.peak_kernel) == heat)
    n = min(max_peaks, h * w)
    val, idx = peaks.flatten(2).topk(n, dim=2)  # [B, K, T]
    peak_xy = torch.stack((idx % w, torch.div(idx, w, rounding_mode="floor")), -1).to(poses.dtype)
    d = torch.linalg.vector_norm(poses[:, :, :, None, :] - peak_xy[:, None], dim=-1)  # [B, P, K, T]
    d = torch.where((val > 0)[:, None], d, torch.full_like(d, torch.inf))
    best, arg = d.min(-1)
    snapped = (
        peak_xy[:, None]
        .expand(-1, poses.shape[1], -1, -1, -1)
        .gather(3, arg[..., None, None].expand(-1, -1, -1, 1, 2))
        .squeeze(3)
    )
    return torch.where((best < cfg.max_distance)[..., None], snapped, poses)


def _gaussian_fit(poses: torch.Tensor, score: torch.Tensor, heat: torch.Tensor, cfg: RefineConfig) -> torch.Tensor:
    """Refine joints ``[B, P, K, 2]`` with a Gaussian fit in a window of ``heat [B, K, H, W]``."""
    b, p, k, _ = poses.shape
    h, w = heat.shape[-2:]
    r = cfg.adjust_window
    cx = (poses[..., 0] + 0.5).long().clamp(0, w - 1)
    cy = (poses[..., 1] + 0.5).long().clamp(0, h - 1)
    off = torch.arange(-r, r + 1, device=poses.device)
    xs = (cx[..., None, None] + off.view(1, -1)).expand(-1, -1, -1, 2 * r + 1, -1)  # [B,P,K,Wy,Wx]
    ys = (cy[..., None, None] + off.view(-1, 1)).expand_as(xs)
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    ch = torch.arange(k, device=poses.device).view(1, 1, k, 1, 1)
    flat = (ch * (h * w) + ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).flatten(1)
    v = heat.reshape(b, -1).gather(1, flat).view_as(xs.float())
    ok = inside & (v > 1e-6)
    wgt = torch.where(ok, v * v, torch.zeros_like(v)).flatten(-2)  # Guo weights
    x = (xs - cx[..., None, None]).float().flatten(-2)
    y = (ys - cy[..., None, None]).float().flatten(-2)
    basis = torch.stack((torch.ones_like(x), x, y, x * x + y * y), -1)  # [..., M, 4]
    logv = torch.log(torch.where(ok, v, torch.ones_like(v))).flatten(-2)
    ata = torch.einsum("...m,...mi,...mj->...ij", wgt, basis, basis)
    atb = torch.einsum("...m,...mi,...m->...i", wgt, basis, logv)
    ata = ata + 1e-9 * torch.eye(4, device=poses.device)
    coef = torch.linalg.solve(ata, atb[..., None]).squeeze(-1)
    a2 = coef[..., 3]
    mx, my = -coef[..., 1] / (2 * a2), -coef[..., 2] / (2 * a2)
    good = (
        (a2 < 0)
        & (ok.flatten(-2).sum(-1) >= 4)
        & (mx.abs() <= r)
        & (my.abs() <= r)
        & torch.isfinite(mx)
        & torch.isfinite(my)
        & (score > cfg.adjust_threshold)
    )
    fitted = torch.stack((cx.float() + mx, cy.float() + my), -1)
    return torch.where(good[..., None], fitted, poses)


def refine_poses(
    poses: torch.Tensor,
    valid: torch.Tensor,
    heatmaps: Sequence[torch.Tensor],
    factors: Sequence[float],
    stride: int,
    cfg: RefineConfig,
    max_peaks: int,
) -> torch.Tensor:
    """Refined ``[B, P, K, 3]`` poses (joint scores unchanged) from the fused heatmaps of each scale.

    Args:
        poses, valid: decoded poses ``[B, P, K, 3]`` (input px of the factor-1 geometry) and their
            valid slots ``[B, P]``.
        heatmaps: flip-fused ``[B, K+1, h_s, w_s]`` per scale, in the order of ``factors``.
        max_peaks: peaks searched per keypoint (the decoder's ``centers.max_people``).
    """
    heat = sum(upsample(hm[:, :-1], stride / f) for hm, f in zip(heatmaps, factors)) / len(factors)
    xy = _absorb(poses[..., :2], heat, cfg, max_peaks)
    xy = _gaussian_fit(xy, poses[..., 2], heat, cfg)
    xy = torch.where(valid[..., None, None], xy, poses[..., :2])
    return torch.cat((xy, poses[..., 2:]), -1)


__all__ = ["refine_poses"]
