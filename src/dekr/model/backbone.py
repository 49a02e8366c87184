"""timm HRNet trunk returning one stride-4 feature map.

``timm.create_model(name, features_only=True, feature_location='', out_indices=(1, 2, 3, 4))``
yields HRNet's four raw branches (strides 4, 8, 16, 32) with the same stem/stage layout and
parameter names as the reference DEKR backbone. The three coarse maps are upsampled bilinearly
(``align_corners=False``) to stride 4 and concatenated: ``sum(feature_info.channels())`` channels
(240 for W18-small, 270 for W18, 480 for W32, 720 for W48).
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.models.hrnet import HighResolutionNetFeatures
from torch import nn

HRNET_VARIANTS = (
    "hrnet_w18_small",
    "hrnet_w18_small_v2",
    "hrnet_w18",
    "hrnet_w30",
    "hrnet_w32",
    "hrnet_w40",
    "hrnet_w44",
    "hrnet_w48",
    "hrnet_w64",
)


def _stage(branches: int, blocks: int, width: int, block: str = "BASIC") -> dict:
    return {
        "num_modules": 1,
        "num_branches": branches,
        "block_type": block,
        "num_blocks": (blocks,) * branches,
        "num_channels": tuple(width * 2**i for i in range(branches)),
        "fuse_method": "SUM",
    }


#: Project-defined HRNet layouts in timm's format, built with timm's own classes (no ImageNet weights).
#: ``hrnet_tiny`` (W8, one block per branch) is the quickstart's CPU-sized trunk.
CUSTOM_VARIANTS: dict[str, dict] = {
    "hrnet_tiny": {
        "stem_width": 32,
        "stage1": {**_stage(1, 1, 16, "BOTTLENECK")},
        "stage2": _stage(2, 1, 8),
        "stage3": _stage(3, 1, 8),
        "stage4": _stage(4, 1, 8),
    },
}


class HRNetBackbone(nn.Module):
    """HRNet from timm, branches fused to stride 4.

    Args:
        name: timm model name (``hrnet_w18_small``, ``hrnet_w18``, ``hrnet_w32``, ``hrnet_w48``, ...).
        pretrained: load timm's ImageNet weights (needs network access or a warm timm cache).

    ``forward(images [N, 3, H, W]) -> [N, out_channels, H/4, W/4]``.
    """

    def __init__(self, name: str = "hrnet_w32", pretrained: bool = False) -> None:
        super().__init__()
        if name not in HRNET_VARIANTS and name not in CUSTOM_VARIANTS:
            raise ValueError(
                f"unknown HRNet backbone '{name}'; choose one of {HRNET_VARIANTS + tuple(CUSTOM_VARIANTS)}"
            )
        if name in CUSTOM_VARIANTS:
            if pretrained:
                raise ValueError(
                    f"'{name}' is a project-defined layout without ImageNet weights; set model.pretrained=false"
                )
            self.body = HighResolutionNetFeatures(CUSTOM_VARIANTS[name], feature_location="", out_indices=(1, 2, 3, 4))
            self.channels = list(self.body.feature_info.channels())
            self.out_channels = sum(self.channels)
            self.stride = int(self.body.feature_info.reduction()[0])
            return
        try:
            self.body = timm.create_model(
                name,
                pretrained=pretrained,
                features_only=True,
                feature_location="",
                out_indices=(1, 2, 3, 4),
            )
        except Exception as err:  # timm raises various network/hub errors
            if not pretrained:
                raise
            raise RuntimeError(
                f"could not load ImageNet weights for '{name}' through timm ({type(err).__name__}: {err}). "
                "Pretrained weights need network access to the Hugging Face hub or a warm timm cache; "
                "set model.pretrained=false to train from scratch, or fine-tune from a "
                "converted DEKR checkpoint (python -m dekr.convert)."
            ) from err
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.out_channels = sum(self.channels)
        #: input px per output px of the fused map (the highest-resolution branch's reduction)
        self.stride = int(self.body.feature_info.reduction()[0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.body(images)
        size = feats[0].shape[-2:]
        ups = [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]]
        return torch.cat([feats[0], *ups], dim=1)
