"""DEKR heads: the keypoint/centre heatmap branch and the disentangled offset regression.

Both take the concatenated stride-4 backbone features ``[N, C_in, h, w]``.

The regression head splits the K keypoints into ``B`` branches (``B = K``: the paper's fully
disentangled head; ``B = 1``: one shared regressor). Each branch owns ``C_b`` channels and a stack
of residual blocks; all branches run as grouped convolutions, one op per layer. Branch ``b``
regresses the ``2 n_b`` offsets of its ``n_b`` keypoints; a fixed channel permutation puts them
back in keypoint order, interleaved ``[x0, y0, x1, y1, ...]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from timm.models.resnet import BasicBlock
from torch import nn

from dekr.model.adaptive import GroupedAdaptiveBlock, GroupedConvBlock


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv (no bias), BN, ReLU: the transition from backbone features to a head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class HeatmapHead(nn.Module):
    """Transition to ``channels``, ``num_blocks`` BasicBlocks, 1x1 conv to ``K + 1`` maps.

    Output ``[N, K+1, h, w]`` is the raw convolution (no sigmoid, as in the reference): it is
    regressed directly onto Gaussian targets in ``[0, 1]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_keypoints: int,
        channels: int = 32,
        num_blocks: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.transition = conv_bn_relu(in_channels, channels)
        self.blocks = nn.Sequential(
            *[BasicBlock(channels, channels, dilation=dilation, first_dilation=dilation) for _ in range(num_blocks)]
        )
        self.final = nn.Conv2d(channels, num_keypoints + 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final(self.blocks(self.transition(features)))


def split_keypoints(num_keypoints: int, num_branches: int) -> list[list[int]]:
    """Contiguous, near-equal split of keypoint indices into branches."""
    if not 1 <= num_branches <= num_keypoints:
        raise ValueError(f"num_branches must be in [1, num_keypoints={num_keypoints}], got {num_branches}")
    return [part.tolist() for part in np.array_split(np.arange(num_keypoints), num_branches)]


class OffsetHead(nn.Module):
    """Disentangled keypoint regression with grouped (adaptive) residual blocks.

    Args:
        in_channels: backbone feature channels.
        num_keypoints: K.
        num_branches: B; ignored when ``keypoint_groups`` is given.
        keypoint_groups: explicit partition of ``range(K)`` into branches.
        channels_per_keypoint: c; each branch gets ``c * max_b n_b`` channels, so the total is
            ``K * c`` whenever the branches are equal (the reference: B = K, c = 15).
        num_blocks: residual blocks per branch.
        block: ``"adaptive"`` (pixel-wise spatial transformer) or ``"conv"`` (plain 3x3).
        dilation: dilation of the blocks' 3x3 grids.
        impl, checkpoint: adaptive-conv kernel options (:class:`GroupedAdaptiveBlock`).

    Output ``[N, 2K, h, w]``: ``pixel - keypoint`` in output pixels, ``[x0, y0, x1, y1, ...]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_keypoints: int,
        num_branches: int | None = None,
        keypoint_groups: Sequence[Sequence[int]] | None = None,
        channels_per_keypoint: int = 15,
        num_blocks: int = 2,
        block: str = "adaptive",
        dilation: int = 1,
        impl: str = "grid_sample",
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if keypoint_groups is None:
            keypoint_groups = split_keypoints(num_keypoints, num_keypoints if num_branches is None else num_branches)
        groups = [list(map(int, g)) for g in keypoint_groups]
        flat = sorted(i for g in groups for i in g)
        if flat != list(range(num_keypoints)) or any(not g for g in groups):
            raise ValueError(f"keypoint_groups {groups} must partition range({num_keypoints}) into non-empty groups")
        if block not in ("adaptive", "conv"):
            raise ValueError(f"offset head block must be 'adaptive' or 'conv', got '{block}'")
        self.keypoint_groups = groups
        num_branches = len(groups)
        per_branch = max(len(g) for g in groups)
        branch_channels = channels_per_keypoint * per_branch
        self.num_keypoints = num_keypoints
        self.num_branches = num_branches
        self.branch_channels = branch_channels
        self.transition = conv_bn_relu(in_channels, num_branches * branch_channels)
        block_cls = GroupedAdaptiveBlock if block == "adaptive" else GroupedConvBlock
        self.blocks = nn.Sequential(
            *[
                block_cls(num_branches, branch_channels, dilation=dilation, impl=impl, checkpoint=checkpoint)
                for _ in range(num_blocks)
            ]
        )
        self.final = nn.Conv2d(num_branches * branch_channels, num_branches * 2 * per_branch, 1, groups=num_branches)
        # Channel of the final conv holding each output channel (keypoint order, x/y interleaved).
        order = torch.empty(2 * num_keypoints, dtype=torch.long)
        for b, group in enumerate(groups):
            for i, k in enumerate(group):
                order[2 * k] = b * 2 * per_branch + 2 * i
                order[2 * k + 1] = b * 2 * per_branch + 2 * i + 1
        identity = torch.equal(order, torch.arange(order.numel()))
        self.register_buffer("channel_order", None if identity else order, persistent=False)
        for module in (self.final,):
            nn.init.normal_(module.weight, std=0.001)
            nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.final(self.blocks(self.transition(features)))
        if self.channel_order is not None:
            out = out.index_select(1, self.channel_order)
        return out
