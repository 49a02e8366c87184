"""DEKR network: timm HRNet backbone, heatmap head and disentangled adaptive regression head."""

from dekr.model.adaptive import GroupedAdaptiveBlock, GroupedConvBlock
from dekr.model.backbone import HRNetBackbone
from dekr.model.head import HeatmapHead, OffsetHead
from dekr.model.network import DEKR

__all__ = ["DEKR", "GroupedAdaptiveBlock", "GroupedConvBlock", "HRNetBackbone", "HeatmapHead", "OffsetHead"]
