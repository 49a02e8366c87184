"""Grouped adaptive convolution: DEKR's pixel-wise spatial transformer, all branches at once.

An adaptive convolution is a 3x3 convolution whose nine sampling points are moved, per pixel, by
a predicted 2x2 matrix ``A`` and translation ``t``::

    sample_k(p) = p + d * g_k + (A(p) - I) g_k + t(p),      g_k in {-1, 0, 1}^2,  k = 0..8

where ``d`` is the dilation and ``g_k`` the regular 3x3 grid. (The regular grid is dilated but
the matrix acts on the undilated grid, exactly as in the reference implementation.)

``G`` independent branches of ``C`` channels are packed along the channel axis, ``[N, G*C, H, W]``:
every layer is one grouped operation. Two interchangeable kernels compute the sampling:

* ``"deform"``: :func:`torchvision.ops.deform_conv2d` with ``G`` weight groups and ``G`` offset
  groups (what the reference uses; exportable as ONNX ``DeformConv``).
* ``"grid_sample"``: every branch's 9 points are sampled bilinearly in one
  :func:`torch.nn.functional.grid_sample` call and contracted with the 3x3 weights in one
  batched matmul. Much faster on CPU; the sampled tensor is ``9x`` the feature map and is kept for
  backward unless ``checkpoint=True`` recomputes it.

Both treat samples outside the map as zeros and agree to float rounding.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint
from torchvision.ops import deform_conv2d

AdaptiveImpl = Literal["deform", "grid_sample"]
IMPLS: tuple[str, ...] = ("deform", "grid_sample")

# Regular 3x3 grid in (y, x), k = 3 * row + col: the kernel order of conv weights.
_GRID_Y = (-1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
_GRID_X = (-1.0, 0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 0.0, 1.0)


def sampling_displacements(
    transform: torch.Tensor, grid: torch.Tensor, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Displacements of the 9 kernel points from the regular (dilated) grid.

    Args:
        transform: ``[N, 6G, H, W]`` per group ``(a, b, c, e, ty, tx)``: the matrix
            ``[[a, b], [c, e]]`` acting on ``(y, x)`` grid vectors and the translation.
        grid: ``[2, 9]`` regular grid, rows ``(y, x)``.
        groups: G.

    Returns:
        ``(dy, dx)``, each ``[N, G, 9, H, W]``, in input pixels.
    """
    n, _, h, w = transform.shape
    t = transform.view(n, groups, 6, 1, h, w)
    gy = grid[0].view(1, 1, 9, 1, 1)
    gx = grid[1].view(1, 1, 9, 1, 1)
    dy = t[:, :, 0] * gy + t[:, :, 1] * gx - gy + t[:, :, 4]
    dx = t[:, :, 2] * gy + t[:, :, 3] * gx - gx + t[:, :, 5]
    return dy, dx


def adaptive_conv_deform(
    x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, dilation: int
) -> torch.Tensor:
    """Adaptive convolution through ``torchvision.ops.deform_conv2d``.

    Args:
        x: ``[N, G*C, H, W]``.
        weight: ``[G*Co, C, 3, 3]`` grouped convolution weight.
        dy, dx: ``[N, G, 9, H, W]`` displacements (see :func:`sampling_displacements`).
        dilation: dilation of the regular grid.

    Returns:
        ``[N, G*Co, H, W]``.
    """
    n, g, _, h, w = dy.shape
    offset = torch.stack((dy, dx), dim=3).reshape(n, g * 18, h, w)
    return deform_conv2d(x, offset, weight, padding=dilation, dilation=dilation)


def sampling_grid(transform: torch.Tensor, groups: int, dilation: int) -> torch.Tensor:
    """Normalised ``grid_sample`` coordinates of the 9 taps of every pixel and branch.

    Each coordinate is affine in the regular grid ``(gy, gx)``: per pixel, three coefficient maps
    for x and three for y (computed at feature-map size) are expanded to the 9 taps by one batched
    matrix product, which writes the ``[N*G, 9*H, W, 2]`` grid directly (no 9x-sized temporaries).

    Args:
        transform: ``[N, 6G, H, W]`` (see :func:`sampling_displacements`).

    Returns:
        ``[N*G, 9*H, W, 2]`` (x, y) for ``align_corners=False``: pixel ``i`` -> ``(2i + 1) / size - 1``.
    """
    n, _, h, w = transform.shape
    t = transform.view(n, groups, 6, h, w)
    ys = torch.arange(h, device=t.device, dtype=t.dtype).view(h, 1)
    xs = torch.arange(w, device=t.device, dtype=t.dtype).view(1, w)
    sy, sx = 2.0 / h, 2.0 / w
    # rows: coefficient of gy, coefficient of gx, constant; last axis (x, y)
    coef = torch.stack(
        (
            torch.stack((sx * t[:, :, 2], sy * (t[:, :, 0] + (dilation - 1))), dim=-1),
            torch.stack((sx * (t[:, :, 3] + (dilation - 1)), sy * t[:, :, 1]), dim=-1),
            torch.stack((sx * (xs + t[:, :, 5]) + (1.0 / w - 1.0), sy * (ys + t[:, :, 4]) + (1.0 / h - 1.0)), dim=-1),
        ),
        dim=2,
    )  # [N, G, 3, H, W, 2]
    basis = t.new_tensor((_GRID_Y, _GRID_X, (1.0,) * 9)).t()  # [9, 3]
    grid = torch.matmul(basis, coef.view(n * groups, 3, h * w * 2))  # [N*G, 9, H*W*2]
    return grid.view(n * groups, 9 * h, w, 2)


