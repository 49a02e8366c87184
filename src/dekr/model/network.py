"""The DEKR network: timm HRNet trunk + heatmap head + disentangled offset head."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dekr.model.backbone import HRNetBackbone
from dekr.model.head import HeatmapHead, OffsetHead
from dekr.plaindata import plain


class DEKR(nn.Module):
    """Bottom-up pose network with disentangled keypoint regression.

    Args:
        num_keypoints: K.
        backbone: timm HRNet name (``hrnet_w18_small``, ``hrnet_w18``, ``hrnet_w32``, ``hrnet_w48``).
        pretrained: load ImageNet weights for the backbone through timm.
        heatmap_channels, heatmap_blocks: heatmap head width and number of BasicBlocks.
        num_branches: regression branches B (``None`` = K, fully disentangled; 1 = shared).
        keypoint_groups: explicit keypoint partition for the branches (overrides ``num_branches``).
        channels_per_keypoint: regression channels per keypoint (15 in the paper).
        offset_blocks: residual blocks per regression branch (2 in the paper).
        block: ``"adaptive"`` or ``"conv"`` (ablation: plain 3x3 convolutions).
        dilation: dilation of the regression blocks.
        adaptive_impl: ``"grid_sample"`` or ``"deform"`` (same function, different kernels).
        checkpoint: recompute adaptive-conv samples in backward to save memory.

    ``forward(images)`` takes ImageNet-normalised RGB ``[N, 3, H, W]`` (H, W multiples of 32) and
    returns ``(heatmaps, offsets)``:

    * ``heatmaps [N, K+1, H/4, W/4]``: K keypoint maps then the person-centre map (raw, no sigmoid);
    * ``offsets [N, 2K, H/4, W/4]``: at output pixel ``p`` the displacement ``p - keypoint_k`` of
      the person centred at ``p``, in output pixels, channels ``[x0, y0, x1, y1, ...]``. Output
      pixel ``j`` corresponds to input pixel ``4j``.
    """

    def __init__(
        self,
        num_keypoints: int = 17,
        backbone: str = "hrnet_w32",
        pretrained: bool = False,
        heatmap_channels: int = 32,
        heatmap_blocks: int = 1,
        num_branches: int | None = None,
        keypoint_groups: Sequence[Sequence[int]] | None = None,
        channels_per_keypoint: int = 15,
        offset_blocks: int = 2,
        block: str = "adaptive",
        dilation: int = 1,
        adaptive_impl: str = "grid_sample",
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if num_keypoints < 1:
            raise ValueError(f"num_keypoints must be >= 1, got {num_keypoints}")
        #: constructor arguments as plain data, read from the signature (``pretrained`` left out: a
        #: network rebuilt from a checkpoint gets its weights from there); checkpoints store them
        self.arguments: dict[str, Any] = plain(
            {name: value for name, value in locals().items() if name in _PARAMETERS and name != "pretrained"}
        )
        self.num_keypoints = num_keypoints
        self.backbone = HRNetBackbone(backbone, pretrained=pretrained)
        #: input px per output px
        self.stride: int = self.backbone.stride
        c_in = self.backbone.out_channels
        self.heatmap_head = HeatmapHead(c_in, num_keypoints, heatmap_channels, heatmap_blocks)
        self.offset_head = OffsetHead(
            c_in,
            num_keypoints,
            num_branches=num_branches,
            keypoint_groups=keypoint_groups,
            channels_per_keypoint=channels_per_keypoint,
            num_blocks=offset_blocks,
            block=block,
            dilation=dilation,
            impl=adaptive_impl,
            checkpoint=checkpoint,
        )
        init_head_weights(self.heatmap_head)
        init_head_weights(self.offset_head)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        return self.heatmap_head(features), self.offset_head(features)

    def set_adaptive_impl(self, impl: str) -> None:
        """Switch every adaptive block to another kernel (weights are shared by both)."""
        from dekr.model.adaptive import IMPLS, GroupedAdaptiveBlock

        if impl not in IMPLS:
            raise ValueError(f"adaptive conv impl must be one of {IMPLS}, got '{impl}'")
        for module in self.modules():
            if isinstance(module, GroupedAdaptiveBlock):
                module.impl = impl
        self.arguments["adaptive_impl"] = impl


_PARAMETERS = tuple(p for p in inspect.signature(DEKR.__init__).parameters if p != "self")


def init_head_weights(module: nn.Module) -> None:
    """The reference's head initialisation: conv ~ N(0, 0.001), zero biases, BN (1, 0), and
    zero adaptive transforms (``A = 0, t = 0``: all nine taps start at the pixel itself)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        transform = getattr(m, "transform", None)
        if isinstance(transform, nn.Conv2d):
            nn.init.zeros_(transform.weight)
            nn.init.zeros_(transform.bias)