def adaptive_conv_grid_sample(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, groups: int) -> torch.Tensor:
    """Adaptive convolution as one bilinear ``grid_sample`` plus one batched matmul.

    Args:
        x: ``[N, G*C, H, W]``.
        weight: ``[G*Co, C, 3, 3]``.
        grid: ``[N*G, 9*H, W, 2]`` from :func:`sampling_grid`.
        groups: G.

    Returns:
        ``[N, G*Co, H, W]``, equal to :func:`adaptive_conv_deform` on the same transform.
    """
    n, _, h, w = x.shape
    g = groups
    c = x.shape[1] // g
    co = weight.shape[0] // g
    sampled = F.grid_sample(
        x.reshape(n * g, c, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # [N*G, C, 9*H, W] = [N, G, C*9, H*W]
    out = torch.matmul(weight.reshape(1, g, co, c * 9), sampled.view(n, g, c * 9, h * w))
    return out.view(n, g * co, h, w)


class GroupedAdaptiveBlock(nn.Module):
    """``G`` adaptive residual blocks (adaptive conv, BN, residual, ReLU) as grouped ops.

    Args:
        groups: number of independent branches G.
        channels: channels per branch C (input and output).
        dilation: dilation of the 3x3 sampling grid.
        impl: ``"deform"`` or ``"grid_sample"`` (see module docstring).
        checkpoint: recompute the sampled tensor in backward instead of storing it
            (``grid_sample`` only; lowers peak memory at the cost of time).

    Parameters (all grouped over G): ``transform`` (3x3 conv, ``6G`` outputs: per branch the
    2x2 matrix then the translation), ``weight`` (``[G*C, C, 3, 3]``), ``bn``.
    The transform is initialised to zero (``A = 0``, ``t = 0``: every tap samples the pixel itself),
    the reference's initialisation; ``A = I`` makes the block a plain 3x3 convolution.
    """

    def __init__(
        self,
        groups: int,
        channels: int,
        dilation: int = 1,
        impl: AdaptiveImpl = "grid_sample",
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"adaptive conv impl must be one of {IMPLS}, got '{impl}'")
        self.groups = groups
        self.channels = channels
        self.dilation = dilation
        self.impl = impl
        self.checkpoint = checkpoint
        self.transform = nn.Conv2d(groups * channels, 6 * groups, 3, padding=1, groups=groups)
        self.weight = nn.Parameter(torch.empty(groups * channels, channels, 3, 3))
        self.bn = nn.BatchNorm2d(groups * channels)
        self.register_buffer("grid", torch.tensor((_GRID_Y, _GRID_X)), persistent=False)
        nn.init.normal_(self.weight, std=0.001)
        nn.init.zeros_(self.transform.weight)
        nn.init.zeros_(self.transform.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, G*C, H, W] -> [N, G*C, H, W]``."""
        transform = self.transform(x)
        if self.impl == "deform":
            dy, dx = sampling_displacements(transform, self.grid.to(x.dtype), self.groups)
            out = adaptive_conv_deform(x, self.weight, dy, dx, self.dilation)
        else:
            grid = sampling_grid(transform, self.groups, self.dilation)
            if self.checkpoint and self.training and torch.is_grad_enabled():
                out = activation_checkpoint(
                    adaptive_conv_grid_sample, x, self.weight, grid, self.groups, use_reentrant=False
                )
            else:
                out = adaptive_conv_grid_sample(x, self.weight, grid, self.groups)
        return F.relu(self.bn(out) + x)


class GroupedConvBlock(nn.Module):
    """Ablation baseline: the same residual block with a plain (grouped, dilated) 3x3 conv."""

    def __init__(self, groups: int, channels: int, dilation: int = 1, **_: object) -> None:
        super().__init__()
        self.groups = groups
        self.conv = nn.Conv2d(
            groups * channels,
            groups * channels,
            3,
            padding=dilation,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(groups * channels)
        nn.init.normal_(self.conv.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, G*C, H, W] -> [N, G*C, H, W]``."""
        return F.relu(self.bn(self.conv(x)) + x)
